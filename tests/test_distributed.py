"""One run on several processes (gloo on CPU): shares of every batch, rank 0 writes, the process
count recorded and enforced on resume, the same weights under torchrun and ``--nproc``, and a
killed process's run resumed bit for bit."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_train import assert_same_weights, one_error_line, weights

from filter_templates.cli import main
from filter_templates.core import rundir
from filter_templates.core.errors import UsageError
from filter_templates.data.augment import _part
from filter_templates.method.arch import make_arch
from filter_templates.training import distributed
from filter_templates.training.config import TrainConfig
from filter_templates.training.loop import with_world

TINY = [
    "train",
    "--model",
    "vgg19",
    "--template",
    "uniform",
    "--width",
    "0.05",
    "--dataset",
    "digits",
    "--limit-train",
    "256",
    "--limit-test",
    "128",
    "--batch-size",
    "32",
    "--quiet",
]


def _env() -> dict:
    env = {k: v for k, v in os.environ.items() if k not in distributed.ENV_KEYS}
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[1])
    return env


def test_world_from_the_environment():
    assert distributed.from_env({}) == distributed.World()
    w = distributed.from_env({"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2"})
    assert (w.rank, w.size, w.local_rank, w.local_size, w.main) == (3, 4, 1, 2, False)
    for bad in ({"WORLD_SIZE": "0"}, {"WORLD_SIZE": "2", "RANK": "2"}, {"WORLD_SIZE": "x"}):
        with pytest.raises(UsageError):
            distributed.from_env(bad)


def test_parts_cover_everything_once():
    for n in (0, 1, 7, 64):
        for world in (1, 2, 3, 5):
            parts = [_part(n, r, world) for r in range(world)]
            assert parts[0][0] == 0 and parts[-1][1] == n
            assert all(a[1] == b[0] for a, b in zip(parts, parts[1:]))
            assert max(hi - lo for lo, hi in parts) - min(hi - lo for lo, hi in parts) <= 1


def test_a_config_for_another_process_count_is_refused():
    config = TrainConfig(arch=make_arch("vgg19", "uniform", 0.05, 10), dataset="digits", world_size=2)
    assert with_world(config, 2).world_size == 2
    with pytest.raises(UsageError, match="configured for 2 processes"):
        with_world(config, 1)


def test_two_processes_then_resume_with_one_is_refused(tmp_path, capsys):
    run = tmp_path / "run"
    assert main([*TINY, "--epochs", "1", "--nproc", "2", "--out", str(run)]) == 0
    config = json.loads((run / "config.json").read_text())
    assert config["world_size"] == 2 and config["sync_bn"] is False
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "done" and summary["metrics"][0]["test_acc"] > 0
    assert summary["resources"] is not None  # rank 0 measured and wrote it
    capsys.readouterr()
    before = {p.name: p.stat().st_mtime_ns for p in run.iterdir()}
    assert main([*TINY, "--epochs", "1", "--resume", "--nproc", "1", "--out", str(run)]) == 2
    assert "world_size (checkpoint 2, now 1)" in one_error_line(capsys)
    assert {p.name: p.stat().st_mtime_ns for p in run.iterdir()} == before


def test_sync_bn_on_cpu_is_one_line(tmp_path, capsys):
    assert (
        main([*TINY, "--epochs", "1", "--nproc", "2", "--sync-bn", "--device", "cpu", "--out", str(tmp_path / "r")])
        == 2
    )
    assert "SyncBatchNorm runs on GPUs only" in one_error_line(capsys)
    assert not (tmp_path / "r").exists()


@pytest.mark.slow
def test_two_processes_learn_what_one_does(tmp_path):
    """The global batch is split, not multiplied: two processes train to the accuracy of one."""
    args = ["train", "--model", "vgg19", "--template", "uniform", "--width", "0.25", "--dataset", "digits"]
    args += ["--epochs", "3", "--quiet"]
    assert main([*args, "--out", str(tmp_path / "one")]) == 0
    assert main([*args, "--nproc", "2", "--out", str(tmp_path / "two")]) == 0
    one, two = (json.loads((tmp_path / r / "summary.json").read_text())["final_acc"] for r in ("one", "two"))
    assert one > 0.5 and abs(one - two) <= 0.02


@pytest.mark.slow
def test_torchrun_gives_the_weights_of_nproc(tmp_path):
    assert main([*TINY, "--epochs", "2", "--nproc", "2", "--out", str(tmp_path / "nproc")]) == 0
    subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc-per-node",
            "2",
            "-m",
            "filter_templates",
            *TINY,
            "--epochs",
            "2",
            "--out",
            str(tmp_path / "torchrun"),
        ],
        env=_env(),
        check=True,
        capture_output=True,
    )
    assert_same_weights(weights(tmp_path / "nproc" / "model.pt"), weights(tmp_path / "torchrun" / "model.pt"))


def _children(pid: int) -> list[int]:
    try:
        return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def _start_and_kill(run: Path, epochs: int, victim: str) -> None:
    """Start ``--nproc 2`` and SIGKILL ``victim`` (a "rank" or the "launcher") after the first
    checkpoint; return once every process of the run is gone."""
    args = [*TINY, "--limit-train", "1024", "--epochs", str(epochs), "--nproc", "2", "--out", str(run)]
    launcher = subprocess.Popen(
        [sys.executable, "-m", "filter_templates", *args],
        env=_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.time() + 120
        while not (run / rundir.CHECKPOINT).exists() and time.time() < deadline and launcher.poll() is None:
            time.sleep(0.01)
        workers = _children(launcher.pid)
        assert len(workers) == 2, "the workers were not found"
        os.kill(workers[-1] if victim == "rank" else launcher.pid, signal.SIGKILL)
        launcher.wait(timeout=60)
        for pid in workers:  # none outlives the kill: no process writes on behind the resumed run
            for _ in range(600):
                if not Path(f"/proc/{pid}").exists() or "zombie" in Path(f"/proc/{pid}/status").read_text():
                    break
                time.sleep(0.05)
            else:
                raise AssertionError(f"worker {pid} outlived the kill")
    finally:
        if launcher.poll() is None:
            launcher.kill()


@pytest.mark.slow
@pytest.mark.parametrize("victim", ["rank", "launcher"])
def test_resume_after_a_kill_is_bit_identical(tmp_path, victim):
    epochs = 4
    killed, ref = tmp_path / "killed", tmp_path / "ref"
    _start_and_kill(killed, epochs, victim)
    done = rundir.load_checkpoint(killed / rundir.CHECKPOINT)["epoch"]
    assert 1 <= done < epochs, "the run finished before it could be killed"
    args = [*TINY, "--limit-train", "1024", "--epochs", str(epochs), "--nproc", "2"]
    assert main([*args, "--resume", "--out", str(killed)]) == 0
    assert main([*args, "--out", str(ref)]) == 0
    assert_same_weights(weights(ref / "model.pt"), weights(killed / "model.pt"))
    rows = [json.loads(line) for line in (killed / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == list(range(1, epochs + 1))
