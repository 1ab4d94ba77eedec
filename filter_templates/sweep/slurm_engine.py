"""The Slurm engine: every grid point one Slurm job, submitted through submitit (one job array for
the points a sweep submits together).

Jobs run on the cluster's nodes and only write their run folders (``slurm_job``); this process,
the driver, is the only writer of the SQLite store. It claims the points it will run (so other
sweeps on the file leave them alone), submits what has no job yet, then asks Slurm about its
jobs every few seconds: while a job runs it copies the epochs the run folder gains into the
store; when a job has left the queue it records the run from its folder (done, or failed with
the reason: the run's own, the job's traceback, or what Slurm ended it with).

Which job trains which point is kept in ``jobs.json`` in the Slurm folder (``slurm_queue``), so
a driver killed at any point and started again re-attaches to its queued and running jobs,
records the finished ones and submits only what is missing. A job that Slurm stops at its time
limit or preempts checkpoints and requeues itself, and resumes from its last epoch; one that is
cancelled is recorded failed, and ``--retry-failed`` resumes it from that same checkpoint.

submitit is an optional extra (``pip install 'filter-templates[slurm]'``), imported only through
``slurm_job.import_submitit``.
"""

from __future__ import annotations

import contextlib
import io
import os
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from filter_templates.core.errors import UsageError
from filter_templates.core.messages import note, warn
from filter_templates.core.progress import Progress
from filter_templates.core.rundir import check_writable, read_metrics, read_summary
from filter_templates.core.status import DONE, FAILED, PAUSED, PENDING, RUN_STATUSES, RUNNING
from filter_templates.sweep.options import EngineOptions, SlurmOptions
from filter_templates.sweep.plan import Point, SweepResult, finished_on_disk, prepare
from filter_templates.sweep.slurm_job import TrainJob, import_submitit
from filter_templates.sweep.slurm_queue import (
    LIVE_STATES,
    Cluster,
    JobBook,
    inspect_cluster,
    job_states,
    jobs_named,
)
from filter_templates.sweep.store import DEFAULT_STALE_AFTER, HEARTBEAT_EVERY, Heartbeats, Store, owner_id
from filter_templates.training.config import TrainConfig

if TYPE_CHECKING:
    from filter_templates.sweep.grid import BudgetPoint

__all__ = ["run_slurm", "default_folder", "check_shared"]

#: How long a job that left the queue may take to show its files (a network file system's cache).
GRACE_S = 60.0
#: States a job may leave again (requeued), or that a slow file system makes look final too early.
_MAY_RETURN = {None, "COMPLETED", "PREEMPTED", "NODE_FAIL"}
#: Questions in a row Slurm may leave unanswered before the driver stops (its jobs go on).
_PATIENCE = 12
#: Pending reasons that will not resolve by waiting: said once, on stderr.
_STUCK = {
    "PartitionTimeLimit",
    "PartitionNodeLimit",
    "PartitionDown",
    "ReqNodeNotAvail",
    "BadConstraints",
    "InvalidAccount",
    "InvalidQOS",
    "QOSMaxWallDurationPerJobLimit",
    "AssocMaxWallDurationPerJobLimit",
    "JobHeldAdmin",
    "JobHeldUser",
    "Dependency",
    "DependencyNeverSatisfied",
}
_ENDED = {
    "CANCELLED": "cancelled: scancel, or an administrator",
    "TIMEOUT": "its --time ran out",
    "OUT_OF_MEMORY": "out of memory: raise --mem",
    "NODE_FAIL": "its node failed",
    "PREEMPTED": "preempted",
    "FAILED": "the job's command failed",
    "BOOT_FAIL": "its node did not boot",
    "DEADLINE": "its deadline passed",
}


@dataclass
class _Sweep:
    """What one driver works with while it follows its jobs."""

    store: Store
    book: JobBook
    folder: Path
    by_key: dict[str, Point]
    tokens: dict[str, str]
    result: SweepResult
    bar: Any
    options: "SlurmOptions"
    beats: Any = None
    active: dict[str, dict[str, Any]] = field(default_factory=dict)  # key -> its job (as in jobs.json)
    epochs: dict[str, int] = field(default_factory=dict)  # key -> last epoch copied into the store
    grace: dict[str, float] = field(default_factory=dict)  # key -> when a silent ended job counts as lost
    said: set[str] = field(default_factory=set)
    failed_asks: int = 0  # questions to Slurm in a row that got no answer


def default_folder(db: str | os.PathLike[str]) -> Path:
    """``--slurm-dir`` by default: beside the store, named after it (``results.sqlite`` -> ``results.slurm``)."""
    p = Path(db).resolve()
    return p.with_name(f"{p.stem}.slurm")


def _temporary_roots() -> list[Path]:
    roots = {tempfile.gettempdir(), "/tmp", "/var/tmp", "/dev/shm"}
    return sorted({Path(os.path.realpath(r)) for r in roots if os.path.isdir(r)})


def check_shared(cluster: Cluster, paths: dict[str, Path]) -> None:
    """Refuse paths the nodes cannot reach: under this machine's temporary folders, which every
    node has its own of. A cluster whose only node is this machine shares them."""
    if cluster.only_this_host:
        return
    for flag, path in paths.items():
        real = Path(os.path.realpath(path))
        for root in _temporary_roots():
            if real == root or root in real.parents:
                raise UsageError(
                    f"{flag} {path} is under {root}, a temporary folder of this machine that the nodes "
                    f"of partition {cluster.partition} do not share; put it on a file system they "
                    "all mount (a home or project folder)"
                )


def _shared_paths(runs: Path, folder: Path, configs: Sequence["TrainConfig"]) -> dict[str, Path]:
    paths = {"--runs-dir": runs, "--slurm-dir": folder, "the Python that runs the jobs,": Path(sys.prefix)}
    for c in configs:
        if c.data_dir:
            paths["--data-dir"] = Path(c.data_dir).resolve()
    return paths


def run_slurm(
    configs: Sequence["TrainConfig"],
    db: str | os.PathLike[str],
    runs_dir: str | os.PathLike[str],
    engine: EngineOptions,
    *,
    budget_points: Sequence["BudgetPoint"] = (),
    progress: bool | None = None,
) -> SweepResult:
    """Run every claimable point of ``configs`` as a Slurm job and follow the jobs to their end
    (``engine.slurm``: what to ask of the cluster; ``engine.retry_failed``: run failed points again)."""
    options = engine.slurm.validate()
    submitit = import_submitit()
    t0 = time.perf_counter()
    runs = Path(runs_dir).resolve()
    folder = Path(options.folder).resolve() if options.folder else default_folder(db)
    cluster = inspect_cluster(options.partition)
    check_shared(cluster, _shared_paths(runs, folder, configs))
    check_writable(folder, "--slurm-dir", folder=True)
    with Store(db) as store:
        points, result = prepare(store, configs, runs, retry_failed=engine.retry_failed, budget_points=budget_points)
        result.engine = "slurm"
        by_key = {p.key: p for p in points}
        claims = store.claim_many(
            list(by_key),
            owner=owner_id(),
            stale_after=DEFAULT_STALE_AFTER,
            config_json={p.key: p.config_json for p in points},
        )
        bar = Progress(total=len(points), desc="sweep", enabled=progress)
        bar.n = result.skipped
        sw = _Sweep(
            store, JobBook(folder), folder, by_key, {c["key"]: c["claim_token"] for c in claims}, result, bar, options
        )
        todo = [k for k in sw.tokens if not _recorded_from_disk(sw, k)]
        try:
            if todo:
                with Heartbeats(store.path, {k: sw.tokens[k] for k in todo}, HEARTBEAT_EVERY) as beats:
                    sw.beats = beats
                    _attach(sw, submitit, todo)
                    missing = [by_key[k] for k in todo if k not in sw.active]
                    if missing:
                        _submit(sw, submitit, cluster, missing)
                    _watch(sw)
        except KeyboardInterrupt:
            result.interrupted = True
            raise
        finally:
            _release(sw, todo)
            bar.close()
            result.wall_s = time.perf_counter() - t0
        counts = store.counts(list(by_key))
        result.elsewhere = counts[RUNNING] + counts[PENDING]
    return result


def _recorded_from_disk(sw: _Sweep, key: str) -> bool:
    """A run that finished but was never recorded (the last driver died first): record it now."""
    summary = finished_on_disk(sw.by_key[key])
    if summary is None:
        return False
    sw.book.drop(key)
    _record(sw, key, summary)
    return True


def _entry(submitit: Any, folder: Path, job_id: str, run_dir: Path, submitted_at: float) -> dict[str, Any]:
    paths = submitit.core.utils.JobPaths(folder / "%j", job_id=job_id, task_id=0)
    return {
        "job_id": job_id,
        "run_dir": str(run_dir),
        "submitted_at": submitted_at,
        "stdout": str(paths.stdout),
        "stderr": str(paths.stderr),
        "result": str(paths.result_pickle),
    }


def _attach(sw: _Sweep, submitit: Any, todo: list[str]) -> None:
    """Take over the jobs an earlier driver submitted for ``todo``: from the book, and from a batch
    it was submitting when it died (found by the batch's job name)."""
    for name, batch in sw.book.read()["batches"].items():
        keys = batch.get("keys", [])
        if not any(k in todo for k in keys):
            continue  # another sweep's, still submitting
        found = {}
        for job_id in jobs_named(name):
            index = int(job_id.rpartition("_")[2]) if "_" in job_id else 0
            if index < len(keys) and keys[index] in todo:
                found[keys[index]] = _entry(submitit, sw.folder, job_id, sw.by_key[keys[index]].run_dir, batch["at"])
        sw.book.record(name, found)
    jobs = sw.book.read()["jobs"]
    for key in todo:
        job = jobs.get(key)
        if job and job.get("run_dir") == str(sw.by_key[key].run_dir):
            sw.active[key] = job
    live = [j["job_id"] for j in sw.active.values()]
    states = job_states(live)
    live = [j for j in live if states.get(j, ("",))[0] in LIVE_STATES]
    if live:
        note(
            f"re-attached to {len(live)} Slurm job{'s' if len(live) > 1 else ''} still queued or running "
            f"({_ids(live)}); nothing submitted twice"
        )


def _ids(job_ids: Sequence[str]) -> str:
    return ", ".join(job_ids) if len(job_ids) <= 4 else f"{', '.join(job_ids[:3])}, ... {job_ids[-1]}"


def _executor(submitit: Any, sw: _Sweep, cluster: Cluster, name: str) -> Any:
    o = sw.options
    params: dict[str, Any] = {
        "partition": cluster.partition,
        "time": o.time,
        "cpus_per_task": o.cpus_per_task,
        "job_name": name,
    }
    if o.gpus_per_task:  # several GPUs for one run: one process, so one task, per GPU
        params["gpus_per_task"] = 1 if o.tasks_per_node is None and o.gpus_per_task > 1 else o.gpus_per_task
    if o.tasks > 1 or o.nodes > 1:  # each point one run of nodes x tasks processes (slurm_job.TrainJob)
        params["ntasks_per_node"], params["nodes"] = o.tasks, o.nodes
    if o.mem:
        params["mem"] = o.mem
    if o.array_parallelism:
        params["array_parallelism"] = o.array_parallelism
    if o.extra:
        params["additional_parameters"] = dict(o.extra)
    executor = submitit.SlurmExecutor(folder=str(sw.folder / "%j"))
    executor.update_parameters(**params)
    return executor


def _submit(sw: _Sweep, submitit: Any, cluster: Cluster, points: list[Point]) -> None:
    """Submit ``points`` as one job array; their keys are in the book before sbatch runs."""
    name = f"filter-templates-{uuid.uuid4().hex[:8]}"
    executor = _executor(submitit, sw, cluster, name)
    now = time.time()
    payloads = [
        {
            "key": p.key,
            "run_dir": str(p.run_dir),
            "config": _absolute(p.config.to_dict()),
            "threads": sw.options.cpus_per_task,
            "submitted_at": now,
        }
        for p in points
    ]
    sw.book.intend(name, [p.key for p in points], [str(p.run_dir) for p in points])
    quiet = io.StringIO()
    try:
        with contextlib.redirect_stderr(quiet):  # submitit echoes sbatch's refusal: it becomes our one line
            jobs = executor.map_array(TrainJob(), payloads)
    except Exception as exc:
        sw.book.record(name, {})
        said = " ".join(str(exc).split()) or quiet.getvalue().strip() or type(exc).__name__
        raise UsageError(f"sbatch refused the jobs: {said}") from None
    entries = {p.key: _entry(submitit, sw.folder, j.job_id, p.run_dir, now) for p, j in zip(points, jobs)}
    sw.book.record(name, entries)
    sw.active.update(entries)
    note(
        f"submitted {len(jobs)} run{'s' if len(jobs) > 1 else ''} to Slurm partition {cluster.partition} "
        f"(job{'s' if len(jobs) > 1 else ''} {_ids([j.job_id for j in jobs])}); logs in {sw.folder}"
    )


def _absolute(cfg: dict[str, Any]) -> dict[str, Any]:
    """Jobs start in sbatch's working folder, perhaps on another host: no relative data path."""
    if cfg.get("data_dir"):
        cfg = {**cfg, "data_dir": str(Path(cfg["data_dir"]).resolve())}
    return cfg


def _watch(sw: _Sweep) -> None:
    """Ask Slurm about the jobs until every one has ended and been recorded: every second at
    first, less often the longer nothing ends (at most every ``poll_s``)."""
    quiet_since = time.time()
    while sw.active:
        before = len(sw.active)
        states = _ask(sw)
        if states is None:
            time.sleep(sw.options.poll_s)
            continue
        for key in list(sw.active):
            job = sw.active[key]
            state = states.get(job["job_id"])
            if state is not None and state[0] in LIVE_STATES:
                sw.grace.pop(key, None)
                _follow(sw, key, job, state)
                continue
            summary = _outcome(sw, key, job, state)
            if summary is not None:
                _record(sw, key, summary)
        if len(sw.active) != before:
            quiet_since = time.time()
        if sw.active:
            time.sleep(min(sw.options.poll_s, 1.0 + 0.1 * (time.time() - quiet_since)))


def _ask(sw: _Sweep) -> dict[str, tuple[str, str]] | None:
    """The jobs' states, or None while the controller does not answer (a busy slurmctld times out
    now and then); after ``_PATIENCE`` failed questions in a row the driver gives up (its jobs go on)."""
    try:
        states = job_states([j["job_id"] for j in sw.active.values()])
    except UsageError as exc:
        sw.failed_asks += 1
        if sw.failed_asks >= _PATIENCE:
            raise
        if sw.failed_asks == 1:
            warn(f"{exc}; asking again")
        return None
    sw.failed_asks = 0
    return states


def _follow(sw: _Sweep, key: str, job: dict[str, Any], state: tuple[str, str]) -> None:
    """A live job: copy its new epochs into the store; say once if it waits for what will not come."""
    last = sw.epochs.get(key, 0)
    for row in read_metrics(sw.by_key[key].run_dir):
        if int(row["epoch"]) > last:
            sw.store.record_epoch(key, sw.tokens[key], row)
            last = int(row["epoch"])
    sw.epochs[key] = last
    reason = state[1]
    if state[0] == "PENDING" and reason.split(",")[0] in _STUCK and reason not in sw.said:
        sw.said.add(reason)
        warn(
            f"Slurm job {job['job_id']} is pending because of {reason}: it may never start "
            f"(`squeue -j {job['job_id']}` says more; scancel it and change the options)"
        )


def _result_pickle(job: dict[str, Any]) -> tuple[str, Any] | None:
    """What submitit left: ``("success", summary)`` or ``("error", traceback)``; None if nothing."""
    path = Path(job.get("result") or "")
    if not path.is_file():
        return None
    try:
        return import_submitit().core.utils.pickle_load(path)
    except Exception:  # a half-written or foreign file: the other evidence decides
        return None


def _outcome(sw: _Sweep, key: str, job: dict[str, Any], state: tuple[str, str] | None) -> dict[str, Any] | None:
    """The summary to record for a job that left the queue, or None to look again later."""
    point = sw.by_key[key]
    done = finished_on_disk(point)
    if done is not None:
        return done
    own = read_summary(point.run_dir)
    if own and own.get("status") == FAILED and own.get("slurm_job_id") == job["job_id"]:
        return own
    left = _result_pickle(job)
    if (
        left is not None
        and left[0] == "success"
        and isinstance(left[1], dict)
        and left[1].get("status") in RUN_STATUSES
    ):
        return left[1]
    if left is not None and left[0] == "error":
        return {
            "status": FAILED,
            "reason": f"{_last_line(left[1])} (Slurm job {job['job_id']}; log: {job.get('stderr')})",
        }
    name = state[0] if state else None
    if name in _MAY_RETURN and time.time() < sw.grace.setdefault(key, time.time() + GRACE_S):
        return None
    what = (
        f"ended {name} ({_ENDED[name]})"
        if name in _ENDED
        else f"ended {name}"
        if name
        else "is no longer known to Slurm"
    )
    return {
        "status": FAILED,
        "reason": f"Slurm job {job['job_id']} {what} before the run finished; "
        f"--retry-failed resumes it from its last checkpoint "
        f"(log: {job.get('stderr')})",
    }


def _last_line(text: Any) -> str:
    lines = [ln.strip() for ln in str(text or "").splitlines() if ln.strip()]
    for ln in reversed(lines):
        if not ln.startswith(("File ", "^", "~")) and "Traceback" not in ln:
            return ln[:2000]
    return "the job failed without an error message"


def _record(sw: _Sweep, key: str, summary: dict[str, Any]) -> None:
    """Write a finished run into the store (the book forgets its job first: a driver killed
    between the two finds the run on disk, or resubmits it, and it resumes from its checkpoint)."""
    point = sw.by_key[key]
    sw.active.pop(key, None)
    sw.grace.pop(key, None)
    sw.book.drop(key)
    recorded = sw.store.finish(
        key, sw.tokens[key], summary, epochs=read_metrics(point.run_dir) or None, run_dir=str(point.run_dir)
    )
    if sw.beats is not None:
        sw.beats.drop(key)
    if not recorded:
        note(f"{point.name}: another sweep took this point over; its result is that sweep's to record")
        return
    if summary.get("status") == PAUSED:
        sw.result.paused += 1
        note(
            f"paused {point.name} after epoch {summary.get('stopped_at')} (Slurm job {summary.get('slurm_job_id', '-')})"
        )
    elif summary.get("status") == DONE:
        sw.result.done += 1
        note(f"done   {point.name} (Slurm job {summary.get('slurm_job_id', '-')})")
    else:
        sw.result.failed += 1
        sw.result.failures.append({"run": point.name, "reason": str(summary.get("reason"))})
        note(f"FAILED {point.name}: {summary.get('reason')}")
    sw.bar.update()


def _release(sw: _Sweep, todo: list[str]) -> None:
    """The driver stops before its jobs end (Ctrl-C, an error): the jobs keep running on the cluster;
    their rows go back to pending, and the next sweep re-attaches to the jobs through the book."""
    for key in todo:
        row = sw.store.get(key)
        if row is not None and row["status"] == RUNNING and row["claim_token"] == sw.tokens[key]:
            sw.store.release(key, sw.tokens[key], "the Slurm driver stopped before this run ended")
    if sw.active:
        ids = [j["job_id"] for j in sw.active.values()]
        note(
            f"{len(ids)} Slurm job{'s' if len(ids) > 1 else ''} keep running ({_ids(ids)}): run the same command "
            "again to follow and record them (scancel stops them)"
        )
