"""The local engine: claim a point, train it here, record it, repeat until nothing is claimable.

Several local sweeps may share one results file (one per GPU, say): each claims points with a
``BEGIN IMMEDIATE`` transaction, so no point runs twice. A background thread keeps the claim's
heartbeat fresh while a run trains, so other hosts can tell a slow run from a dead one. A point
whose previous owner died resumes from its checkpoint. A run that fails (loss NaN, an exception)
is recorded failed with its reason and the sweep goes on; Ctrl-C hands the current claim back.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import torch

from filter_templates.core.device import resolve_device
from filter_templates.core.messages import note as _log
from filter_templates.core.progress import Progress
from filter_templates.core.rundir import CHECKPOINT, read_metrics
from filter_templates.core.status import DONE, FAILED, PAUSED, PENDING, RUNNING
from filter_templates.run import run_config
from filter_templates.sweep.options import EngineOptions
from filter_templates.sweep.plan import (
    Point,
    SweepResult,
    complete_resources,
    failure_reason,
    finished_on_disk,
    prepare,
)
from filter_templates.sweep.store import DEFAULT_STALE_AFTER, HEARTBEAT_EVERY, Heartbeats, Store, owner_id
from filter_templates.training.autotune import threads_for
from filter_templates.training.config import TrainConfig

if TYPE_CHECKING:
    from filter_templates.sweep.grid import BudgetPoint

__all__ = ["run_local", "HEARTBEAT_EVERY"]


class _ClaimLost(Exception):
    """Another sweep took this point over (our heartbeat went stale): stop, leave it to them."""


def train_point(
    store: Store,
    point: Point,
    token: str,
    *,
    progress: bool | None = None,
    heartbeat_every: float = HEARTBEAT_EVERY,
    threads_source: str | None = None,
) -> dict:
    """Train (or resume, or just record) one claimed point; returns the summary it recorded.
    ``threads_source``: how the engine set torch's thread count (recorded in the summary)."""
    on_disk = finished_on_disk(point)
    if on_disk is not None:
        on_disk = complete_resources(point.config, on_disk, point.run_dir)
        store.finish(point.key, token, on_disk, epochs=read_metrics(point.run_dir), run_dir=str(point.run_dir))
        return on_disk

    def on_epoch(row: dict) -> None:
        if not store.record_epoch(point.key, token, row):
            raise _ClaimLost(point.key)

    resume = (point.run_dir / CHECKPOINT).exists()
    with Heartbeats(store.path, {point.key: token}, heartbeat_every):
        try:
            outcome = run_config(
                point.config,
                point.run_dir,
                resume=resume,
                progress=progress,
                on_epoch=on_epoch,
                threads_source=threads_source,
            )
            summary = complete_resources(point.config, outcome, point.run_dir)
        except (KeyboardInterrupt, _ClaimLost):
            raise
        except Exception as exc:  # a broken run is a result (failed, with why), not the end of the sweep
            summary = {"status": FAILED, "reason": failure_reason(exc)}
    store.finish(point.key, token, summary, epochs=read_metrics(point.run_dir), run_dir=str(point.run_dir))
    return summary


def run_local(
    configs: Sequence["TrainConfig"],
    db: str | os.PathLike[str],
    runs_dir: str | os.PathLike[str],
    options: EngineOptions = EngineOptions(),
    *,
    budget_points: Sequence["BudgetPoint"] = (),
    progress: bool | None = None,
) -> SweepResult:
    """Run every point of ``configs`` that is not done yet on this machine.

    ``options.jobs``: how many runs train at once, each in its own process (this one and ``jobs - 1``
    worker processes claiming from the same store); ``options.threads``, ``options.threads_source``:
    see :func:`_threads`; ``options.retry_failed``: train failed points again.
    """
    t0 = time.perf_counter()
    owner = owner_id()
    before = torch.get_num_threads()
    jobs = options.jobs or 1
    threads, threads_source = _threads(configs, jobs, options.threads, options.threads_source)
    workers: list[tuple[subprocess.Popen, Path]] = []
    with Store(db) as store:
        points, result = prepare(
            store, configs, runs_dir, retry_failed=options.retry_failed, budget_points=budget_points
        )
        result.engine = "local"
        by_key = {p.key: p for p in points}
        keys = list(by_key)
        config_json = {p.key: p.config_json for p in points}
        bar = Progress(total=len(points), desc="sweep", enabled=progress)
        bar.n = result.skipped
        todo = _claimable(store, keys, config_json)
        try:
            if jobs > 1 and todo > 1:
                workers = _spawn_workers(min(jobs, todo) - 1, points, store.path, runs_dir, (threads, threads_source))
            while True:
                claim = store.claim(keys, owner=owner, stale_after=DEFAULT_STALE_AFTER, config_json=config_json)
                if claim is None:
                    break
                point = by_key[claim["key"]]
                bar.set(run=point.name)
                summary = _train_claimed(store, point, claim, result, threads, threads_source, progress)
                if summary is None:
                    continue
                _count(result, point, summary)
                if workers:  # the others' runs count too
                    _sync_bar(bar, store, keys)
                bar.update()
            for proc, out in workers:  # wait for the workers' last runs
                proc.wait()
                _merge(result, out)
                if workers:
                    _sync_bar(bar, store, keys)
                    bar.update()
        except KeyboardInterrupt:
            result.interrupted = True
            _stop_workers(workers)
            raise
        finally:
            bar.close()
            torch.set_num_threads(before)
            for _, out in workers:
                out.unlink(missing_ok=True)
            result.wall_s = time.perf_counter() - t0
        counts = store.counts(keys)
        result.elsewhere = counts[RUNNING] + counts[PENDING]
    return result


def _claimable(store: Store, keys: list[str], config_json: dict[str, str]) -> int:
    """How many of ``keys`` a claim could take now (decides how many workers are worth starting)."""
    return sum(
        1
        for r in store.rows(keys)
        if store.claimable(r, stale_after=DEFAULT_STALE_AFTER, config_json=config_json[r["key"]])
    )


def _train_claimed(
    store: Store,
    point: Point,
    claim: dict,
    result: SweepResult,
    threads: int,
    threads_source: str,
    progress: bool | None,
) -> dict | None:
    """Train the claimed ``point``; None if another sweep took it over. On Ctrl-C, hand the claim back."""
    if claim["reclaimed"]:
        _log(f"{point.name}: taking over from {claim['previous_owner']}, which stopped; resuming from its checkpoint")
    torch.set_num_threads(threads)  # a resumed run before this one kept its own
    try:
        return train_point(store, point, claim["claim_token"], progress=progress, threads_source=threads_source)
    except _ClaimLost:
        _log(f"{point.name}: another sweep took this point over; leaving it to that sweep")
        return None
    except KeyboardInterrupt:
        store.release(point.key, claim["claim_token"], "interrupted")
        result.interrupted = True
        raise


def _sync_bar(bar: Progress, store: Store, keys: list[str]) -> None:
    """Set the bar to the store's finished count, the workers' runs included (less one: the caller updates)."""
    c = store.counts(keys)
    bar.n = c[DONE] + c[FAILED] - 1


def _stop_workers(workers: list[tuple[subprocess.Popen, Path]]) -> None:
    """Wait for the workers, which got the same Ctrl-C and hand their runs back; kill any that hang."""
    for proc, _ in workers:
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()


def _threads(configs: Sequence["TrainConfig"], jobs: int, threads: int | None, source: str | None) -> tuple[int, str]:
    """The thread count of every run of this engine and what chose it: the caller's, else
    :func:`autotune.threads_for`'s share of the cores among ``jobs`` runs (not among the runs
    left to do: a resumed sweep must give its runs the counts the first one did)."""
    if threads:
        return threads, source or "--threads"
    return threads_for(resolve_device(configs[0].device if configs else "cpu"), jobs)


def _count(result: SweepResult, point: Point, summary: dict) -> None:
    if summary.get("status") == PAUSED:
        result.paused += 1
        _log(f"paused {point.name} after epoch {summary.get('stopped_at')}")
    elif summary.get("status") == DONE:
        result.done += 1
        _log(f"done   {point.name}: final acc {_pct(summary.get('final_acc'))}, best {_pct(summary.get('best_acc'))}")
    else:
        result.failed += 1
        result.failures.append({"run": point.name, "reason": str(summary.get("reason"))})
        _log(f"FAILED {point.name}: {summary.get('reason')}")


def _spawn_workers(
    n: int, points: Sequence[Point], db: Path, runs_dir: str | os.PathLike[str], threads: tuple[int, str]
) -> list[tuple[subprocess.Popen, Path]]:
    """``n`` more sweep processes on the same store and grid (``python -m filter_templates.sweep.local``).
    The grid travels as a JSON file; each worker writes its SweepResult to a JSON file."""
    out = []
    tag = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
    job_file = Path(runs_dir).resolve() / f".sweep-{tag}.json"
    job_file.parent.mkdir(parents=True, exist_ok=True)
    job_file.write_text(
        json.dumps(
            {
                "db": str(Path(db).resolve()),
                "runs_dir": str(Path(runs_dir).resolve()),
                "threads": threads[0],
                "threads_source": threads[1],
                "configs": [p.config.to_dict() for p in points],
            }
        )
    )
    try:
        for i in range(n):
            result_file = job_file.with_name(f".sweep-{tag}-result{i}.json")
            proc = subprocess.Popen(
                [sys.executable, "-m", __name__, str(job_file), str(result_file)], stdin=subprocess.DEVNULL
            )
            out.append((proc, result_file))
        # give the workers a moment to read the job before it goes
        deadline = time.time() + 120
        while time.time() < deadline and any(
            p.poll() is None and not r.with_suffix(".started").exists() for p, r in out
        ):
            time.sleep(0.05)
    finally:
        job_file.unlink(missing_ok=True)
        for _, r in out:
            r.with_suffix(".started").unlink(missing_ok=True)
    return out


def _merge(result: SweepResult, out: Path) -> None:
    try:
        d = json.loads(out.read_text())
    except (OSError, ValueError):
        return
    result.done += int(d.get(DONE, 0))
    result.paused += int(d.get(PAUSED, 0))
    result.failed += int(d.get(FAILED, 0))
    result.failures += list(d.get("failures", []))


def _worker_main(argv: Sequence[str]) -> int:
    """A worker of ``run_local(jobs=N)``: claim and train until nothing is left, then report."""
    job_file, result_file = Path(argv[0]), Path(argv[1])
    job = json.loads(job_file.read_text())
    result_file.with_suffix(".started").touch()
    configs = [TrainConfig.from_dict(c) for c in job["configs"]]
    try:
        options = EngineOptions(threads=job["threads"], threads_source=job.get("threads_source"))
        result = run_local(configs, job["db"], job["runs_dir"], options, progress=False)
    except KeyboardInterrupt:
        return 130
    result_file.write_text(json.dumps(result.to_dict()))
    return 0


def _pct(x: object) -> str:
    return f"{100 * x:.2f}%" if isinstance(x, (int, float)) else "-"


if __name__ == "__main__":  # a worker process of run_local(jobs=N)
    sys.exit(_worker_main(sys.argv[1:]))
