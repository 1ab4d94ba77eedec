"""Successive halving of ``reduce``'s candidates: most of them are behind long before the end.

With rate ``R`` and ``K`` rungs, a schedule of ``E`` epochs has rungs at ``E // R**(K-1)``, ...,
``E // R``, ``E`` epochs (each rounded down; a first rung under one epoch is refused). Every
candidate (template or pruning baseline, all its seeds) trains to the first rung and pauses
(``TrainConfig.stop_at``: the run keeps the full ``E``-epoch schedule, so a paused run continued
later ends with exactly the weights of one never paused); the best ``max(1, n // R)`` of the ``n``
that entered a rung, by the mean over seeds of the selection metric at the rung
(:mod:`.selection`'s ranking key: ties to the cheaper in the budget's resource, then the template
order), continue to the next. The last rung is the full schedule.

Each rung is one submission to the engine (local, Ray or Slurm alike) and the decisions are read
from the results store between rungs, so every engine keeps the same candidates, and the same
command run again (after a crash, say) makes the same decisions and trains no finished epoch
again. The store remembers the plan its paused runs belong to: another rate or rung count on it
is refused, since those runs paused where the other plan would not have stopped them.
"""

from __future__ import annotations

import dataclasses
import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from filter_templates.core import validate
from filter_templates.core.errors import UsageError
from filter_templates.sweep.engines import local_defaults, run_grid
from filter_templates.sweep.grid import Grid
from filter_templates.sweep.options import EngineOptions
from filter_templates.sweep.plan import SweepResult
from filter_templates.sweep.selection import pool, rung_scores, survivors
from filter_templates.sweep.store import Store, point_key

__all__ = ["Halving", "Rung", "Driver", "rung_epochs", "run_rungs", "check_store", "DEFAULT_RUNGS"]

DEFAULT_RUNGS = 3


@dataclass(frozen=True)
class Halving:
    """Successive halving at ``rate`` R (>= 2) over ``rungs`` K (>= 1) rungs."""

    rate: int
    rungs: int = DEFAULT_RUNGS

    def __post_init__(self) -> None:
        validate.integer(self.rate, "--halving (the rate R: a rung keeps the best 1/R)", minimum=2)
        validate.integer(self.rungs, "--rungs", minimum=1)

    def record(self, epochs: int) -> dict[str, Any]:
        return {"rate": self.rate, "rungs": self.rungs, "epochs": rung_epochs(epochs, self.rate, self.rungs)}


def rung_epochs(epochs: int, rate: int, rungs: int) -> list[int]:
    """The epochs each rung trains to: ``epochs // rate**j`` for j = K-1, ..., 0 (strictly
    increasing, the last the full schedule); a UsageError when the first is under one epoch."""
    first = epochs // rate ** (rungs - 1)
    if first < 1:
        raise UsageError(
            f"--halving {rate} --rungs {rungs} with {epochs} epochs: the first rung would be "
            f"{epochs}/{rate}^{rungs - 1} = {epochs / rate ** (rungs - 1):.3g} epochs, under one; "
            f"give fewer rungs or more epochs (at least {rate ** (rungs - 1)})"
        )
    return [epochs // rate**j for j in range(rungs - 1, -1, -1)]


@dataclass
class Rung:
    """One rung: the candidates that trained to ``epochs``, their scores there (mean over seeds of
    the selection metric; None: no seed reached the rung) and the ones that go on."""

    epochs: int
    candidates: list[str]
    scores: dict[str, float | None] = field(default_factory=dict)
    survivors: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "epochs": self.epochs,
            "candidates": self.candidates,
            "scores": self.scores,
            "survivors": self.survivors,
        }


def _meta_name(grid: Grid) -> str:
    """The store's name for the plan of this grid's paused runs (one per set of runs)."""
    keys = sorted(point_key(c.to_dict())[0] for c in grid.configs)
    return "halving " + hashlib.sha256(" ".join(keys).encode()).hexdigest()[:16]


def check_store(db: Path, grid: Grid, plan: Halving | None, epochs: int) -> None:
    """Refuse (before anything is written) a plan other than the one the store's paused runs of
    this grid paused under; none asked continues them all to the end."""
    if plan is None:
        return
    plan.record(epochs)  # rungs under one epoch: refused here, before the store exists
    if not db.is_file():
        return
    with Store(db, create=False) as store:
        paused = store.paused([point_key(c.to_dict())[0] for c in grid.configs])
        before = store.meta(_meta_name(grid))
    if paused and before is not None and before != plan.record(epochs):
        raise UsageError(
            f"{db}: {len(paused)} run(s) paused by --halving {before['rate']} --rungs {before['rungs']} "
            f"(rungs at {', '.join(map(str, before['epochs']))} epochs); run it again with those, "
            "or without --halving to train every candidate to the end"
        )


@dataclass
class Driver:
    """What :func:`run_rungs` trains and how it ranks: the grid, its results store and run folders,
    the engine, what ranks (``SELECTIONS``), the template order and whether to show progress."""

    grid: Grid
    db: Path
    runs: Path
    engine: EngineOptions
    selection: str
    order: Sequence[str]
    progress: bool | None = None

    def run(self, grid: Grid) -> SweepResult:
        return run_grid(grid, self.db, self.runs, local_defaults(self.engine, grid), progress=self.progress)

    def read(self) -> list[dict[str, Any]]:
        with Store(self.db) as store:
            return store.budget_rows([p.key for p in self.grid.budget_points])


def run_rungs(plan: Halving, epochs: int, d: Driver) -> tuple[list[Rung], list[SweepResult]]:
    """Train ``d.grid`` rung by rung (``plan``, ``epochs`` planned), recording the plan in its
    store; returns the rungs (the last one's candidates are the finalists) and each rung's
    sweep. A rung some run of which is still going elsewhere is not decided (a UsageError)."""
    with Store(d.db) as store:
        store.set_meta(_meta_name(d.grid), plan.record(epochs))
    by_template: dict[str, list] = {}
    for bp in d.grid.budget_points:
        if bp.config is not None:
            by_template.setdefault(bp.method, []).append(bp.config)
    alive = [t for t in d.order if t in by_template]
    rungs, sweeps = [], []
    stops = rung_epochs(epochs, plan.rate, plan.rungs)
    for i, stop in enumerate(stops):
        last = i == len(stops) - 1
        configs = [dataclasses.replace(c, stop_at=None if last else stop) for t in alive for c in by_template[t]]
        sweeps.append(d.run(Grid(configs=configs, budget_points=d.grid.budget_points if i == 0 else [])))
        rows = d.read()
        rung = Rung(stop, list(alive))
        scores = rung_scores([r for r in rows if r["method"] in alive], stop, d.selection)
        pending = [t for t in alive if not scores.get(t, (None, True))[1]]
        if pending and not last:
            raise UsageError(
                f"rung at {stop} epochs: {', '.join(pending)} still training in another process (or "
                "interrupted); run the same command again once they end, to continue from there"
            )
        rung.scores = {t: scores.get(t, (None, True))[0] for t in alive}
        costs = {c.method: c.cost for c in pool(rows)}
        rung.survivors = list(alive) if last else survivors(alive, rung.scores, costs, d.order, plan.rate)
        rungs.append(rung)
        alive = rung.survivors
    return rungs, sweeps
