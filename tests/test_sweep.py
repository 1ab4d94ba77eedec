"""Sweeps: the grid (flags, presets, TOML), the local engine, and its reliability under kills and
concurrent sweeps on one results file (SPEC section 8 and 11)."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from filter_templates.cli import main
from filter_templates.core.errors import UsageError
from filter_templates.sweep.grid import PAPER_WIDTHS, SweepSpec, expand, load_config, plan_grid, preset
from filter_templates.sweep.store import Store, read_metrics

REPO = Path(__file__).resolve().parents[1]
CLASSES = {"cifar10": 10, "cifar100": 100, "digits": 10, "synthetic": 10}.__getitem__

# A tiny grid: each run is a few optimiser steps of a ~50k-parameter model on generated data.
TINY = [
    "--datasets",
    "synthetic",
    "--limit-train",
    "64",
    "--limit-test",
    "32",
    "--batch-size",
    "32",
    "--device",
    "cpu",
    "--threads",
    "1",
]  # 1 thread: fast on a CPU shared with other jobs


def sweep_args(tmp: Path, *extra: str) -> list[str]:
    return ["sweep", "--db", str(tmp / "r.sqlite"), "--runs-dir", str(tmp / "runs"), *TINY, *extra]


def err_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert err[0].startswith("filter-templates: error: ")
    return err[0]


# --------------------------------------------------------------------------------------------
# The grid
# --------------------------------------------------------------------------------------------


def test_paper_preset_is_the_published_grid():
    configs = expand(preset("paper"), classes_of=CLASSES)
    assert len(configs) == 4 * 5 * 8 * 2
    assert {c.arch.family for c in configs} == {"vgg19", "resnet50", "googlenet", "mobilenet"}
    assert {c.arch.template for c in configs} == {"base", "reverse", "uniform", "quadratic", "negative-quadratic"}
    assert sorted({c.arch.width for c in configs}) == sorted(PAPER_WIDTHS)
    assert {(c.dataset, c.arch.classes) for c in configs} == {("cifar10", 10), ("cifar100", 100)}
    assert {(c.epochs, c.batch_size, c.lr, c.momentum, c.weight_decay) for c in configs} == {(160, 64, 0.1, 0.9, 5e-4)}


def test_quick_preset_is_small():
    configs = expand(preset("quick"), classes_of=CLASSES)
    assert len(configs) == 2 * 5
    assert {c.arch.family for c in configs} == {"vgg19", "mobilenet"} and {c.dataset for c in configs} == {"digits"}
    assert max(c.arch.width for c in configs) <= 0.05 and max(c.epochs for c in configs) <= 6
    assert min(min(c.arch.filters) for c in configs) >= 8  # no 2-filter bottleneck (the floor)


def test_toml_config_and_overrides(tmp_path):
    f = tmp_path / "s.toml"
    f.write_text(
        'models = ["vgg19"]\nwidths = [0.5, 0.25, 0.5]\ndatasets = ["cifar10"]\nseeds = [0, 1]\n'
        "epochs = 3\nlr = 0.05\ndivisor = 8\n"
    )
    spec = load_config(f)
    configs = expand(spec, classes_of=CLASSES)
    assert len(configs) == 1 * 5 * 2 * 2  # the repeated width counts once
    assert {(c.epochs, c.lr, c.arch.divisor) for c in configs} == {(3, 0.05, 8)}
    assert all(n % 8 == 0 for c in configs for n in c.arch.filters)
    f.write_text('preset = "quick"\nepochs = 1\nwidths = [0.05]\n')
    spec = load_config(f).merged({"models": ["mobilenet"]})
    assert (spec.models, spec.widths, spec.train["epochs"], spec.datasets) == (["mobilenet"], [0.05], 1, ["digits"])


def test_example_configs_in_the_repo_load():
    files = sorted((REPO / "configs").glob("*.toml"))
    assert files, "configs/ holds example sweep files"
    for f in files:
        assert expand(load_config(f), classes_of=CLASSES)


@pytest.mark.parametrize(
    "text, match",
    [
        ("models = [", "not valid TOML"),
        ('models = ["vgg19"]\nwidths = [1.0]\ndatasets = ["digits"]\nepoch = 3\n', "unknown keys epoch"),
        ('models = ["vgg19"]\n', r"missing widths \(or budgets\), datasets"),
        (
            'models = ["vgg19"]\nwidths = [1.0]\nbudgets = ["params=1M"]\ndatasets = ["digits"]\n',
            "widths or budgets, not both",
        ),
        ('preset = "huge"\n', "unknown preset"),
    ],
)
def test_bad_toml_configs(tmp_path, text, match):
    f = tmp_path / "bad.toml"
    f.write_text(text)
    with pytest.raises(UsageError, match=match):
        load_config(f)


@pytest.mark.parametrize(
    "spec, match",
    [
        (dict(models=["vgg20"]), "unknown model 'vgg20'"),
        (dict(templates=["cubic"]), "unknown template 'cubic'"),
        (dict(datasets=["imagenet"]), "unknown dataset 'imagenet'"),
        (dict(widths=[-1.0]), "must hold positive numbers"),
        (dict(widths=[]), "non-empty list"),
        (dict(seeds=[-1]), "integers >= 0"),
    ],
)
def test_expand_validates_everything_up_front(spec, match):
    base = dict(models=["vgg19"], templates=["base"], widths=[0.1], datasets=["synthetic"])
    with pytest.raises(UsageError, match=match):
        expand(SweepSpec(**{**base, **spec}))


@pytest.mark.parametrize(
    "argv, match",
    [
        (["sweep"], "name a grid"),
        (["sweep", "--models", "vgg19"], "needs --widths (or --budgets), --datasets"),
        (["sweep", "--preset", "quick", "--config", "x.toml"], "not allowed with argument"),
        (["sweep", "--preset", "huge"], "invalid choice"),
        (["sweep", "--preset", "quick", "--widths", "0"], "not a positive finite number"),
        (["sweep", "--preset", "quick", "--address", "auto"], "only apply to --engine ray"),
        (["sweep", "--models", "nope", "--widths", "1", "--datasets", "digits"], "unknown model 'nope'"),
        (["sweep", "--config", "/nonexistent/s.toml"], "does not exist"),
        (["sweep", "--reindex", "--runs-dir", "/nonexistent/runs"], "does not exist"),
        (
            ["sweep", "--models", "vgg19", "--budgets", "params=1M", "--widths", "1", "--datasets", "digits"],
            "not allowed with argument",
        ),
        (
            ["sweep", "--models", "vgg19", "--budgets", "params=lots", "--datasets", "synthetic"],
            "malformed budget value",
        ),
        (["sweep", "--models", "vgg19", "--budgets", "params", "--datasets", "synthetic"], "malformed budget"),
        (
            ["sweep", "--models", "vgg19", "--budgets", "size=1M", "--datasets", "synthetic"],
            "unknown budget key 'size'",
        ),
        (
            ["sweep", "--models", "vgg19", "--budgets", "params=-5", "--datasets", "synthetic"],
            "must be a positive finite number",
        ),
        (["sweep", "--models", "vgg19", "--budgets", "params=1M"], "needs --datasets"),
    ],
)
def test_cli_errors_are_one_line(capsys, argv, match):
    assert main(argv) == 2
    assert match in err_line(capsys)


# --------------------------------------------------------------------------------------------
# Budget sweeps: every (family, template, budget, dataset, seed) is fitted, then trained
# --------------------------------------------------------------------------------------------


def test_budget_points_are_fitted_within_their_budget():
    from filter_templates.method.measure import arch_flops, arch_params

    spec = SweepSpec(
        models=["vgg19", "mobilenet"],
        templates=["base", "reverse", "quadratic"],
        widths=[],
        budgets=["params=50K", "flops=2M", "params=100"],
        datasets=["synthetic"],
        seeds=[0, 1],
        train={"epochs": 1},
    )
    grid = plan_grid(spec, classes_of=CLASSES)
    assert len(grid.budget_points) == 2 * 3 * 3 * 2 and len({p.key for p in grid.budget_points}) == 36
    for p in grid.budget_points:
        if p.budget.value == 100:  # below every family's smallest model: skipped, with the reason
            assert p.config is None and "below the smallest reachable" in p.reason, p.reason
            continue
        arch = p.config.arch
        used = arch_params(arch) if p.budget.key == "params" else arch_flops(arch)
        assert used <= p.budget.value and p.fit[p.budget.key] == used
        assert p.budget.value * 0.8 < used  # the widest model that fits, not just any
        assert p.fit["train_memory_bytes"] > 0 and p.config.epochs == 1 and p.config.seed == p.seed
        assert p.record()["width"] == arch.width
    assert len(grid.configs) == 24 and len(grid.unreachable) == 12
    by_seed = {}  # the seeds of one point share one fit
    for p in grid.budget_points:
        by_seed.setdefault((p.family, p.method, p.budget), []).append(p.config and p.config.arch)
    assert all(len(set(v)) == 1 for v in by_seed.values())


def test_budgets_in_toml_and_over_a_preset(tmp_path):
    f = tmp_path / "b.toml"
    f.write_text('preset = "quick"\nbudgets = ["params=20K"]\nepochs = 1\n')
    spec = load_config(f)
    assert (spec.budgets, spec.widths) == (["params=20K"], [])  # budgets replace the preset's widths
    assert spec.merged({"widths": [0.1]}).budgets == []  # and a width flag replaces budgets
    grid = plan_grid(spec, classes_of=CLASSES)
    assert len(grid.configs) == 2 * 5 and {p.budget.value for p in grid.budget_points} == {20_000}


def test_sweep_help_documents_budgets(capsys):
    with pytest.raises(SystemExit):
        main(["sweep", "--help"])
    out = capsys.readouterr().out
    assert "--budgets KEY=VALUE" in out and "params=1M" in out and "instead of widths" in out


def test_budget_sweep_records_fits_skips_unreachable_and_retries(tmp_path, capsys):
    argv = sweep_args(
        tmp_path,
        "--models",
        "mobilenet",
        "--templates",
        "base",
        "uniform",
        "--budgets",
        "params=20K",
        "params=100",
        "--epochs",
        "1",
        "--json",
    )
    assert main(argv) == 0
    out = json.loads(capsys.readouterr().out)
    assert (out["points"], out["done"], out["failed"]) == (2, 2, 0)
    assert len(out["unreachable"]) == 2 and all("231 parameters" in u["reason"] for u in out["unreachable"])
    with Store(tmp_path / "r.sqlite") as s:
        points = s.budget_rows()
    assert len(points) == 4
    for p in points:
        if p["budget_value"] == 100:
            assert p["status"] == "unreachable" and p["run"] is None
            continue
        run = p["run"]
        assert run["status"] == "done" and run["params"] <= 20_000 and run["params"] == p["fit"]["params"]
        assert run["width"] == p["width"] and run["filters"] == p["filters"]
    assert main(argv) == 0  # again: nothing to train
    again = json.loads(capsys.readouterr().out)
    assert (again["done"], again["skipped_done"], len(again["unreachable"])) == (0, 2, 2)
    # a budget point whose run fails is skipped on a re-run and retried with --retry-failed
    bad = sweep_args(
        tmp_path,
        "--models",
        "mobilenet",
        "--templates",
        "base",
        "--budgets",
        "params=20K",
        "--epochs",
        "1",
        "--lr",
        "1e30",
        "--json",
    )
    assert main(bad) == 1
    assert json.loads(capsys.readouterr().out)["failed"] == 1
    assert main(bad) == 0
    assert json.loads(capsys.readouterr().out)["skipped_failed"] == 1
    assert main(bad + ["--retry-failed"]) == 1
    assert json.loads(capsys.readouterr().out)["failed"] == 1
    with Store(tmp_path / "r.sqlite") as s:
        assert sorted(r["attempts"] for r in s.rows()) == [1, 1, 2]
        assert len(s.budget_rows()) == 5  # the new lr is a new point of the same budget


def test_budget_dry_run_lists_fits_and_unreachable_points(tmp_path, capsys):
    assert (
        main(
            sweep_args(
                tmp_path, "--models", "vgg19", "--templates", "base", "--budgets", "flops=5M", "flops=1", "--dry-run"
            )
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "synthetic-vgg19-base-w" in out and "unreachable: synthetic vgg19 base flops=1 s0: budget" in out
    assert "1 points, 1 unreachable; nothing run" in out
    assert not (tmp_path / "runs").exists()


def test_dry_run_of_the_paper_grid_needs_no_data(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no CIFAR anywhere here
    assert main(["sweep", "--preset", "paper", "--dry-run", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["points"] == 320 and out["grid"]["epochs"] == 160
    assert (
        main(
            [
                "sweep",
                "--preset",
                "paper",
                "--datasets",
                "cifar10",
                "--models",
                "vgg19",
                "--data-dir",
                str(tmp_path / "no-data"),
            ]
        )
        == 2
    )
    assert "does not exist" in err_line(capsys)  # a real run checks the data before training anything


def test_dry_run_lists_the_grid(tmp_path, capsys):
    assert (
        main(
            sweep_args(
                tmp_path,
                "--models",
                "vgg19",
                "mobilenet",
                "--templates",
                "base",
                "uniform",
                "--widths",
                "0.05",
                "--dry-run",
                "--json",
            )
        )
        == 0
    )
    out = json.loads(capsys.readouterr().out)
    assert out["points"] == 4 and len(set(out["runs"])) == 4
    assert not (tmp_path / "runs").exists()


# --------------------------------------------------------------------------------------------
# The local engine
# --------------------------------------------------------------------------------------------


def _check_runs(db: Path, runs: Path, epochs: int, points: int) -> list[dict]:
    """Every point exactly once, done, each epoch trained exactly once, store intact."""
    with Store(db) as s:
        assert s.integrity_check() == "ok"
        rows = s.rows()
    assert len(rows) == points
    assert [r["status"] for r in rows] == ["done"] * points, [(r["status"], r["reason"]) for r in rows]
    assert len({r["key"] for r in rows}) == points
    dirs = sorted(p for p in runs.iterdir() if p.is_dir() and not p.name.startswith("_"))
    assert sorted(Path(r["run_dir"]) for r in rows) == dirs  # one folder per point, no strays
    for r in rows:
        lines = (Path(r["run_dir"]) / "metrics.jsonl").read_text().splitlines()
        assert [json.loads(ln)["epoch"] for ln in lines] == list(range(1, epochs + 1))
        assert [e["epoch"] for e in r["epoch_metrics"]] == list(range(1, epochs + 1))
        assert r["final_acc"] is not None and r["params"] > 0 and r["wall_s"] > 0
    return rows


def test_sweep_runs_records_and_skips_done_points(tmp_path, capsys):
    argv = sweep_args(
        tmp_path, "--models", "vgg19", "mobilenet", "--templates", "base", "--widths", "0.05", "--epochs", "1", "--json"
    )
    assert main(argv) == 0
    out = json.loads(capsys.readouterr().out)
    assert (out["points"], out["done"], out["failed"], out["skipped"]) == (2, 2, 0, 0)
    rows = _check_runs(tmp_path / "r.sqlite", tmp_path / "runs", 1, 2)
    r = rows[0]
    assert r["train_memory_bytes"] > 0 and r["latency_batch_s"] > 0 and r["latency_b1_s"] > 0
    assert r["batch_size"] == 32 and r["device"] == "cpu" and r["attempts"] == 1
    assert r["config"]["limit_train"] == 64
    # again: nothing runs
    assert main(argv[:-1]) == 0
    line = capsys.readouterr().out.strip()
    assert "0 done, 0 failed, 2 skipped (2 already done)" in line and "r.sqlite" in line


def test_failed_runs_are_recorded_and_the_sweep_goes_on(tmp_path, capsys, one_thread):
    from filter_templates.method.arch import make_arch
    from filter_templates.sweep.local import run_local
    from filter_templates.sweep.options import EngineOptions
    from filter_templates.training.config import TrainConfig

    common = dict(dataset="synthetic", epochs=1, batch_size=32, limit_train=64, limit_test=32, device="cpu")
    arch = make_arch("vgg19", "base", 0.05, 10)
    configs = [
        TrainConfig(arch=arch, lr=1e30, **common),  # the loss turns NaN
        TrainConfig(arch=arch, **{**common, "dataset": "cifar10"}, data_dir=str(tmp_path / "no-data")),  # raises
        TrainConfig(arch=arch, **common),  # fine
    ]
    db, runs = tmp_path / "r.sqlite", tmp_path / "runs"
    result = run_local(configs, db, runs)
    assert (result.done, result.failed) == (1, 2)
    with Store(db) as s:
        nan, missing, ok = s.rows()
    assert nan["status"] == "failed" and "nan" in nan["reason"].lower()
    assert missing["status"] == "failed" and "UsageError" in missing["reason"]
    assert ok["status"] == "done"
    # failed points are skipped on a re-run, and retried only when asked
    again = run_local(configs, db, runs)
    assert (again.done, again.failed, again.skipped_failed, again.skipped_done) == (0, 0, 2, 1)
    retried = run_local(configs[:1], db, runs, EngineOptions(retry_failed=True))
    assert retried.failed == 1
    with Store(db) as s:
        assert s.get(nan["key"])["attempts"] == 2


def test_resources_a_summary_lacks_are_measured_and_kept_beside_it(tmp_path, one_thread):
    from filter_templates.method.arch import make_arch
    from filter_templates.sweep.plan import complete_resources, read_summary
    from filter_templates.training.config import TrainConfig

    cfg = TrainConfig(arch=make_arch("mobilenet", "base", 0.05, 10), batch_size=16, device="cpu")
    bare = {"status": "done", "device": "cpu", "resources": {"params": 123, "flops": 456}}
    (tmp_path / "summary.json").write_text(json.dumps(bare))
    full = complete_resources(cfg, bare, tmp_path)
    res = full["resources"]
    assert (res["params"], res["flops"]) == (123, 456)  # what the summary had wins
    assert res["train_memory_bytes"] > 0 and set(res["latency_s"]) == {"batch16", "batch1"}
    assert read_summary(tmp_path)["resources"] == res  # kept in resources.json, merged on reading
    assert complete_resources(cfg, full, tmp_path) is full  # nothing missing: nothing measured
    failed = {"status": "failed", "reason": "nan", "resources": {}}
    assert complete_resources(cfg, failed, tmp_path) is failed


def test_reindex_rebuilds_a_lost_store(tmp_path, capsys):
    argv = sweep_args(
        tmp_path, "--models", "vgg19", "--templates", "base", "uniform", "--widths", "0.05", "--epochs", "1"
    )
    assert main(argv) == 0
    with Store(tmp_path / "r.sqlite") as s:
        before = {r["key"]: (r["final_acc"], r["params"], r["run_dir"]) for r in s.rows()}
    for f in tmp_path.glob("r.sqlite*"):
        f.unlink()
    capsys.readouterr()
    assert main(["sweep", "--reindex", "--db", str(tmp_path / "r.sqlite"), "--runs-dir", str(tmp_path / "runs")]) == 0
    assert "reindexed 2 run folders" in capsys.readouterr().out
    with Store(tmp_path / "r.sqlite") as s:
        after = {r["key"]: (r["final_acc"], r["params"], r["run_dir"]) for r in s.rows() if r["status"] == "done"}
    assert after == before
    assert main(argv + ["--json"]) == 0  # and the rebuilt store is complete: nothing to run
    assert json.loads(capsys.readouterr().out)["skipped_done"] == 2


# --------------------------------------------------------------------------------------------
# Reliability: SIGKILL and concurrent sweeps (subprocesses, like real users)
# --------------------------------------------------------------------------------------------


def _spawn(argv: list[str], log: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "filter_templates", *argv],
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
        env=env,
        cwd=log.parent,
    )


def _wait(proc: subprocess.Popen, log: Path, timeout: float = 240) -> None:
    try:
        rc = proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise
    assert rc == 0, log.read_text()


def _poll(db: Path, sql: str) -> int:
    if not db.exists():
        return 0
    con = sqlite3.connect(db, timeout=30)
    try:
        return con.execute(sql).fetchone()[0]
    except sqlite3.OperationalError:  # the table does not exist yet
        return 0
    finally:
        con.close()


def test_sigkilled_sweep_resumes_without_losing_or_duplicating(tmp_path):
    db, runs = tmp_path / "r.sqlite", tmp_path / "runs"
    epochs = 3
    argv = sweep_args(
        tmp_path,
        "--models",
        "vgg19",
        "--templates",
        "base",
        "uniform",
        "reverse",
        "--widths",
        "0.05",
        "--epochs",
        str(epochs),
        "--limit-train",
        "128",
    )
    proc = _spawn(argv, tmp_path / "killed.log")
    deadline = time.time() + 240
    # kill once a run has finished and the next one is between its first and last epoch
    while time.time() < deadline and proc.poll() is None:
        if _poll(db, "SELECT COUNT(*) FROM runs WHERE status='done'") >= 1 and _poll(
            db, f"SELECT COUNT(*) FROM runs WHERE status='running' AND epochs_done BETWEEN 1 AND {epochs - 1}"
        ):
            break
        time.sleep(0.02)
    assert proc.poll() is None, "the sweep ended before it could be killed:\n" + (tmp_path / "killed.log").read_text()
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    with Store(db) as s:
        killed = [r for r in s.rows() if r["status"] == "running"]
        assert len(killed) == 1 and killed[0]["epochs_done"] >= 1
        done_before = {r["key"]: r["finished_at"] for r in s.rows() if r["status"] == "done"}
    assert main(argv) == 0  # the re-run: same command
    rows = _check_runs(db, runs, epochs, 3)
    by_key = {r["key"]: r for r in rows}
    for key, finished in done_before.items():  # finished rows were kept, not re-run
        assert by_key[key]["finished_at"] == finished and by_key[key]["attempts"] == 1
    k = killed[0]["key"]
    assert by_key[k]["attempts"] == 2
    with Store(db) as s:
        assert [e["event"] for e in s.events(k)] == ["add", "claim", "reclaim", "done"]
    # resumed, not restarted: the epochs trained before the kill kept their numbers
    kept = killed[0]["epoch_metrics"]
    assert [m["test_acc"] for m in read_metrics(by_key[k]["run_dir"])[: len(kept)]] == [m["test_acc"] for m in kept]


def test_concurrent_budget_sweeps_on_one_file_run_each_point_once(tmp_path):
    db = tmp_path / "r.sqlite"
    argv = sweep_args(
        tmp_path,
        "--models",
        "mobilenet",
        "--templates",
        "base",
        "uniform",
        "quadratic",
        "--budgets",
        "params=20K",
        "params=100",
        "--epochs",
        "1",
        "--limit-train",
        "32",
    )
    procs = [(_spawn(argv, tmp_path / f"w{i}.log"), tmp_path / f"w{i}.log") for i in range(2)]
    for p, log in procs:
        _wait(p, log)
    rows = _check_runs(db, tmp_path / "runs", 1, 3)
    with Store(db) as s:
        assert all([e["event"] for e in s.events(r["key"])] == ["add", "claim", "done"] for r in rows)
        points = s.budget_rows()
    assert len(points) == 6 and sorted(p["status"] for p in points) == ["fitted"] * 3 + ["unreachable"] * 3
    assert sum(log.read_text().count("done   ") for _, log in procs) == 3


@pytest.mark.slow  # three sweep processes (about 14 s); the two-process budget-sweep test stays by default
def test_three_concurrent_sweeps_on_one_file_run_each_point_once(tmp_path):
    """The middle sweep runs two jobs (a worker process of its own): four processes in all."""
    db = tmp_path / "r.sqlite"
    grids = [["vgg19"], ["vgg19", "mobilenet"], ["mobilenet"]]  # overlapping: every point in 2 of 3 grids
    procs = []
    for i, models in enumerate(grids):
        argv = sweep_args(
            tmp_path,
            "--models",
            *models,
            "--templates",
            "base",
            "uniform",
            "--widths",
            "0.05",
            "--epochs",
            "1",
            "--limit-train",
            "32",
            *(["--jobs", "2"] if i == 1 else []),
        )
        procs.append((_spawn(argv, tmp_path / f"w{i}.log"), tmp_path / f"w{i}.log"))
    for p, log in procs:
        _wait(p, log)
    rows = _check_runs(db, tmp_path / "runs", 1, 4)
    with Store(db) as s:
        for r in rows:
            events = [e["event"] for e in s.events(r["key"])]
            assert events == ["add", "claim", "done"], events  # one training start per point
            assert r["attempts"] == 1
    started = sum(log.read_text().count("done   ") for _, log in procs)
    assert started == 4  # the three logs together report each point once


def test_two_jobs_share_the_grid_and_the_worker_reports_back(tmp_path, one_thread):
    """``--jobs 2``: the driver spawns one worker process on the same store; every point runs once,
    and the driver's result counts the worker's runs too. The worker's entry point is called in this
    process as well, on a grid with nothing left, to check it reads its job and writes its result."""
    from filter_templates.method.arch import make_arch
    from filter_templates.sweep.local import _worker_main, run_local
    from filter_templates.sweep.options import EngineOptions
    from filter_templates.training.config import TrainConfig

    common = dict(dataset="synthetic", epochs=1, batch_size=32, limit_train=64, limit_test=32, device="cpu")
    configs = [TrainConfig(arch=make_arch("vgg19", t, 0.05, 10), **common) for t in ("base", "uniform", "reverse")]
    db, runs = tmp_path / "r.sqlite", tmp_path / "runs"
    result = run_local(configs, db, runs, EngineOptions(jobs=2, threads=1))
    assert (result.done, result.failed) == (3, 0)
    with Store(db) as s:
        rows = s.rows()
    assert [r["status"] for r in rows] == ["done"] * 3 and len({r["key"] for r in rows}) == 3
    assert not list(runs.glob(".sweep-*"))  # the job and result files are cleaned up

    job, out = tmp_path / "job.json", tmp_path / "out.json"
    job.write_text(
        json.dumps(
            {
                "db": str(db),
                "runs_dir": str(runs),
                "threads": 1,
                "threads_source": "--threads",
                "configs": [c.to_dict() for c in configs],
            }
        )
    )
    assert _worker_main([str(job), str(out)]) == 0
    assert json.loads(out.read_text())["skipped_done"] == 3
