"""Successive halving in `reduce`: the rungs, the refusals, and -- on a tiny grid -- the finalists'
weights bit-identical to a plain reduce's, fewer epochs, and a kill during the second rung that
the same command continues with the same survivors and no epoch trained twice."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from test_reduce import reduce_args
from test_sweep import _poll, err_line

from filter_templates.cli import main
from filter_templates.core.errors import UsageError
from filter_templates.sweep.halving import Halving, rung_epochs
from filter_templates.sweep.selection import rung_scores
from filter_templates.sweep.store import Store

HALVING = ["--epochs", "4", "--halving", "2", "--no-export", "--json"]  # rungs at 1, 2 and 4 epochs


def test_rungs_are_rounded_down_and_the_first_is_at_least_one_epoch():
    assert rung_epochs(8, 2, 3) == [2, 4, 8]
    assert rung_epochs(10, 3, 3) == [1, 3, 10]
    assert rung_epochs(160, 3, 4) == [5, 17, 53, 160]
    assert rung_epochs(7, 2, 1) == [7]
    with pytest.raises(UsageError, match="under one"):
        rung_epochs(8, 3, 3)
    assert Halving(2).record(8) == {"rate": 2, "rungs": 3, "epochs": [2, 4, 8]}


@pytest.mark.parametrize(
    "argv, match",
    [
        (["--halving", "1"], "--halving (the rate R: a rung keeps the best 1/R) must be"),
        (["--halving", "2", "--rungs", "0"], "--rungs must be"),
        (["--rungs", "2"], "--rungs needs --halving"),
        (["--halving", "2", "--epochs", "3"], "the first rung would be 3/2^2 = 0.75 epochs, under one"),
    ],
)
def test_bad_halving_is_one_line_exit_2_and_nothing_written(tmp_path, capsys, argv, match):
    assert main(reduce_args(tmp_path / "R", *argv)) == 2
    assert match in err_line(capsys)
    assert not (tmp_path / "R").exists()


def survivors(doc: dict) -> list[list[str]]:
    """Who went on from each rung (the last rung's: its finalists), as reduce --json says."""
    return [g["survivors"] for g in doc["halving"]["rungs"]]


def _finalist_weights(doc: dict) -> dict[str, dict]:
    return {
        c["template"]: torch.load(Path(c["run_dir"]) / "model.pt", weights_only=True)
        for c in doc["candidates"]
        if c["status"] == "done"
    }


def _metrics(out: Path) -> dict[str, list[str]]:
    return {
        d.name: (d / "metrics.jsonl").read_text().splitlines()
        for d in sorted((out / "runs").iterdir())
        if (d / "metrics.jsonl").is_file()
    }


def test_halving_keeps_the_plain_runs_weights_for_fewer_epochs_and_survives_a_kill(tmp_path, capsys):
    plain, halved = tmp_path / "P", tmp_path / "H"
    assert main(reduce_args(plain, "--epochs", "4", "--no-export", "--json")) == 0
    p = json.loads(capsys.readouterr().out)
    assert p["halving"] is None and all(c["status"] == "done" for c in p["candidates"])

    # killed during the second rung: three candidates stopped after rung 1, a survivor training on
    argv = reduce_args(halved, *HALVING)
    db = halved / "results.sqlite"
    log = tmp_path / "killed.log"
    proc = subprocess.Popen(
        [sys.executable, "-m", "filter_templates", *argv],
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
        cwd=tmp_path,
        start_new_session=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        # rung 1 over (its five pauses recorded), a survivor claimed for rung 2 and not paused again
        if _poll(db, "SELECT COUNT(*) FROM events WHERE event='paused'") in (5, 6) and _poll(
            db, "SELECT COUNT(*) FROM runs WHERE status='running'"
        ):
            break
        time.sleep(0.02)
    assert proc.poll() is None, "reduce ended before it could be killed:\n" + log.read_text()
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    before = _metrics(halved)
    assert sorted(len(rows) for rows in before.values())[:3] == [1, 1, 1]  # killed in rung 2, not before
    assert main(argv) == 0  # the same command again
    h = json.loads(capsys.readouterr().out)
    after = _metrics(halved)
    for name, rows in before.items():  # every epoch finished before the kill kept as it was (its timing too)
        assert after[name][: len(rows)] == rows
    # the decisions: rung by rung, the best half by validation accuracy at the rung
    rungs = h["halving"]["rungs"]
    assert h["halving"]["rate"] == 2 and [g["epochs"] for g in rungs] == [1, 2, 4]
    assert [len(g["candidates"]) for g in rungs] == [5, 2, 1] and rungs[0]["survivors"] == rungs[1]["candidates"]
    with Store(plain / "results.sqlite") as s:  # the same rule applied to the plain reduce's epochs
        rows = s.budget_rows()
    for g in rungs[:-1]:
        scores = {t: v for t, (v, _) in rung_scores(rows, g["epochs"], "val_acc").items()}
        assert g["scores"] == {t: scores[t] for t in g["candidates"]}
        assert set(g["survivors"]) == set(sorted(g["candidates"], key=lambda t: -scores[t])[: len(g["survivors"])])
    # the finalist is bit-identical to the same candidate of the plain reduce; the rest stopped
    finalists = _finalist_weights(h)
    assert list(finalists) == rungs[-1]["candidates"] == [h["winner"]["template"]]
    for t, w in finalists.items():
        plain_w = _finalist_weights(p)[t]
        assert w.keys() == plain_w.keys() and all(torch.equal(w[k], plain_w[k]) for k in w)
    stopped = {c["template"]: c for c in h["candidates"] if c["status"] == "stopped"}
    assert len(stopped) == 4 and {c["stopped_at"] for c in stopped.values()} == {1, 2}
    assert all(c["val_acc"] is not None and c["final_acc"] is None for c in stopped.values())
    # 5 x 1 + 2 x 1 + 1 x 2 epochs, no epoch trained twice: 9 of the plain 20
    assert (h["halving"]["epochs_trained"], h["halving"]["epochs_plain"]) == (9, 20)
    assert sum(len(rows) for rows in after.values()) == 9
    # another rate on a store with paused runs: one line, nothing changed
    assert main(reduce_args(halved, "--epochs", "4", "--halving", "3", "--rungs", "2")) == 2
    assert "paused by --halving 2 --rungs 3" in err_line(capsys)
    assert _metrics(halved) == after
