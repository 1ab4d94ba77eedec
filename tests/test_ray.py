"""The Ray engine on a local Ray and on a cluster started with ``ray start --head``: a two-point
grid, each point a Tune trial; the driver alone writes the results store. Skipped where Ray is not
installed (it is an optional extra; CI installs it)."""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import pytest
from tiny import TINY_SWEEP

from filter_templates.cli import main
from filter_templates.sweep.store import Store


@pytest.mark.slow  # 8-20 s of Ray or process start-up: the slow suite (-m slow) runs it
def test_a_trial_that_cannot_fit_a_local_ray_is_refused(tmp_path, capsys):
    ray = pytest.importorskip("ray")
    assert not ray.is_initialized()  # runs before the module's shared Ray starts
    import os as _os

    too_many = str((_os.cpu_count() or 1) + 1)
    argv = [
        "sweep",
        "--engine",
        "ray",
        "--cpus-per-trial",
        too_many,
        *TINY_SWEEP,
        "--db",
        str(tmp_path / "r.sqlite"),
        "--runs-dir",
        str(tmp_path / "runs"),
    ]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--cpus-per-trial" in err[0] and "more than this machine" in err[0]
    with Store(tmp_path / "r.sqlite") as s:  # the claim was handed back
        assert [r["status"] for r in s.rows()] == ["pending"]
    assert not ray.is_initialized()  # the engine shut down the Ray it started, on a refusal too


def test_missing_ray_is_a_clear_usage_error(monkeypatch, capsys, tmp_path):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError
    argv = [
        "sweep",
        "--engine",
        "ray",
        *TINY_SWEEP,
        "--db",
        str(tmp_path / "r.sqlite"),
        "--runs-dir",
        str(tmp_path / "runs"),
    ]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "pip install 'filter-templates[ray]'" in err[0]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# a second Ray cluster started by `ray start` (about 40 s): the local-Ray tests cover the engine by default
@pytest.mark.slow
def test_joining_a_ray_start_head_cluster_needs_nothing_exported(tmp_path):
    """A real head started with `ray start --head` (Ray >= 2.59 turns token authentication on when
    a token exists); the sweep joins it with the token that is in ~/.ray/auth_token and nothing in
    the environment, as a user would after `ray start`. The head runs in its own process group
    (its own HOME, port, temporary folder) and is stopped through it."""
    pytest.importorskip("ray")
    home = tmp_path / "home"
    (home / ".ray").mkdir(parents=True)
    (home / ".ray" / "auth_token").write_text(uuid.uuid4().hex)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_AUTH", "RAY_ADDRESS"))}
    env["HOME"] = str(home)
    port = _free_port()
    temp = tempfile.mkdtemp(prefix="ray", dir="/tmp")  # Ray's socket paths must stay short
    ray_cli = Path(sys.executable).with_name("ray")
    head = subprocess.Popen(
        [
            str(ray_cli),
            "start",
            "--head",
            "--node-ip-address=127.0.0.1",
            f"--port={port}",
            f"--temp-dir={temp}",
            "--num-cpus=2",
            "--include-dashboard=false",
            f"--dashboard-port={_free_port()}",
            f"--dashboard-agent-listen-port={_free_port()}",
            "--disable-usage-stats",
        ],
        env=env,
        start_new_session=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        started = head.communicate(timeout=180)[0]
        assert head.returncode == 0, started[-2000:]
        argv = [
            "sweep",
            "--engine",
            "ray",
            "--address",
            f"127.0.0.1:{port}",
            "--models",
            "mobilenet",
            "--templates",
            "base",
            "uniform",
            "--widths",
            "0.05",
            "--datasets",
            "digits",
            "--epochs",
            "1",
            "--limit-train",
            "128",
            "--limit-test",
            "64",
            "--precision",
            "fp32",
            "--memory-format",
            "contiguous",
            "--device",
            "cpu",
            "--db",
            str(tmp_path / "r.sqlite"),
            "--runs-dir",
            str(tmp_path / "runs"),
            "--json",
        ]
        sweep = subprocess.run(
            [sys.executable, "-m", "filter_templates", *argv], env=env, capture_output=True, text=True, timeout=400
        )
        assert sweep.returncode == 0, sweep.stderr[-2000:]
        out = json.loads(sweep.stdout)
        assert (out["engine"], out["points"], out["done"], out["failed"]) == ("ray", 2, 2, 0)
        with Store(tmp_path / "r.sqlite") as s:
            assert [r["status"] for r in s.rows()] == ["done", "done"]
    finally:
        _stop_group(head.pid)
        subprocess.run(["rm", "-rf", temp], check=False)


def _stop_group(pgid: int) -> None:
    """Stop every process of the head's group: SIGTERM, then SIGKILL what is left."""
    for sig, wait in ((signal.SIGTERM, 10.0), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(pgid, sig)
        except ProcessLookupError:
            return
        deadline = time.time() + wait
        while time.time() < deadline:
            try:
                os.killpg(pgid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.2)


@pytest.fixture(scope="module")
def local_ray():
    """One local Ray for this module's sweeps (each start takes seconds): the engine runs on a Ray it
    finds running and leaves it running; the test above checks that it stops one it started."""
    ray = pytest.importorskip("ray")
    ray.init(include_dashboard=False, log_to_driver=False, logging_level=logging.ERROR)
    yield ray
    ray.shutdown()


def test_two_point_grid_on_a_local_ray(tmp_path, capsys, monkeypatch, local_ray):
    ray = local_ray
    monkeypatch.chdir(tmp_path)  # relative --db/--runs-dir resolve here, as for a user
    argv = [
        "sweep",
        "--engine",
        "ray",
        "--cpus-per-trial",
        "1",
        "--models",
        "vgg19",
        "--templates",
        "base",
        "uniform",
        "--widths",
        "0.05",
        "--datasets",
        "synthetic",
        "--epochs",
        "2",
        "--limit-train",
        "64",
        "--limit-test",
        "32",
        "--batch-size",
        "32",
        "--device",
        "cpu",
        "--db",
        "r.sqlite",
        "--runs-dir",
        "runs",
        "--json",
    ]
    assert main(argv) == 0
    out = json.loads(capsys.readouterr().out)  # stdout is exactly one JSON document despite Ray's chatter
    assert (out["engine"], out["points"], out["done"], out["failed"]) == ("ray", 2, 2, 0)
    assert ray.is_initialized()  # a Ray the engine found running is left running
    with Store(tmp_path / "r.sqlite") as s:
        rows = s.rows()
        assert s.integrity_check() == "ok"
        events = {r["key"]: [e["event"] for e in s.events(r["key"])] for r in rows}
    assert [r["status"] for r in rows] == ["done", "done"]
    for r in rows:
        assert events[r["key"]] == ["add", "claim", "done"]
        assert [e["epoch"] for e in r["epoch_metrics"]] == [1, 2]
        assert r["claimed_by"] is None and r["final_acc"] is not None and r["params"] > 0
        run_dir = tmp_path / "runs" / os.path.basename(r["run_dir"])
        summary = json.loads((run_dir / "summary.json").read_text())
        assert summary["status"] == "done" and summary["final_acc"] == r["final_acc"]
        assert [json.loads(x)["epoch"] for x in (run_dir / "metrics.jsonl").read_text().splitlines()] == [1, 2]
    # Tune's trials ran under the runs folder; their checkpoints, duplicates of complete run
    # folders, were deleted after the driver recorded them
    trials = list((tmp_path / "runs" / "_ray").glob("sweep-*/*-s0-*"))
    assert len(trials) == 2 and not list((tmp_path / "runs" / "_ray").glob("sweep-*/*/checkpoint_*"))
    # a second sweep finds everything done and starts no Ray at all
    assert main(argv) == 0
    again = json.loads(capsys.readouterr().out)
    assert (again["done"], again["skipped_done"]) == (0, 2)


@pytest.mark.slow  # 8-20 s of Ray or process start-up: the slow suite (-m slow) runs it
def test_a_trial_on_two_processes(tmp_path, capsys, monkeypatch, local_ray):
    """--procs-per-trial 2: each trial's run is one 2-process run (gloo) on the trial's node, its
    two CPUs split between the processes; every epoch reaches the store as rank 0 records it."""
    monkeypatch.chdir(tmp_path)
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(k, raising=False)
    argv = ["sweep", "--engine", "ray", "--procs-per-trial", "2", "--models", "vgg19", "--templates", "uniform"]
    argv += ["--widths", "0.05", "--datasets", "digits", "--epochs", "2", "--limit-train", "256"]
    argv += ["--limit-test", "128", "--batch-size", "32", "--device", "cpu", "--db", "r.sqlite", "--runs-dir", "runs"]
    assert main([*argv, "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert (out["points"], out["done"], out["failed"]) == (1, 1, 0)
    with Store(tmp_path / "r.sqlite") as s:
        (row,) = s.rows()
    assert row["status"] == "done" and [e["epoch"] for e in row["epoch_metrics"]] == [1, 2]
    run_dir = tmp_path / "runs" / os.path.basename(row["run_dir"])
    assert json.loads((run_dir / "config.json").read_text())["world_size"] == 2
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "done" and summary["final_acc"] == row["final_acc"]
    assert summary["threads"] == 1 and "2 processes" in summary["execution"]["threads_source"]


@pytest.mark.slow  # 8-20 s of Ray or process start-up: the slow suite (-m slow) runs it
def test_budget_sweep_on_a_local_ray(tmp_path, capsys, monkeypatch, local_ray):
    """Budget points are fitted by the driver, trained as trials, recorded with their fit; an
    unreachable budget is recorded as skipped and the sweep goes on."""
    monkeypatch.chdir(tmp_path)
    argv = [
        "sweep",
        "--engine",
        "ray",
        "--models",
        "mobilenet",
        "--templates",
        "base",
        "uniform",
        "--budgets",
        "params=20K",
        "params=100",
        "--datasets",
        "synthetic",
        "--epochs",
        "1",
        "--limit-train",
        "64",
        "--limit-test",
        "32",
        "--batch-size",
        "32",
        "--device",
        "cpu",
        "--db",
        "r.sqlite",
        "--runs-dir",
        "runs",
        "--json",
    ]
    assert main(argv) == 0
    out = json.loads(capsys.readouterr().out)
    assert (out["engine"], out["points"], out["done"], out["failed"], len(out["unreachable"])) == ("ray", 2, 2, 0, 2)
    with Store(tmp_path / "r.sqlite") as s:
        points = s.budget_rows()
        for r in s.rows():
            assert [e["event"] for e in s.events(r["key"])] == ["add", "claim", "done"]
    fitted = [p for p in points if p["status"] == "fitted"]
    assert len(points) == 4 and len(fitted) == 2
    assert all(p["run"]["status"] == "done" and p["run"]["params"] <= 20_000 for p in fitted)
    assert main(argv) == 0  # a re-run starts no trial
    assert json.loads(capsys.readouterr().out)["skipped_done"] == 2


@pytest.mark.slow  # three rungs, three Tune runs: ~1-9 min on a shared 2-core machine
def test_halving_on_a_local_ray_keeps_the_local_engines_survivors(tmp_path, capsys, local_ray):
    """The same reduce with --halving 2 on the local engine and on Ray (each rung one submission,
    the driver ranking between rungs from the store): the same candidates at every rung."""
    from test_halving import HALVING, survivors
    from test_reduce import reduce_args

    assert main(reduce_args(tmp_path / "local", *HALVING)) == 0
    local = json.loads(capsys.readouterr().out)
    argv = reduce_args(tmp_path / "ray", *HALVING, "--engine", "ray", "--cpus-per-trial", "1")
    i = argv.index("--threads")
    assert main(argv[:i] + argv[i + 2 :]) == 0  # --threads is the local engine's; a trial gets its CPU's
    ray = json.loads(capsys.readouterr().out)
    assert survivors(ray) == survivors(local) and len(survivors(local)) == 3
    assert ray["halving"]["epochs_trained"] == local["halving"]["epochs_trained"] == 9
    assert ray["winner"]["template"] == local["winner"]["template"]
