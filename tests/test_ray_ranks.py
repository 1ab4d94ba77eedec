"""A Ray trial's run on several processes (``sweep.ray_ranks``), without Ray: the launcher and its
ranks train the run as ``train --nproc`` does, every epoch is reported as rank 0 records it, a
rank's error comes back as one line, and a trial killed with SIGKILL takes its processes with it.
The trial shapes the Ray flags may ask for are checked here too."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from test_train import assert_same_weights, one_error_line, weights

from filter_templates.cli import main
from filter_templates.core import rundir
from filter_templates.core.errors import UsageError
from filter_templates.method.arch import make_arch
from filter_templates.sweep.options import EngineOptions
from filter_templates.sweep.ray_ranks import train_on_processes
from filter_templates.training import distributed
from filter_templates.training.config import TrainConfig

TINY = dict(dataset="digits", limit_train=256, limit_test=128, batch_size=32, epochs=2, device="cpu")


def _config(**kw) -> TrainConfig:
    return TrainConfig(arch=make_arch("vgg19", "uniform", 0.05, 10), **{**TINY, **kw})


@pytest.fixture
def clean_env(monkeypatch):
    """No torchrun variables from an outer launcher: the trial's processes set their own."""
    for k in distributed.ENV_KEYS:
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("PYTHONPATH", str(Path(__file__).resolve().parents[1]))


def test_trial_shapes():
    assert EngineOptions(engine="ray").procs == 1 and EngineOptions(engine="ray").cpus == 1.0
    assert EngineOptions(engine="ray", gpus_per_trial=4).procs == 4  # one process per whole GPU
    assert EngineOptions(engine="ray", gpus_per_trial=0.5).procs == 1
    two = EngineOptions(engine="ray", procs_per_trial=2)
    assert (two.procs, two.cpus) == (2, 2.0)  # one CPU each unless told
    assert EngineOptions(engine="ray", procs_per_trial=2, cpus_per_trial=6).validate_ray().cpus == 6.0
    bad = [
        (dict(gpus_per_trial=1.5), "whole number"),
        (dict(procs_per_trial=2, gpus_per_trial=1), "its own GPU"),
        (dict(procs_per_trial=3, cpus_per_trial=2), "at least --cpus-per-trial 3"),
        (dict(procs_per_trial=0), "--procs-per-trial"),
    ]
    for kw, words in bad:
        with pytest.raises(UsageError, match=words):
            EngineOptions(engine="ray", **kw).validate_ray()


@pytest.mark.parametrize(
    "flags, words",
    [
        (["--engine", "ray", "--procs-per-trial", "2", "--gpus-per-trial", "1"], "its own GPU"),
        (["--engine", "ray", "--procs-per-trial", "2", "--cpus-per-trial", "1"], "one CPU for each"),
        (["--engine", "ray", "--gpus-per-trial", "2.5"], "whole number"),
        (["--procs-per-trial", "2"], "only apply to --engine ray"),
    ],
)
def test_bad_trial_shapes_are_one_line_before_anything_runs(tmp_path, capsys, flags, words):
    db = tmp_path / "r.sqlite"
    argv = ["sweep", "--models", "vgg19", "--templates", "base", "--widths", "0.05", "--datasets", "synthetic"]
    assert main([*argv, "--epochs", "1", "--db", str(db), "--runs-dir", str(tmp_path / "runs"), *flags]) == 2
    assert words in one_error_line(capsys)
    assert not db.exists() and not (tmp_path / "runs").exists()


@pytest.mark.slow  # 8-20 s of Ray or process start-up: the slow suite (-m slow) runs it
def test_two_processes_report_every_epoch_and_match_nproc(tmp_path, clean_env):
    """The trial's two processes leave the weights ``train --nproc 2`` leaves (one thread each),
    and each epoch reaches ``report`` once, in order, after its checkpoint."""
    config = _config()
    run = tmp_path / "trial"
    seen: list[tuple[int, bool]] = []

    def report(row):
        seen.append((row["epoch"], (run / rundir.CHECKPOINT).exists()))

    train_on_processes(config, run, 2, 1, report, resume=False, threads_source="test")
    assert seen == [(1, True), (2, True)]
    summary = rundir.read_json(run / rundir.SUMMARY)
    assert summary["status"] == "done"
    assert rundir.read_json(run / rundir.CONFIG)["world_size"] == 2
    nproc = tmp_path / "nproc"
    argv = ["train", "--config", str(run / rundir.CONFIG), "--nproc", "2", "--threads", "1", "--quiet"]
    assert main([*argv, "--out", str(nproc)]) == 0
    assert_same_weights(weights(run / rundir.MODEL), weights(nproc / rundir.MODEL))


@pytest.mark.slow  # 8-20 s of Ray or process start-up: the slow suite (-m slow) runs it
def test_a_rank_that_fails_is_one_line_for_tune(tmp_path, clean_env):
    """--sync-bn on CPU is refused by every rank: the trial raises with the rank's own line (so
    Tune records it, and retries from the checkpoint when a crash was a node's fault)."""
    with pytest.raises(RuntimeError, match=r"processes failed \(exit 2\): --sync-bn needs CUDA"):
        train_on_processes(
            _config(sync_bn=True), tmp_path / "r", 2, 1, lambda row: None, resume=False, threads_source="test"
        )


def _alive(pids: list[int]) -> list[int]:
    out = []
    for pid in pids:
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            continue
        if stat.rsplit(")", 1)[1].split()[0] != "Z":
            out.append(pid)
    return out


def _job_processes(marker: str) -> list[int]:
    pids = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                if marker in (d / "cmdline").read_bytes().decode(errors="replace"):
                    pids.append(int(d.name))
            except OSError:
                pass
    return pids


# kills a two-process trial mid-run (about 30 s); the default suite keeps the two-process trial itself
@pytest.mark.slow
def test_a_trial_killed_takes_its_processes_with_it(tmp_path, clean_env):
    """SIGKILL of the trial (as Ray stops a trial whose node or driver goes): the launcher and both
    ranks end within seconds, and the run resumes from its checkpoint to a finished run."""
    run = tmp_path / "run"
    config = _config(limit_train=1024, epochs=6)
    script = textwrap.dedent(
        f"""
        import json, sys
        from pathlib import Path
        from filter_templates.sweep.ray_ranks import train_on_processes
        from filter_templates.training.config import TrainConfig
        config = TrainConfig.from_dict(json.loads({json.dumps(config.to_dict())!r}))
        def report(row):
            print(row["epoch"], flush=True)
        train_on_processes(config, Path({str(run)!r}), 2, 1, report, resume=False, threads_source="test")
        """
    )
    trial = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True, env=os.environ.copy())
    try:
        assert trial.stdout.readline().strip() == "1"  # the first epoch's checkpoint is on disk
        children = _job_processes("filter_templates.sweep.ray_ranks")
        assert len(children) >= 3  # the launcher and its two ranks
        trial.send_signal(signal.SIGKILL)
        trial.wait()
        deadline = time.monotonic() + 30
        while _alive(children) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not _alive(children)
    finally:
        for pid in _alive(_job_processes("filter_templates.sweep.ray_ranks")):
            os.kill(pid, signal.SIGKILL)
    resumed: list[int] = []
    train_on_processes(config, run, 2, 1, lambda row: resumed.append(row["epoch"]), resume=True, threads_source="t")
    assert rundir.read_json(run / rundir.SUMMARY)["status"] == "done"
    assert resumed and resumed[0] >= 2 and resumed[-1] == 6  # from the checkpoint on, not from the start
    assert [row["epoch"] for row in rundir.read_metrics(run)] == [1, 2, 3, 4, 5, 6]
