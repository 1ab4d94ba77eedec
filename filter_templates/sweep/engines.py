"""Run a planned grid with the engine asked for: the one entry point that `sweep` and `reduce` share,
so both check devices, cap the local jobs and report unreachable budget points the same way."""

from __future__ import annotations

import dataclasses
import os
from typing import TYPE_CHECKING

from filter_templates.core.device import resolve_device
from filter_templates.core.errors import UsageError
from filter_templates.core.messages import note
from filter_templates.sweep.local import run_local
from filter_templates.sweep.options import ENGINES, EngineOptions, SlurmOptions
from filter_templates.sweep.ray_engine import run_ray
from filter_templates.sweep.slurm_engine import run_slurm

if TYPE_CHECKING:
    from filter_templates.sweep.grid import Grid
    from filter_templates.sweep.plan import SweepResult

__all__ = ["ENGINES", "EngineOptions", "SlurmOptions", "run_grid", "local_defaults"]


def run_grid(
    grid: "Grid",
    db: str | os.PathLike[str],
    runs_dir: str | os.PathLike[str],
    options: EngineOptions,
    *,
    progress: bool | None = None,
) -> "SweepResult":
    """Train every point of ``grid`` that is not done yet into store ``db`` and folder ``runs_dir``;
    unreachable budget points are recorded (with their reason, also said on stderr) and skipped."""
    if options.engine not in ENGINES:
        raise UsageError(f"unknown engine {options.engine!r}; choose from {', '.join(ENGINES)}")
    for p in grid.unreachable:
        note(f"skipped {p.label()}: {p.reason}")
    if options.engine == "ray":
        return run_ray(grid.configs, db, runs_dir, options, budget_points=grid.budget_points, progress=progress)
    if options.engine == "slurm":  # devices are the nodes' to resolve, not this machine's
        return run_slurm(grid.configs, db, runs_dir, options, budget_points=grid.budget_points, progress=progress)
    for device in {c.device for c in grid.configs}:
        resolve_device(device)  # asking for CUDA where there is none fails now, not per run
    jobs = max(1, min(options.jobs or 1, os.cpu_count() or 1))
    return run_local(
        grid.configs,
        db,
        runs_dir,
        dataclasses.replace(options, jobs=jobs),
        budget_points=grid.budget_points,
        progress=progress,
    )


def local_defaults(engine: EngineOptions, grid: "Grid") -> EngineOptions:
    """Without --jobs and --threads, a CPU trains the candidates side by side, one thread each, as
    many at once as there are cores: these models gain little from a second thread, and on a CPU
    shared with other work, OpenMP threads that wait on each other were measured up to 20x slower.
    On CUDA: one run at a time with torch's threads."""
    if engine.engine != "local" or engine.jobs is not None or engine.threads is not None or not grid.configs:
        return engine
    if any(resolve_device(c.device).type != "cpu" for c in grid.configs):
        return engine
    return dataclasses.replace(engine, jobs=min(os.cpu_count() or 1, len(grid.configs)), threads=1)
