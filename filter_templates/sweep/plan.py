"""What both engines share: grid points with their keys and run folders, and the end-of-sweep count."""

from __future__ import annotations

import os
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Sequence

import torch

from filter_templates.core.load import Load, OthersMeter, load_average, usable_cores
from filter_templates.core.rundir import CONFIG, read_metrics, read_summary, write_resources
from filter_templates.core.status import DONE, FAILED, PAUSED
from filter_templates.method.measure import input_shape_of, latency, resources
from filter_templates.sweep.grid import run_dir_name
from filter_templates.sweep.store import Store, canonical_json, point_key
from filter_templates.training.config import TrainConfig

if TYPE_CHECKING:
    from filter_templates.sweep.grid import BudgetPoint

__all__ = [
    "Point",
    "SweepResult",
    "prepare",
    "finished_on_disk",
    "reindex",
    "complete_resources",
    "failure_reason",
    "read_summary",
    "read_metrics",
]


@dataclass
class Point:
    """One grid point: its configuration, its key in the store and the folder it trains in."""

    config: "TrainConfig"
    key: str
    run_dir: Path

    @property
    def name(self) -> str:
        return self.run_dir.name

    @property
    def config_json(self) -> str:
        return canonical_json(self.config.to_dict())


@dataclass
class SweepResult:
    """What one sweep did, for the one-line summary and ``--json``."""

    db: str
    runs_dir: str
    engine: str
    points: int
    done: int = 0  # ran to the end in this sweep
    failed: int = 0  # ran and failed in this sweep
    paused: int = 0  # ran to its stop_at epoch in this sweep (not done: running it further continues it)
    skipped_done: int = 0  # already done before
    skipped_failed: int = 0  # failed before, not retried (no --retry-failed)
    elsewhere: int = 0  # held by another live sweep process
    interrupted: bool = False
    failures: list[dict[str, str]] = field(default_factory=list)
    unreachable: list[dict[str, str]] = field(default_factory=list)  # budget points with nothing to train
    wall_s: float = 0.0

    @property
    def skipped(self) -> int:
        return self.skipped_done + self.skipped_failed

    def line(self) -> str:
        parts = [
            f"{self.done} done",
            *([f"{self.paused} paused"] if self.paused else []),
            f"{self.failed} failed",
            f"{self.skipped} skipped",
        ]
        why = []
        if self.skipped_done:
            why.append(f"{self.skipped_done} already done")
        if self.skipped_failed:
            why.append(f"{self.skipped_failed} failed earlier: --retry-failed reruns them")
        if why:
            parts[-1] += f" ({', '.join(why)})"
        if self.elsewhere:
            parts.append(f"{self.elsewhere} running in another sweep")
        if self.unreachable:
            parts.append(
                f"{len(self.unreachable)} budget point{'' if len(self.unreachable) == 1 else 's'} "
                "unreachable (not trained; reasons above and in the store)"
            )
        head = "sweep interrupted" if self.interrupted else "sweep finished"
        return (
            f"{head}: {self.points} point{'' if self.points == 1 else 's'}, {', '.join(parts)} in {self.wall_s:.0f} s; "
            f"results in {self.db}, runs in {self.runs_dir}"
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "db": self.db,
            "runs_dir": self.runs_dir,
            "engine": self.engine,
            "points": self.points,
            "done": self.done,
            "paused": self.paused,
            "failed": self.failed,
            "skipped": self.skipped,
            "skipped_done": self.skipped_done,
            "skipped_failed": self.skipped_failed,
            "running_elsewhere": self.elsewhere,
            "interrupted": self.interrupted,
            "failures": self.failures,
            "unreachable": self.unreachable,
            "wall_s": round(self.wall_s, 3),
        }


def prepare(
    store: Store,
    configs: Sequence["TrainConfig"],
    runs_dir: str | os.PathLike[str],
    *,
    retry_failed: bool = False,
    budget_points: Sequence["BudgetPoint"] = (),
) -> tuple[list[Point], SweepResult]:
    """Key every configuration, add the new ones to the store as pending and (``retry_failed``)
    put failed ones back to pending; record the ``budget_points`` of a budget sweep (unreachable
    ones with their reason). Returns the points in grid order and a result whose ``skipped_*``
    counts and ``unreachable`` list say what this sweep will not run."""
    runs = Path(runs_dir).resolve()
    points: list[Point] = []
    seen: set[str] = set()
    for cfg in configs:
        d = cfg.to_dict()
        key, _ = point_key(d)
        if key in seen:
            continue
        seen.add(key)
        points.append(Point(cfg, key, runs / run_dir_name(d, key)))
    store.add_points((p.config.to_dict(), str(p.run_dir)) for p in points)
    store.add_budget_points(bp.record() for bp in budget_points)  # after the runs they point to
    keys = [p.key for p in points]
    if retry_failed:
        store.reset_failed(keys)
    counts = store.counts(keys)
    result = SweepResult(
        db=str(store.path.resolve()),
        runs_dir=str(runs),
        engine="",
        points=len(points),
        skipped_done=counts[DONE],
        skipped_failed=counts[FAILED],
        unreachable=[{"point": bp.label(), "reason": str(bp.reason)} for bp in budget_points if bp.config is None],
    )
    return points, result


def complete_resources(config: "TrainConfig", summary: Mapping[str, Any], run_dir: Path) -> dict[str, Any]:
    """Measure what a done run's summary lacks of the resources (training memory, latency at the
    run's batch size and at 1) on the device it trained on, and keep it beside the summary (which
    stays train's own: :func:`rundir.write_resources`). Returns the summary with them merged."""
    res = dict(summary.get("resources") or {})
    need_memory = "train_memory_bytes" not in res
    need_latency = "latency_s" not in res
    if summary.get("status") != DONE or not (need_memory or need_latency):
        return summary  # type: ignore[return-value]  # the caller's own summary, unchanged
    device = str(summary.get("device") or "cpu")
    extra = resources(config.arch, config.batch_size, device, memory=need_memory, latency=False)
    extra = {k: v for k, v in extra.items() if k not in res}
    if need_latency:
        with torch.device(device):
            model = config.arch.build()
        before, others = load_average(), OthersMeter()  # a latency is only as good as the machine was idle
        lat = {
            f"batch{b}": latency(model, b, device, input_shape=input_shape_of(config.arch))
            for b in dict.fromkeys((config.batch_size, 1))
        }
        extra["load"] = Load(before, others.cores(), usable_cores()).to_dict()
        extra["latency_s"] = {k: v["median_s"] for k, v in lat.items()}
        extra["latency_iqr_s"] = {k: v["iqr_s"] for k, v in lat.items()}
        extra["batch_size"] = config.batch_size
        extra["threads"] = torch.get_num_threads()
    write_resources(run_dir, extra)
    return {**summary, "resources": {**extra, **res}}


def finished_on_disk(point: Point) -> dict[str, Any] | None:
    """The summary of a run that finished (or paused where ``point`` would stop it) but whose row
    was never updated (the sweep was killed between the two writes): recording it beats training
    it again."""
    s = read_summary(point.run_dir)
    if not s or not isinstance(s.get("config"), dict):
        return None
    stop = point.config.stop_at
    paused = s.get("status") == PAUSED and stop is not None and int(s.get("stopped_at") or 0) >= stop
    if s.get("status") != DONE and not paused:
        return None
    if point_key(s["config"])[0] != point.key:
        return None
    return s


def reindex(store: Store, runs_dir: str | os.PathLike[str]) -> int:
    """``sweep --reindex``: rebuild rows from every run folder under ``runs_dir``."""
    n = 0
    root = Path(runs_dir)
    if not root.is_dir():
        return 0
    for cfg in sorted(root.glob(f"*/{CONFIG}")):
        if store.reindex_run(cfg.parent) is not None:
            n += 1
    return n


def failure_reason(exc: BaseException) -> str:
    """A failed run's reason: one line that says what went wrong and where (the last frame of the traceback)."""
    tb = traceback.extract_tb(exc.__traceback__)
    where = f" (at {Path(tb[-1].filename).name}:{tb[-1].lineno})" if tb else ""
    msg = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {msg}{where}"[:2000]
