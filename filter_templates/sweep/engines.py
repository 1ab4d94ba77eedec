"""Run a planned grid with the engine asked for: the one entry point that `sweep` and `reduce` share,
so both check devices, cap the local jobs and report unreachable budget points the same way."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..errors import UsageError
from ..messages import note

if TYPE_CHECKING:
    from .grid import Grid
    from .plan import SweepResult

__all__ = ["ENGINES", "EngineOptions", "run_grid"]

ENGINES = ("local", "ray")


@dataclass
class EngineOptions:
    """How to run a grid. ``jobs``/``threads``: local only (None: 1 job, torch's threads); the rest:
    Ray only (see ``run_ray``)."""

    engine: str = "local"
    jobs: int | None = None
    threads: int | None = None
    address: str | None = None
    cpus_per_trial: float = 1.0
    gpus_per_trial: float = 0.0
    max_failures: int = 2
    storage: str | None = None
    retry_failed: bool = False


def run_grid(grid: "Grid", db: str | os.PathLike[str], runs_dir: str | os.PathLike[str], options: EngineOptions,
             *, progress: bool | None = None) -> "SweepResult":
    """Train every point of ``grid`` that is not done yet into store ``db`` and folder ``runs_dir``;
    unreachable budget points are recorded (with their reason, also said on stderr) and skipped."""
    if options.engine not in ENGINES:
        raise UsageError(f"unknown engine {options.engine!r}; choose from {', '.join(ENGINES)}")
    for p in grid.unreachable:
        note(f"skipped {p.label()}: {p.reason}")
    if options.engine == "ray":
        from .ray_engine import run_ray

        return run_ray(grid.configs, db, runs_dir, address=options.address, cpus_per_trial=options.cpus_per_trial,
                       gpus_per_trial=options.gpus_per_trial, max_failures=options.max_failures,
                       storage=options.storage, retry_failed=options.retry_failed,
                       budget_points=grid.budget_points, progress=progress)
    from ..device import resolve_device
    from .local import run_local

    for device in {c.device for c in grid.configs}:
        resolve_device(device)  # asking for CUDA where there is none fails now, not per run
    jobs = max(1, min(options.jobs or 1, os.cpu_count() or 1))
    return run_local(grid.configs, db, runs_dir, retry_failed=options.retry_failed, jobs=jobs,
                     threads=options.threads, budget_points=grid.budget_points, progress=progress)
