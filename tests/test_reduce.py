"""`reduce`: fit every template to one budget, train, rank, report, export -- and resume after a kill."""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path

import pytest
from test_sweep import _poll, _spawn, err_line

from filter_templates.cli import main
from filter_templates.reduction import Candidate, rank
from filter_templates.sweep.selection import BudgetCell
from filter_templates.sweep.store import Store

# Tiny and fast: a few optimiser steps per candidate on a slice of the embedded digits.
TINY = [
    "--dataset",
    "digits",
    "--limit-train",
    "128",
    "--limit-test",
    "64",
    "--batch-size",
    "32",
    "--device",
    "cpu",
    "--threads",
    "1",
]
KEYS = {
    "template",
    "width",
    "filters",
    "params",
    "flops",
    "train_memory_bytes",
    "val_acc",
    "final_acc",
    "best_acc",
    "seeds_done",
    "status",
}


def reduce_args(out: Path, *extra: str) -> list[str]:
    return ["reduce", "--model", "mobilenet", "--budget", "params=20K", "--out", str(out), *TINY, *extra]


def test_reduce_end_to_end(tmp_path, capsys):
    out = tmp_path / "R"
    assert main(reduce_args(out, "--epochs", "1", "--json")) == 0
    doc = json.loads(capsys.readouterr().out)  # exactly one JSON document on stdout
    assert (doc["model"], doc["budget"], doc["dataset"]) == ("mobilenet", {"key": "params", "value": 20000}, "digits")
    # selected on a validation split: 10% of the 128 training images, the same for every candidate
    assert (doc["selection"], doc["val_split"], doc["val_images"]) == ("val_acc", 0.1, 13)
    assert doc["recipe"]["name"] == "fast" and doc["recipe"]["batch_size"] == 32 and doc["test_views"] == 1
    cands = doc["candidates"]
    assert sorted(c["template"] for c in cands) == sorted(
        ["base", "reverse", "uniform", "quadratic", "negative-quadratic"]
    )
    for c in cands:
        assert KEYS <= set(c) and c["status"] == "done" and c["seeds_done"] == 1
        assert 0 <= c["val_acc"] <= 1 and 0 <= c["final_acc"] <= 1
        assert 0 < c["params"] <= 20_000 and c["flops"] > 0 and c["train_memory_bytes"] > 0
        assert len(c["filters"]) == 13 and c["width"] > 0
    # ranked: validation accuracy down, ties to fewer parameters; the winner has the best one
    assert [(-c["val_acc"], c["params"]) for c in cands] == sorted((-c["val_acc"], c["params"]) for c in cands)
    # the winner: the cheapest of those not separable from the most accurate (13 images separate little)
    win = doc["winner"]
    assert doc["most_accurate"] == cands[0]["template"] and doc["most_accurate"] in doc["tied"]
    tied = [c for c in cands if c["tied"]]
    assert [c["template"] for c in tied] == doc["tied"] and doc["separable"] == (len(tied) == 1)
    assert win["template"] == min(tied, key=lambda c: c["params"])["template"]
    for c in cands:  # every candidate against the winner, with its interval, on the same 13 images
        if c["template"] == win["template"]:
            assert c["separation"] is None
        else:
            sep = c["separation"]
            assert sep["images"] == 13 and sep["interval"][0] <= sep["difference"] <= sep["interval"][1]
            assert sep["difference"] == pytest.approx(c["val_acc"] - win["val_acc"]) and 0 < sep["p"] <= 1
    with Store(out / "results.sqlite") as s:  # the store holds both accuracies of every run
        assert all(r["val_acc"] is not None and r["final_acc"] is not None for r in s.rows())
    assert Path(win["exported"]).is_file() and Path(win["exported"]).parent == Path(win["run_dir"])
    assert Path(win["run_dir"]).parent == (out / "runs").resolve()
    # the report: budgets in rows, templates in columns, and the accuracy-versus-budget figure
    table = (out / "report" / "tables" / "accuracy_by_budget_digits.md").read_text()
    assert (
        "| mobilenet | params ≤ 20K | validation (ranks) |" in table and "| mobilenet | params ≤ 20K | test |" in table
    )
    # the winner is the one validation ranked first, emphasised on both rows: validation and test beside it
    rows = [[c.strip() for c in ln.strip("|").split("|")] for ln in table.splitlines() if ln.startswith("| mob")]
    head = [c.strip() for c in table.splitlines()[2].strip("|").split("|")]
    col = head.index(win["template"])
    assert [r[-1] for r in rows] == [win["template"]] * 2 and table.count("**") == 4
    assert [r[col] for r in rows] == [
        f"**{100 * win['val_acc']:.2f} ± " + rows[0][col].split(" ± ")[1],
        f"**{100 * win['final_acc']:.2f} ± " + rows[1][col].split(" ± ")[1],
    ]
    # --json and the report agree on every setting: digits has no mirror images, so tta is off in both
    assert doc["recipe"]["tta"] is False and "tta=off" in table
    assert (out / "report" / "figures" / "accuracy_vs_params_budget_digits.png").stat().st_size > 10_000
    # again: everything is done, nothing trains, the same answer
    assert main(reduce_args(out, "--epochs", "1")) == 0
    text = capsys.readouterr()
    assert "0 done, 0 failed, 5 skipped (5 already done)" in text.err
    assert f"winner: {win['template']}" in text.out and "exported:" in text.out
    assert (
        "ranked by final validation accuracy on 13 images" in text.out
        and "best test accuracy over epochs (optimistic)" in text.out
    )
    with Store(out / "results.sqlite") as s:
        assert [e["event"] for r in s.rows() for e in s.events(r["key"])] == ["add", "claim", "done"] * 5


def test_rank_ties_go_to_fewer_parameters_and_unfinished_rank_last():
    def c(t, acc, params, status="done"):
        return Candidate(
            t, 0.1, [1], params, 1, 1, final_acc=0.9 - (acc or 0), best_acc=1.0, status=status, val_acc=acc
        )

    cands = [
        c("base", 0.5, 900),
        c("reverse", None, None, "unreachable"),
        c("uniform", 0.7, 1000),
        c("quadratic", 0.7, 800),
        c("negative-quadratic", None, 700, "failed"),
    ]
    order = ["base", "reverse", "uniform", "quadratic", "negative-quadratic"]
    assert [x.template for x in rank(cands, order)] == ["quadratic", "uniform", "base", "reverse", "negative-quadratic"]
    # on the test accuracy (no validation split) the order of the finished ones turns round
    assert [x.template for x in rank(cands, order, "final_acc")][:3] == ["base", "quadratic", "uniform"]
    with pytest.raises(ValueError):
        rank(cands, order, "best_acc")  # never a basis for selection


def test_the_exported_seed_is_the_one_with_the_best_val_acc():
    def run(seed, val, test):
        return {
            "status": "done",
            "seed": seed,
            "val_acc": val,
            "final_acc": test,
            "best_acc": 0.99,
            "run_dir": f"s{seed}",
            "params": 100,
            "flops": 10,
            "train_memory_bytes": 1,
        }

    runs = [run(0, 0.50, 0.90), run(1, 0.70, 0.60), run(2, 0.60, 0.80)]
    cell = BudgetCell(
        "digits",
        "mobilenet",
        "params",
        100.0,
        "uniform",
        points=[{"run": r, "status": "fitted", "width": 0.1, "filters": [1], "fit": None} for r in runs],
    )
    c = Candidate.from_cell(cell)
    assert (c.run_dir, c.seeds_done) == ("s1", 3)
    assert c.val_acc == pytest.approx(0.6) and c.final_acc == pytest.approx(0.7667, abs=1e-4)
    assert Candidate.from_cell(cell, "final_acc").run_dir == "s0"


def test_val_split_0_ranks_on_test_accuracy_and_says_so(tmp_path, capsys):
    assert (
        main(
            reduce_args(
                tmp_path / "R",
                "--templates",
                "uniform",
                "--epochs",
                "1",
                "--limit-train",
                "32",
                "--no-export",
                "--val-split",
                "0",
                "--json",
            )
        )
        == 0
    )
    out = capsys.readouterr()
    doc = json.loads(out.out)
    assert doc["selection"] == "final_acc" and doc["val_images"] == 0
    assert all(c["val_acc"] is None and c["final_acc"] is not None for c in doc["candidates"])
    assert "val_split 0: no validation split, so the candidates are ranked on their final test accuracy" in out.err


def test_base_is_always_a_candidate(tmp_path, capsys):
    assert (
        main(
            reduce_args(
                tmp_path / "R",
                "--templates",
                "uniform",
                "--epochs",
                "1",
                "--limit-train",
                "40",
                "--no-export",
                "--json",
            )
        )
        == 0
    )
    doc = json.loads(capsys.readouterr().out)
    assert sorted(c["template"] for c in doc["candidates"]) == ["base", "uniform"]
    assert doc["winner"]["exported"] is None


def test_killed_reduce_resumes_without_repeating_finished_runs(tmp_path, capsys):
    out, epochs = tmp_path / "R", 3
    argv = reduce_args(out, "--templates", "uniform", "reverse", "--epochs", str(epochs), "--no-export")
    db = out / "results.sqlite"
    proc = _spawn(argv, tmp_path / "killed.log")
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:  # one run done, the next between two epochs
        if _poll(db, "SELECT COUNT(*) FROM runs WHERE status='done'") >= 1 and _poll(
            db, f"SELECT COUNT(*) FROM runs WHERE status='running' AND epochs_done BETWEEN 1 AND {epochs - 1}"
        ):
            break
        time.sleep(0.02)
    assert proc.poll() is None, "reduce ended before it could be killed:\n" + (tmp_path / "killed.log").read_text()
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    with Store(db) as s:
        done_before = {r["key"]: r["finished_at"] for r in s.rows() if r["status"] == "done"}
        killed = [r for r in s.rows() if r["status"] == "running"]
    assert len(killed) == 1 and done_before
    assert main(argv + ["--json"]) == 0  # the same command again
    doc = json.loads(capsys.readouterr().out)
    assert [c["status"] for c in doc["candidates"]] == ["done"] * 3
    with Store(db) as s:
        rows = {r["key"]: r for r in s.rows()}
        assert len(rows) == 3 and all(r["status"] == "done" for r in rows.values())
        for key, finished in done_before.items():  # kept, not trained again
            assert rows[key]["finished_at"] == finished and rows[key]["attempts"] == 1
        k = killed[0]["key"]
        assert rows[k]["attempts"] == 2 and [e["event"] for e in s.events(k)] == ["add", "claim", "reclaim", "done"]
        lines = (Path(rows[k]["run_dir"]) / "metrics.jsonl").read_text().splitlines()
        assert [json.loads(x)["epoch"] for x in lines] == [1, 2, 3]  # resumed: each epoch once


@pytest.mark.parametrize(
    "argv, match",
    [
        (["--budget", "params=1K=2"], "malformed budget"),
        (["--budget", "weight=1M"], "unknown budget key 'weight'"),
        (["--budget", "params=lots"], "malformed budget value"),
        (["--budget", "params=100"], "below the smallest reachable mobilenet model"),
        (["--templates", "cubic"], "unknown template 'cubic'"),
        (["--dataset", "imagenet"], "unknown dataset 'imagenet'"),
        (["--model", "vgg20"], "unknown model 'vgg20'"),
        (["--address", "auto"], "only apply to --engine ray"),
        (["--engine", "ray", "--jobs", "2"], "apply to --engine local"),
        (["--epochs", "0"], "not a positive integer"),
        (["--val-split", "-5"], "'-5' is not a count of images"),
        (["--val-split", "1.0"], "'1.0' is not a count of images"),
        (["--val-split", "128"], "holds out 128 of the 128 training images, leaving none to train on"),
        (["--val-split", "100"], "leaving 28, fewer than one batch of 32"),
    ],
)
def test_bad_input_is_one_line_exit_2(tmp_path, capsys, argv, match):
    assert main(reduce_args(tmp_path / "R", *argv)) == 2
    assert match in err_line(capsys)
    assert not (tmp_path / "R" / "runs").exists()  # refused before anything trained
