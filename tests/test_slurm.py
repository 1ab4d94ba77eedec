"""The Slurm engine against a real Slurm cluster: a two-point sweep whose driver is killed with
SIGKILL and started again, a job cancelled with scancel and one preempted (SIGUSR2, the signal
Slurm sends before a time limit) in one sweep, and bad options.

The cluster is the one-node cluster tests/slurm/up.sh starts (``.ci/run`` runs it as root); where
none answers, the tests that need one skip with one line saying why. submitit is the ``slurm``
extra. Each job trains MobileNet at width 0.05 on a few hundred digits images.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from filter_templates.cli import main
from filter_templates.core.errors import UsageError
from filter_templates.core.rundir import read_json
from filter_templates.method.arch import make_arch
from filter_templates.sweep.slurm_engine import check_shared
from filter_templates.sweep.slurm_job import TrainJob, rendezvous_port
from filter_templates.sweep.slurm_queue import Cluster
from filter_templates.sweep.store import Store
from filter_templates.training.config import TrainConfig

ROOT = Path(__file__).resolve().parents[1]


def _no_cluster() -> str | None:
    """Why no Slurm cluster can run the tests here, or None when one answers with a usable node."""
    if shutil.which("sinfo") is None or shutil.which("sbatch") is None:
        return "no Slurm here (sinfo/sbatch not on PATH); as root, tests/slurm/up.sh starts a one-node cluster"
    try:
        out = subprocess.run(["sinfo", "-h", "-o", "%t"], capture_output=True, text=True, timeout=20)
    except subprocess.TimeoutExpired:
        return "Slurm does not answer (sinfo timed out after 20 s)"
    if out.returncode != 0:
        return f"Slurm is not reachable: {' '.join(out.stderr.split())[:200]}"
    if not any(s.startswith(("idle", "mix", "alloc")) for s in out.stdout.split()):
        return f"no Slurm node is up (sinfo says: {' '.join(out.stdout.split()) or 'nothing'})"
    return None


@pytest.fixture(scope="module")
def slurm() -> None:
    pytest.importorskip("submitit", reason="submitit (the slurm extra) is not installed")
    reason = _no_cluster()
    if reason:
        pytest.skip(reason)


def _argv(tmp: Path, *, templates=("base", "uniform"), epochs: int = 1, more=()) -> list[str]:
    return [
        "sweep",
        "--engine",
        "slurm",
        "--models",
        "mobilenet",
        "--templates",
        *templates,
        "--widths",
        "0.05",
        "--datasets",
        "digits",
        "--epochs",
        str(epochs),
        "--limit-train",
        "256",
        "--limit-test",
        "128",
        "--precision",
        "fp32",
        "--memory-format",
        "contiguous",
        "--device",
        "cpu",
        "--db",
        str(tmp / "r.sqlite"),
        "--runs-dir",
        str(tmp / "runs"),
        "--json",
        *more,
    ]


def _driver(argv: list[str], tmp: Path) -> subprocess.Popen:
    """The sweep as its own process (its own session: killing it touches nothing else)."""
    return subprocess.Popen(
        [sys.executable, "-m", "filter_templates", *argv],
        cwd=ROOT,
        start_new_session=True,
        stdout=open(tmp / "driver.out", "w"),
        stderr=open(tmp / "driver.err", "w"),
    )


def _jobs(tmp: Path) -> dict:
    try:
        return json.loads((tmp / "r.slurm" / "jobs.json").read_text())["jobs"]
    except (OSError, ValueError, KeyError):
        return {}


def _state(job_id: str) -> str:
    out = subprocess.run(["squeue", "-h", "--states=all", "-j", job_id, "-o", "%T"], capture_output=True, text=True)
    return out.stdout.strip()


def _wait(what, timeout: float = 240.0, every: float = 0.5):
    deadline = time.time() + timeout
    while time.time() < deadline:
        got = what()
        if got:
            return got
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what.__doc__ or what}")


def _summaries(tmp: Path) -> dict[str, dict]:
    return {p.parent.name: json.loads(p.read_text()) for p in (tmp / "runs").glob("*/summary.json")}


def _epochs(run_dir: Path) -> list[int]:
    try:
        return [json.loads(x)["epoch"] for x in (run_dir / "metrics.jsonl").read_text().splitlines() if x.strip()]
    except OSError:
        return []


def test_a_driver_killed_mid_sweep_reattaches_to_its_jobs(slurm, tmp_path, capsys):
    """kill -9 of the driver while its jobs run, then the same command: it re-attaches (no job
    submitted twice), records both runs; a third run submits nothing."""
    argv = _argv(tmp_path, epochs=2)
    driver = _driver(argv, tmp_path)
    try:

        def running():
            """a job of the sweep running"""
            jobs = _jobs(tmp_path)
            return len(jobs) == 2 and any(_state(j["job_id"]) == "RUNNING" for j in jobs.values()) and jobs

        submitted = _wait(running)
    finally:
        driver.kill()  # SIGKILL: no handler runs, the claims stay as they were
        driver.wait()
    ids = sorted(j["job_id"] for j in submitted.values())
    assert main(argv) == 0
    out = json.loads(capsys.readouterr().out)
    err = (tmp_path / "driver.err").read_text() + capsys.readouterr().err
    assert (out["engine"], out["points"], out["done"] + out["skipped_done"], out["failed"]) == ("slurm", 2, 2, 0)
    summaries = _summaries(tmp_path)
    assert sorted(s["slurm_job_id"] for s in summaries.values()) == ids  # the jobs of the first driver, no others
    assert err.count("submitted 2 runs") == 1
    with Store(tmp_path / "r.sqlite") as s:
        assert s.integrity_check() == "ok"
        rows = s.rows()
        events = {r["key"]: [e["event"] for e in s.events(r["key"])] for r in rows}
    assert [r["status"] for r in rows] == ["done", "done"]
    for r in rows:
        assert events[r["key"]] in (["add", "claim", "reclaim", "done"], ["add", "claim", "done"])
        assert [e["epoch"] for e in r["epoch_metrics"]] == [1, 2] and r["final_acc"] is not None and r["params"] > 0
        assert summaries[Path(r["run_dir"]).name]["final_acc"] == r["final_acc"]
    assert _jobs(tmp_path) == {}  # every job recorded and forgotten
    assert main(argv) == 0  # nothing left to do: nothing submitted
    again = json.loads(capsys.readouterr().out)
    assert (again["done"], again["skipped_done"]) == (0, 2)
    assert sorted(p.name for p in (tmp_path / "r.slurm").iterdir() if p.is_dir() and "_" in p.name) == ids


def test_a_cancelled_job_fails_with_its_reason_and_a_preempted_one_resumes(slurm, tmp_path, capsys):
    """scancel: the run is recorded failed with what Slurm said, the sweep goes on, --retry-failed
    resumes it; SIGUSR2 (what Slurm sends before a time limit or on preemption): the job
    checkpoints, requeues itself and resumes from its last epoch."""
    argv = _argv(tmp_path, epochs=3)
    driver = _driver(argv, tmp_path)
    try:
        jobs = _wait(lambda: len(_jobs(tmp_path)) == 2 and _jobs(tmp_path))
        by_template = {("base" if "-base-" in j["run_dir"] else "uniform"): j for j in jobs.values()}
        cancel, preempt = by_template["base"], by_template["uniform"]
        _wait(lambda: _state(cancel["job_id"]) == "RUNNING")
        subprocess.run(["scancel", cancel["job_id"]], check=True)
        _wait(lambda: _epochs(Path(preempt["run_dir"])))  # its first epoch is checkpointed
        subprocess.run(["scancel", "--signal=USR2", preempt["job_id"]], check=True)
        assert driver.wait(timeout=300) == 1  # a run of the sweep failed
    finally:
        driver.kill()
    out = json.loads((tmp_path / "driver.out").read_text())
    assert (out["done"], out["failed"]) == (1, 1)
    assert "CANCELLED" in out["failures"][0]["reason"] and cancel["job_id"] in out["failures"][0]["reason"]
    resumed = _summaries(tmp_path)[Path(preempt["run_dir"]).name]
    assert resumed["status"] == "done" and resumed["slurm_job_id"] == preempt["job_id"]
    assert resumed["slurm"]["restarts"] == 1 and (resumed["slurm"]["first_epoch"] or 4) > 1  # not from scratch
    assert _epochs(Path(preempt["run_dir"])) == [1, 2, 3]
    assert main([*argv, "--retry-failed"]) == 0
    retried = json.loads(capsys.readouterr().out)
    assert (retried["done"], retried["failed"], retried["skipped_done"]) == (1, 0, 1)
    with Store(tmp_path / "r.sqlite") as s:
        assert [r["status"] for r in s.rows()] == ["done", "done"]


@pytest.mark.slow  # two 2-process jobs on the cluster
def test_each_point_one_run_of_two_tasks(slurm, tmp_path, capsys):
    """--tasks-per-node 2: every grid point is one job of two tasks training one run (gloo)."""
    argv = _argv(tmp_path, more=("--gpus-per-task", "0", "--cpus-per-task", "1", "--tasks-per-node", "2"))
    assert main(argv) == 0
    runs = sorted((tmp_path / "runs").glob("*/config.json"))
    assert len(runs) == 2 and all(json.loads(p.read_text())["world_size"] == 2 for p in runs)
    assert all(s["status"] == "done" for s in _summaries(tmp_path).values())
    with Store(tmp_path / "r.sqlite") as store:
        assert sorted(r["status"] for r in store.rows()) == ["done", "done"]
    logs = sorted(p.name for p in (tmp_path / "r.slurm").glob("*/*_log.out"))
    assert len(logs) == 4  # two tasks per job


def test_bad_slurm_options_are_one_error_line(slurm, tmp_path, capsys):
    for more, words in (
        (["--partition", "no-such-partition"], "no such partition"),
        (["--slurm-option", "account"], "KEY=VALUE"),
        (["--slurm-option", "time=5"], "use --time"),
        (["--mem", "lots"], "--mem"),
        (["--time", "1"], "at least 3 minutes"),
    ):
        assert main(_argv(tmp_path, more=more)) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and words in err[0], err
    assert not (tmp_path / "r.sqlite").exists() and not (tmp_path / "r.slurm").exists()  # nothing written


def test_slurm_flags_need_the_slurm_engine(tmp_path, capsys):
    assert (
        main(
            [
                "sweep",
                "--models",
                "mobilenet",
                "--widths",
                "0.05",
                "--datasets",
                "digits",
                "--partition",
                "gpu",
                "--db",
                str(tmp_path / "r.sqlite"),
            ]
        )
        == 2
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--partition only apply to --engine slurm" in err[0]


def test_paths_the_nodes_cannot_see_are_refused(tmp_path):
    """A folder under this machine's temporary folder is refused when other nodes run the jobs,
    accepted when the only node is this machine."""
    elsewhere = Cluster("batch", ["node001", "node002"])
    with pytest.raises(UsageError, match=r"--runs-dir .* temporary folder of this machine"):
        check_shared(elsewhere, {"--runs-dir": Path("/tmp/runs")})
    check_shared(elsewhere, {"--runs-dir": Path("/srv/project/runs")})  # a shared project folder: fine
    check_shared(Cluster("debug", [socket.gethostname()]), {"--runs-dir": Path("/tmp/runs")})


def test_missing_submitit_is_a_clear_usage_error(monkeypatch, capsys, tmp_path):
    monkeypatch.setitem(sys.modules, "submitit", None)  # import submitit -> ImportError
    assert main(_argv(tmp_path)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "pip install 'filter-templates[slurm]'" in err[0]


def test_a_job_writes_its_run_folder_with_its_slurm_id_and_a_broken_one_is_a_failed_result(tmp_path, monkeypatch):
    """What a node runs, in this process: the job trains into its run folder (resuming when the
    folder holds a checkpoint), stamps its summary with the id squeue knows (``ARRAY_TASK`` for an
    array task) and turns a broken run into a failed result instead of raising."""
    monkeypatch.setenv("SLURM_ARRAY_JOB_ID", "41")
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "3")
    monkeypatch.setenv("SLURM_RESTART_COUNT", "not a number")  # read as no restart
    monkeypatch.delenv("SLURM_CPUS_PER_TASK", raising=False)
    config = TrainConfig(
        arch=make_arch("mobilenet", "base", 0.05, 10),
        dataset="digits",
        epochs=1,
        limit_train=128,
        limit_test=64,
        batch_size=32,
        precision="fp32",
        memory_format="contiguous",
        device="cpu",
    )
    run = tmp_path / "run"
    out = TrainJob()({"key": "k", "run_dir": str(run), "config": config.to_dict(), "threads": 1, "submitted_at": 1.0})
    assert out["status"] == "done" and out["slurm_job_id"] == "41_3"
    assert out["slurm"]["restarts"] == 0 and out["slurm"]["first_epoch"] == 1
    on_disk = read_json(run / "summary.json")
    assert on_disk["slurm_job_id"] == "41_3" and on_disk["slurm"]["submitted_at"] == 1.0

    broken = {**config.to_dict(), "epochs": 0}
    failed = TrainJob()({"key": "k", "run_dir": str(tmp_path / "bad"), "config": broken, "threads": 1})
    assert failed["status"] == "failed" and "epochs" in failed["reason"] and failed["slurm_job_id"] == "41_3"


@pytest.mark.slow  # three rungs, each one job array on the cluster
def test_halving_on_slurm_keeps_the_local_engines_survivors(slurm, tmp_path, capsys):
    """reduce --halving 2 with --engine slurm (each rung one submission, the driver ranking between
    rungs from the store) keeps the candidates the local engine keeps on the same data."""
    from test_halving import HALVING, survivors
    from test_reduce import reduce_args

    assert main(reduce_args(tmp_path / "local", *HALVING)) == 0
    local = json.loads(capsys.readouterr().out)
    argv = reduce_args(tmp_path / "slurm", *HALVING, "--engine", "slurm", "--cpus-per-task", "1")
    i = argv.index("--threads")
    assert main(argv[:i] + argv[i + 2 :]) == 0  # --threads is the local engine's; a job gets its task's CPUs
    on_slurm = json.loads(capsys.readouterr().out)
    assert survivors(on_slurm) == survivors(local) and len(survivors(local)) == 3
    assert on_slurm["halving"]["epochs_trained"] == local["halving"]["epochs_trained"] == 9
    assert on_slurm["winner"]["template"] == local["winner"]["template"]


def test_rendezvous_ports_of_jobs_side_by_side_differ():
    """Every task of a job derives the same port; array tasks (each its own SLURM_JOB_ID) and
    neighbouring jobs get different ones, all in the unprivileged range."""
    ports = [rendezvous_port(str(j)) for j in range(123_400, 123_464)]
    assert len(set(ports)) == len(ports) and all(20000 <= p < 40000 for p in ports)
    assert rendezvous_port("123456") == rendezvous_port("123456")
    assert rendezvous_port("") == 20000
