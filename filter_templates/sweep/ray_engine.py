"""The Ray engine: every grid point is one Ray Tune trial, on this machine or a cluster.

Trials may run on other hosts, so they never touch the SQLite file: the driver (this process) is
its only writer. It claims the points it will run (so a local sweep on the same file leaves them
alone), records each epoch a trial reports and, when a trial ends, the run's ``summary.json``.

A trial trains into its run folder and reports after every epoch with the folder as a Tune
checkpoint; Tune copies it to ``storage`` (shared storage on a cluster). When a trial fails
(a node dies, a worker crashes) Tune restarts it up to ``max_failures`` times from that
checkpoint: the trial copies the checkpoint back into its run folder and ``train`` resumes.
When the whole sweep is killed, the next sweep resumes partial runs from their run folders.

Ray is an optional extra (``pip install 'filter-templates[ray]'``) and is imported only here.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Sequence

import torch

from filter_templates.core.errors import UsageError
from filter_templates.core.progress import Progress
from filter_templates.core.rundir import CHECKPOINT, copy_run_files, read_metrics
from filter_templates.core.status import PENDING, RUNNING
from filter_templates.run import run_config
from filter_templates.sweep.options import EngineOptions
from filter_templates.sweep.plan import Point, SweepResult, complete_resources, finished_on_disk, prepare
from filter_templates.sweep.ray_ranks import train_on_processes
from filter_templates.sweep.store import DEFAULT_STALE_AFTER, HEARTBEAT_EVERY, Heartbeats, Store, owner_id
from filter_templates.training.autotune import threads_for
from filter_templates.training.config import TrainConfig

if TYPE_CHECKING:
    from filter_templates.sweep.grid import BudgetPoint

__all__ = ["run_ray", "import_ray", "copy_run_files"]

_QUIET = {
    "RAY_AIR_NEW_OUTPUT": "0",  # the classic reporter, which verbose=0 silences completely
    # every per-epoch checkpoint snapshots the experiment state (num_to_keep=1): expected, not a problem
    "TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S": "0",
}
#: Where a cluster started with ``ray start --head`` (Ray >= 2.59) keeps its token by default.
RAY_TOKEN_FILE = Path.home() / ".ray" / "auth_token"


def import_ray(address: str | None = None) -> tuple[Any, Any]:
    """``(ray, ray.tune)``, or a UsageError that says how to install them. ``address``: the
    cluster this process will join (its authentication is settled before Ray reads it)."""
    use_token_auth(address)
    try:
        import ray
        from ray import tune
    except ImportError as exc:
        raise UsageError(
            f"--engine ray needs Ray Tune, which is not installed ({exc}); "
            "install it with: pip install 'filter-templates[ray]'"
        ) from None
    return ray, tune


# --------------------------------------------------------------------------------------------
# The trial (runs in a Ray worker, possibly on another host)
# --------------------------------------------------------------------------------------------


def _trial(params: dict[str, Any]) -> None:
    """Train one point, reporting each epoch with the run folder as the checkpoint."""
    _, tune = import_ray()  # in a Ray worker: Ray is there

    point = params["point"]
    run_dir = Path(point["run_dir"])
    procs, cpus = int(point.get("procs", 1)), max(1, int(point["cpus"]))
    restored = tune.get_checkpoint()
    if restored is not None:  # a retry after a failure, maybe on another host
        with restored.as_directory() as d:
            if (Path(d) / CHECKPOINT).exists():
                copy_run_files(Path(d), run_dir)
    config = TrainConfig.from_dict(point["config"])
    resume = (run_dir / CHECKPOINT).exists()

    def on_epoch(row: dict) -> None:
        tune.report({**row, "final": False}, checkpoint=tune.Checkpoint.from_directory(str(run_dir)))

    if procs > 1:  # one run on several processes of this node, the trial's CPUs split between them
        threads = max(1, cpus // procs)
        source = f"--cpus-per-trial ({cpus} CPUs, {procs} processes)"
        outcome: Mapping[str, Any] = train_on_processes(
            config, run_dir, procs, threads, on_epoch, resume=resume, threads_source=source
        )
    else:
        threads, threads_source = threads_for(torch.device("cpu"), cores=cpus)
        torch.set_num_threads(threads)
        outcome = run_config(
            config, run_dir, resume=resume, progress=False, on_epoch=on_epoch, threads_source=threads_source
        )
    summary = complete_resources(config, outcome, run_dir)  # measured here, on the trial's device
    tune.report(
        {"final": True, "status": summary["status"], "summary": json.dumps(summary, default=str)},
        checkpoint=tune.Checkpoint.from_directory(str(run_dir)),
    )


# --------------------------------------------------------------------------------------------
# The driver
# --------------------------------------------------------------------------------------------


def run_ray(
    configs: Sequence["TrainConfig"],
    db: str | os.PathLike[str],
    runs_dir: str | os.PathLike[str],
    options: EngineOptions = EngineOptions(engine="ray"),
    *,
    budget_points: Sequence["BudgetPoint"] = (),
    progress: bool | None = None,
) -> SweepResult:
    """Run every claimable point of ``configs`` as a Ray Tune trial; return what happened.

    ``options.address``: join that Ray cluster (``auto``, ``ray://host:10001``, ...); None starts a
    local Ray. ``options.storage``: where Tune keeps trial checkpoints (a shared path or URI on a
    cluster); default ``<runs_dir>/_ray``. ``cpus_per_trial``, ``gpus_per_trial``,
    ``procs_per_trial`` (a trial's run on several processes: ``sweep.ray_ranks``), ``max_failures``
    and ``retry_failed`` as their flags say.
    """
    options.validate_ray()
    address = options.address
    ray, tune = import_ray(address)
    for name, value in _QUIET.items():  # the sweep draws its own progress; Tune's tables would drown it
        os.environ.setdefault(name, value)
    t0 = time.perf_counter()
    runs = Path(runs_dir).resolve()
    storage = options.storage or str(runs / "_ray")
    with Store(db) as store:
        points, result = prepare(store, configs, runs, retry_failed=options.retry_failed, budget_points=budget_points)
        result.engine = "ray"
        by_key = {p.key: p for p in points}
        claims = store.claim_many(
            list(by_key),
            owner=owner_id(),
            stale_after=DEFAULT_STALE_AFTER,
            config_json={p.key: p.config_json for p in points},
        )
        tokens = {c["key"]: c["claim_token"] for c in claims}
        bar = Progress(total=len(points), desc="sweep", enabled=progress)
        bar.n = result.skipped
        todo: list[Point] = []
        for c in claims:  # finished on disk but never recorded (the last driver died): record, don't rerun
            p = by_key[c["key"]]
            s = finished_on_disk(p)
            if s is not None:
                s = complete_resources(p.config, s, p.run_dir)  # as the local engine does
                store.finish(p.key, tokens[p.key], s, epochs=read_metrics(p.run_dir), run_dir=str(p.run_dir))
                result.done += 1
                bar.update()
            else:
                todo.append(p)
        started_ray = False
        try:
            if todo:
                with (
                    Heartbeats(store.path, {p.key: tokens[p.key] for p in todo}, HEARTBEAT_EVERY) as beats,
                    contextlib.redirect_stdout(sys.stderr),
                ):  # keep stdout for the summary / --json
                    if not ray.is_initialized():
                        _init_ray(ray, address)
                        started_ray = True
                    if not address:  # a local Ray cannot grow: a trial that can never fit would wait forever
                        _check_fits(ray.cluster_resources(), options)
                    callback = _store_callback()(store, by_key, tokens, beats, result, bar)
                    _fit(tune, todo, storage, options, callback)
        finally:
            # Anything not recorded (Ctrl-C, a Tune crash) goes back to pending: the next sweep
            # resumes it from its run folder.
            for p in todo:
                row = store.get(p.key)
                if row is not None and row["status"] == RUNNING:
                    store.release(p.key, tokens[p.key], "the Ray sweep stopped before this run ended")
            if started_ray:
                ray.shutdown()
            bar.close()
            result.wall_s = time.perf_counter() - t0
        counts = store.counts(list(by_key))
        result.elsewhere = counts[RUNNING] + counts[PENDING]
    return result


def _check_fits(have: dict[str, float], options: EngineOptions) -> None:
    for what, need, flag in (
        ("CPU", options.cpus, "--cpus-per-trial"),
        ("GPU", options.gpus_per_trial, "--gpus-per-trial"),
    ):
        if need > have.get(what, 0.0):
            raise UsageError(
                f"{flag} {need:g} asks for more than this machine's {have.get(what, 0.0):g} {what}s; "
                f"lower it (or join a cluster with --address)"
            )


def _init_ray(ray: Any, address: str | None) -> None:
    kwargs: dict[str, Any] = dict(log_to_driver=False, logging_level=logging.ERROR, include_dashboard=False)
    try:
        if address:
            ray.init(address=address, **kwargs)
        else:  # a local Ray with this machine's CPUs and GPUs (never the removed local_mode)
            ray.init(**kwargs)
    except Exception as exc:  # unreachable cluster, bad address, a token missing: the user's to fix
        where = f"Ray cluster at {address!r}" if address else "a local Ray"
        hint = ""
        if address and os.environ.get("RAY_AUTH_MODE", "").lower() != "token":
            hint = (
                "; a cluster started with `ray start --head` by Ray >= 2.59 uses token authentication: "
                "set RAY_AUTH_MODE=token, with the cluster's token in ~/.ray/auth_token or RAY_AUTH_TOKEN"
            )
        raise UsageError(
            f"cannot start or join {where}: {type(exc).__name__}: {' '.join(str(exc).split())}{hint}"
        ) from None


def use_token_auth(address: str | None) -> bool:
    """Joining a cluster: Ray >= 2.59's ``ray start --head`` turns token authentication on when a
    token exists (``~/.ray/auth_token``, or ``RAY_AUTH_TOKEN``/``RAY_AUTH_TOKEN_PATH``), but a
    client whose ``RAY_AUTH_MODE`` is unset sends no token and fails with "Authentication token is
    missing or incorrect". When a token is at hand and the user chose no mode, use token mode for
    this process, as Ray's own ``ray.init()`` does for a cluster it starts. Ray reads the mode when
    it is imported, so this runs before the import (and refreshes Ray's settings if another part of
    the process imported it first). Returns whether token mode was switched on here."""
    have_token = (
        bool(os.environ.get("RAY_AUTH_TOKEN") or os.environ.get("RAY_AUTH_TOKEN_PATH")) or RAY_TOKEN_FILE.is_file()
    )
    if not address or "RAY_AUTH_MODE" in os.environ or not have_token:
        return False
    os.environ["RAY_AUTH_MODE"] = "token"
    if "ray._raylet" in sys.modules:  # imported already: its cached settings still say "no token"
        sys.modules["ray._raylet"].Config.initialize("")
    return True


def _trial_name(trial: Any) -> str:
    return str(trial.config["point"]["name"])


def _store_callback() -> Any:
    """The Tune callback class that records trials (``ray_callback.StoreCallback``). It subclasses
    Ray's ``Callback``, so its module imports Ray: it is imported by name, after :func:`import_ray`
    has found Ray."""
    return importlib.import_module(f"{__package__}.ray_callback").StoreCallback


def _fit(tune: Any, todo: list[Point], storage: str, options: EngineOptions, callback: Any) -> None:
    cpus, gpus = options.cpus, options.gpus_per_trial

    def absolute(cfg: dict[str, Any]) -> dict[str, Any]:
        cfg = dict(cfg)  # trials run with the trial folder as cwd: relative data paths would break
        if cfg.get("data_dir"):
            cfg["data_dir"] = str(Path(cfg["data_dir"]).resolve())
        return cfg

    space = [
        {
            "key": p.key,
            "name": p.name,
            "run_dir": str(p.run_dir),
            "config": absolute(p.config.to_dict()),
            "cpus": cpus,
            "procs": options.procs,
        }
        for p in todo
    ]
    trainable = tune.with_resources(_trial, {"cpu": cpus, "gpu": gpus})
    tuner = tune.Tuner(
        trainable,
        param_space={"point": tune.grid_search(space)},
        tune_config=tune.TuneConfig(
            num_samples=1, reuse_actors=False, trial_name_creator=_trial_name, trial_dirname_creator=_trial_name
        ),
        run_config=tune.RunConfig(
            name=f"sweep-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}",
            storage_path=storage,
            failure_config=tune.FailureConfig(max_failures=options.max_failures),
            checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
            callbacks=[callback],
            verbose=0,
        ),
    )
    tuner.fit()
