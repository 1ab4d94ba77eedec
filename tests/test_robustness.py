"""Every command, every path argument, every way a path can be wrong: one error line, exit 2.

For each path a command takes, a file where a folder is expected, a folder where a file is
expected, an unwritable location (under ``/proc``, which even root cannot write), a missing parent
and an existing output. Each must exit with status 2 and exactly one line on stderr, never a
traceback, and leave every file already there byte for byte as it was.

Folders a command *writes* (``train --out``, ``fit --save``, ``report --out``, ``sweep --db`` and
``--runs-dir``, ``reduce --out``) are created with their parents, like ``mkdir -p``: a missing parent is not an
error there, so that case applies to the paths a command reads and to ``export --out``.

The commands run in-process (``cli.main``): a case that wrongly went ahead would train at most
one epoch of a tiny model on a few synthetic images.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from tiny import TINY_REDUCE, TINY_SWEEP, TINY_TRAIN

from filter_templates.cli import main
from filter_templates.core import rundir
from filter_templates.method.arch import make_arch
from filter_templates.sweep.store import Store
from filter_templates.training.config import TrainConfig


@pytest.fixture
def place(tmp_path: Path) -> Path:
    """A folder with what a user already has: a file, a folder, a finished run, a results store."""
    (tmp_path / "file.txt").write_text("precious\n")
    (tmp_path / "folder").mkdir()
    (tmp_path / "folder" / "inside.txt").write_text("also precious\n")
    arch = make_arch("vgg19", "base", 0.05, 10)
    cfg = TrainConfig(arch=arch, dataset="synthetic", epochs=1).to_dict()
    run = tmp_path / "run"
    run.mkdir()
    rundir.atomic_write_json(run / rundir.CONFIG, cfg)
    torch.manual_seed(0)
    rundir.atomic_save(arch.build().state_dict(), run / rundir.MODEL)
    rundir.atomic_write_json(run / rundir.SUMMARY, {"status": "done", "config": cfg})
    with Store(tmp_path / "r.sqlite") as store:
        store.add_points([(cfg, str(run))])
        store.finish(
            store.rows()[0]["key"],
            None,
            {"status": "done", "final_acc": 0.5, "best_acc": 0.5, "resources": {"params": 1, "flops": 1}},
        )
    (tmp_path / "not-reduce").mkdir()  # a folder whose results store is someone else's file
    (tmp_path / "not-reduce" / "results.sqlite").write_text("precious\n")
    (tmp_path / "store-is-folder" / "results.sqlite").mkdir(parents=True)
    return tmp_path


def snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


# (command line with {t} for the test folder, a word the error line must contain)
CASES = {
    # a file where a folder is expected
    "fit --save FILE": (["fit", "--model", "vgg19", "--budget", "params=1M", "--save", "{t}/file.txt"], "file.txt"),
    "train --out FILE": (["train", *TINY_TRAIN, "--out", "{t}/file.txt"], "file.txt"),
    "train --data-dir FILE": (
        ["train", "--model", "vgg19", "--dataset", "cifar10", "--data-dir", "{t}/file.txt", "--out", "{t}/new"],
        "file.txt",
    ),
    "sweep --runs-dir FILE": (
        ["sweep", *TINY_SWEEP, "--db", "{t}/new.sqlite", "--runs-dir", "{t}/file.txt"],
        "file.txt",
    ),
    "sweep --data-dir FILE": (
        [
            "sweep",
            "--models",
            "vgg19",
            "--widths",
            "0.05",
            "--datasets",
            "cifar10",
            "--data-dir",
            "{t}/file.txt",
            "--db",
            "{t}/new.sqlite",
            "--runs-dir",
            "{t}/runs",
        ],
        "file.txt",
    ),
    "report --out FILE": (["report", "--db", "{t}/r.sqlite", "--out", "{t}/file.txt"], "file.txt"),
    "export --run FILE": (["export", "--run", "{t}/file.txt", "--format", "torchscript"], "file.txt"),
    "reduce --out FILE": (["reduce", *TINY_REDUCE, "--dataset", "synthetic", "--out", "{t}/file.txt"], "file.txt"),
    "reduce --data-dir FILE": (
        ["reduce", *TINY_REDUCE, "--dataset", "cifar10", "--data-dir", "{t}/file.txt", "--out", "{t}/new"],
        "file.txt",
    ),
    # a folder where a file is expected
    "train --config DIR": (["train", "--config", "{t}/folder", "--out", "{t}/new"], "folder"),
    "sweep --config DIR": (["sweep", "--config", "{t}/folder", "--db", "{t}/new.sqlite"], "folder"),
    "sweep --db DIR": (["sweep", *TINY_SWEEP, "--db", "{t}/folder", "--runs-dir", "{t}/runs"], "folder"),
    "report --db DIR": (["report", "--db", "{t}/folder", "--out", "{t}/report"], "folder"),
    "export --out DIR": (["export", "--run", "{t}/run", "--format", "torchscript", "--out", "{t}/folder"], "folder"),
    # an unwritable location
    "fit --save /proc": (["fit", "--model", "vgg19", "--budget", "params=1M", "--save", "/proc/ft-x"], "/proc"),
    "train --out /proc": (["train", *TINY_TRAIN, "--out", "/proc/ft-x"], "/proc"),
    "sweep --db /proc": (["sweep", *TINY_SWEEP, "--db", "/proc/ft-x.sqlite", "--runs-dir", "{t}/runs"], "/proc"),
    "sweep --runs-dir /proc": (["sweep", *TINY_SWEEP, "--db", "{t}/new.sqlite", "--runs-dir", "/proc/ft-x"], "/proc"),
    "report --out /proc": (["report", "--db", "{t}/r.sqlite", "--out", "/proc/ft-x"], "/proc"),
    "export --out /proc": (
        ["export", "--run", "{t}/run", "--format", "torchscript", "--out", "/proc/ft-m.pt"],
        "/proc",
    ),
    "reduce --out /proc": (["reduce", *TINY_REDUCE, "--dataset", "synthetic", "--out", "/proc/ft-x"], "/proc"),
    # a missing parent (of what a command reads, and of export's output file)
    "train --config MISSING/": (["train", "--config", "{t}/missing/c.json", "--out", "{t}/new"], "missing"),
    "train --data-dir MISSING/": (
        ["train", "--model", "vgg19", "--dataset", "cifar10", "--data-dir", "{t}/missing/data", "--out", "{t}/new"],
        "missing",
    ),
    "sweep --config MISSING/": (["sweep", "--config", "{t}/missing/s.toml", "--db", "{t}/new.sqlite"], "missing"),
    "report --db MISSING/": (["report", "--db", "{t}/missing/r.sqlite", "--out", "{t}/report"], "missing"),
    "export --run MISSING/": (["export", "--run", "{t}/missing/run", "--format", "torchscript"], "missing"),
    "export --out MISSING/": (
        ["export", "--run", "{t}/run", "--format", "torchscript", "--out", "{t}/missing/m.pt"],
        "missing",
    ),
    "reduce --data-dir MISSING/": (
        ["reduce", *TINY_REDUCE, "--dataset", "cifar10", "--data-dir", "{t}/missing/data", "--out", "{t}/new"],
        "missing",
    ),
    # an existing output that is not the command's to replace
    "train --out FINISHED-RUN": (["train", *TINY_TRAIN, "--out", "{t}/run"], "run"),
    "export --out RUN-FILE": (
        ["export", "--run", "{t}/run", "--format", "torchscript", "--out", "{t}/run/config.json"],
        "config.json",
    ),
    "export --out OTHER-FILE": (
        ["export", "--run", "{t}/run", "--format", "torchscript", "--out", "{t}/file.txt"],
        "file.txt",
    ),
    "sweep --db NOT-A-STORE": (["sweep", *TINY_SWEEP, "--db", "{t}/file.txt", "--runs-dir", "{t}/runs"], "file.txt"),
    "report --db NOT-A-STORE": (["report", "--db", "{t}/file.txt", "--out", "{t}/report"], "file.txt"),
    "reduce --out NOT-A-STORE": (
        ["reduce", *TINY_REDUCE, "--dataset", "synthetic", "--out", "{t}/not-reduce"],
        "results.sqlite",
    ),
    "reduce --out STORE-IS-FOLDER": (
        ["reduce", *TINY_REDUCE, "--dataset", "synthetic", "--out", "{t}/store-is-folder"],
        "results.sqlite",
    ),
    # reduce refuses its --out before it reads the data or fits anything (here the data would fail later)
    "reduce --out /proc, before the data": (
        ["reduce", *TINY_REDUCE, "--dataset", "cifar10", "--data-dir", "{t}/missing/data", "--out", "/proc/ft-x"],
        "/proc",
    ),
    "reduce --out STORE-IS-FOLDER, before the data": (
        [
            "reduce",
            *TINY_REDUCE,
            "--dataset",
            "cifar10",
            "--data-dir",
            "{t}/missing/data",
            "--out",
            "{t}/store-is-folder",
        ],
        "results.sqlite",
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_a_bad_path_is_one_error_line_and_nothing_is_lost(case, place, capsys, monkeypatch):
    argv, word = CASES[case]
    monkeypatch.chdir(place)  # anything a command would write by default lands where it is checked
    before = snapshot(place)
    code = main([a.replace("{t}", str(place)) for a in argv])
    out, err = capsys.readouterr()
    lines = err.strip().splitlines()
    assert code == 2, (case, out, err)
    assert len(lines) == 1 and lines[0].startswith("filter-templates: error: "), err
    assert "Traceback" not in err and word in lines[0], lines[0]
    assert snapshot(place) == before  # nothing already written was lost or changed, nothing added
    assert not Path("/proc/ft-x").exists()
