"""Selection: which trained candidate of one budget wins, decided in one place.

A *candidate* is one template (or pruning baseline) fitted to one budget with its seeds pooled: a
:class:`BudgetCell` built from the results store's budget rows. Everything that ranks candidates
reads this module -- ``reduce``'s table and winner, successive halving's survivors at each rung
(:mod:`.halving`) and the report's "best" column -- so the rule is written once:

* the ranking key (:func:`rank_key`): the selection metric, mean over the finished seeds (the
  validation accuracy; the test accuracy only where no validation split exists), higher first;
  then the budget's resource (:data:`RESOURCE_OF`), less first; then the template order;
* a rung's score (:func:`rung_scores`): the same mean, read at the rung's epoch of the schedule;
* the winner (:func:`choose`): the most accurate candidate is compared with every other on the
  same validation images (:mod:`.separation`: paired bootstrap over images and seeds); those not
  separable from it are *tied*, and among tied candidates the cheapest in the budget's resource
  wins. A difference the validation split cannot resolve is not a reason to pay for a larger model.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence, TypeVar

import numpy as np

from filter_templates.core import rundir
from filter_templates.core.status import DONE, FAILED, PENDING, UNREACHABLE
from filter_templates.method.fit import format_value
from filter_templates.sweep.separation import Separation, separate
from filter_templates.training.config import schedule_rows

__all__ = [
    "SELECTIONS",
    "RESOURCE_OF",
    "BudgetCell",
    "Pooled",
    "pool",
    "rank_key",
    "ranked",
    "rung_scores",
    "survivors",
    "Choice",
    "choose",
    "pick",
    "split_of",
    "setting_key",
]

T = TypeVar("T")
#: What candidates can be ranked on: the validation split's final accuracy, or (no split) the test set's.
SELECTIONS = ("val_acc", "final_acc")
#: The runs/fit column that measures each budget key's resource (what breaks a tie).
RESOURCE_OF = {"params": "params", "flops": "flops", "memory": "train_memory_bytes", "latency": "latency_batch_s"}


def setting_key(s: Mapping[str, Any]) -> str:
    """A hashable, order-free form of a setting (equal settings give equal keys): what pools seeds."""
    return repr(sorted((k, repr(v)) for k, v in s.items()))


def split_of(selection: str) -> str:
    """The split whose per-image outcomes (``rundir.Outcomes``) a selection metric is the mean of."""
    return "val" if selection == "val_acc" else "test"


class Pooled:
    """The accuracies of runs pooled over seeds (``done``: the finished runs' store rows): a budget
    candidate's here, a width cell's in the report."""

    done: Any

    def accs(self, metric: str = "final") -> list[float]:
        return [r[f"{metric}_acc"] for r in self.done if r.get(f"{metric}_acc") is not None]

    def acc(self, metric: str = "final") -> float | None:
        vals = self.accs(metric)
        return statistics.fmean(vals) if vals else None

    def acc_std(self, metric: str = "final") -> float | None:
        vals = self.accs(metric)
        return statistics.stdev(vals) if len(vals) > 1 else None


@dataclass
class BudgetCell(Pooled):
    """One candidate: a template (or pruning baseline, ``method``) at one budget of one dataset and
    family, its seeds pooled (``points``: the store's budget rows, one per seed) -- runs of the same
    ``setting`` only (recipe, epochs, ...: what the report splits rows by)."""

    dataset: str
    family: str
    budget_key: str
    budget_value: float
    method: str  # the template, or a pruning baseline's method
    points: list[dict[str, Any]] = field(default_factory=list)  # Store.budget_rows() entries, one per seed
    setting: dict[str, Any] = field(default_factory=dict)  # what its seeds share besides the axes

    @property
    def skey(self) -> str:
        return setting_key(self.setting)

    @property
    def budget(self) -> str:
        return f"{self.budget_key}={format_value(self.budget_key, self.budget_value)}"

    @property
    def done(self) -> list[dict[str, Any]]:
        return [p["run"] for p in self.points if p["run"] is not None and p["run"]["status"] == DONE]

    def score(self, selection: str) -> float | None:
        """The mean over finished seeds of ``selection`` (``val_acc`` or ``final_acc``): what ranks."""
        return self.acc("val" if selection == "val_acc" else "final")

    @property
    def status(self) -> str:
        """done (a seed finished), unreachable, failed (every run failed) or pending."""
        if self.done:
            return DONE
        if all(p["status"] == UNREACHABLE for p in self.points):
            return UNREACHABLE
        runs = [p["run"] for p in self.points if p["run"] is not None]
        if runs and all(r["status"] == FAILED for r in runs):
            return FAILED
        return PENDING

    @property
    def reason(self) -> str | None:
        for p in self.points:
            if p.get("reason"):
                return str(p["reason"])
            if p["run"] is not None and p["run"].get("reason"):
                return str(p["run"]["reason"])
        return None

    @property
    def width(self) -> float | None:
        return next((p["width"] for p in self.points if p.get("width") is not None), None)

    @property
    def filters(self) -> list[int] | None:
        return next((p["filters"] for p in self.points if p.get("filters")), None)

    def latency_record(self) -> dict[str, Any] | None:
        """The fitted model's latency in the runtime a latency budget was fitted in
        (``runtimes.Runtime.record``), or None."""
        return next((p["fit"]["latency"] for p in self.points if (p.get("fit") or {}).get("latency")), None)

    def resource(self, name: str) -> float | None:
        """From the done runs (median: latency varies), else as fitted; a latency budget's latency is
        the fitted record's, in the runtime it was fitted in (the runs' own is eager torch)."""
        record = self.latency_record() if name == RESOURCE_OF["latency"] else None
        if record is not None:
            return float(record["median_s"])
        vals = [r[name] for r in self.done if r.get(name) is not None]
        if vals:
            return statistics.median(vals)
        fit = next((p["fit"] for p in self.points if p.get("fit")), None) or {}
        if name == "latency_batch_s":
            lat = fit.get("latency_s") or {}
            return lat.get(f"batch{fit.get('batch_size')}")
        return fit.get(name)

    @property
    def cost(self) -> float | None:
        """The budget's resource: what a tie goes by (less is better)."""
        return self.resource(RESOURCE_OF[self.budget_key])

    def outcomes(self, selection: str) -> list[np.ndarray] | None:
        """Per finished seed, the final model's per-image outcomes on the split ``selection`` ranks
        on; None when a finished seed kept none (a run of a version that did not record them)."""
        rows = []
        for run in self.done:
            kept = rundir.read_outcomes(run["run_dir"]) if run.get("run_dir") else None
            hits = None if kept is None else kept.splits.get(split_of(selection))
            if hits is None or not len(hits):
                return None
            rows.append(hits[-1])
        return rows or None


def pool(budget_rows: Sequence[Mapping[str, Any]]) -> list[BudgetCell]:
    """The candidates of one budget (one dataset, family and setting: a ``reduce``'s store), one per
    method, in the order the rows name them. Rows of several budgets are grouped by the report
    (``report.budgets.collect_budgets``) into the same cells."""
    cells: dict[str, BudgetCell] = {}
    for p in budget_rows:
        cell = cells.setdefault(
            p["method"],
            BudgetCell(p["dataset"], p["family"], p["budget_key"], float(p["budget_value"]), p["method"]),
        )
        cell.points.append(dict(p))
    return list(cells.values())


def rank_key(score: float | None, cost: float | None, position: int) -> tuple:
    """The one ranking key: a score first (none: last), the higher first; then the cheaper in the
    budget's resource (unknown: last); then the position in the template order."""
    return (score is None, -(score or 0.0), cost if cost is not None else float("inf"), position)


def ranked(
    items: Sequence[Any],
    score: Callable[[Any], float | None],
    cost: Callable[[Any], float | None],
    name: Callable[[Any], str],
    order: Sequence[str] = (),
) -> list[Any]:
    """``items`` sorted by :func:`rank_key` of their ``score``, ``cost`` and place of ``name`` in ``order``."""
    pos = {t: i for i, t in enumerate(order)}
    return sorted(items, key=lambda c: rank_key(score(c), cost(c), pos.get(name(c), len(pos))))


def rung_scores(
    budget_rows: Sequence[Mapping[str, Any]], epochs: int, selection: str
) -> dict[str, tuple[float | None, bool]]:
    """Per candidate: (the mean over its seeds of ``selection`` -- ``val_acc``, or ``final_acc``
    read as the test accuracy -- at epoch ``epochs`` of the planned schedule, or None when no seed
    reached it; whether every seed has reached it or failed, i.e. the rung is over for it)."""
    metric = "val_acc" if selection == "val_acc" else "test_acc"
    vals: dict[str, list[float]] = {}
    over: dict[str, bool] = {}
    for p in budget_rows:
        run = p.get("run")
        if run is None:
            continue
        rows = schedule_rows(run["config"], run["epoch_metrics"])
        reached = len(rows) >= epochs and rows[epochs - 1].get(metric) is not None
        vals.setdefault(p["method"], [])
        if reached:
            vals[p["method"]].append(float(rows[epochs - 1][metric]))
        ended = reached or run["status"] == FAILED
        over[p["method"]] = over.get(p["method"], True) and ended
    return {t: (statistics.fmean(v) if v else None, over[t]) for t, v in vals.items()}


def survivors(
    candidates: Sequence[str],
    scores: Mapping[str, float | None],
    costs: Mapping[str, float | None],
    order: Sequence[str],
    rate: int,
) -> list[str]:
    """The best ``max(1, n // rate)`` of a rung's ``n`` candidates by :func:`rank_key`; a
    candidate with no score there (every seed failed) never goes on."""
    best = ranked(candidates, scores.get, costs.get, str, order)[: max(1, len(candidates) // rate)]
    return [t for t in best if scores.get(t) is not None]


@dataclass
class Choice:
    """The winner of ranked candidates and how sure the choice is: ``top`` is the most accurate,
    ``tied`` the candidates not separable from it (``top`` included), ``winner`` the cheapest of
    those; ``separations`` holds each finished candidate against the winner (None: the winner
    itself, or no per-image outcomes to compare)."""

    winner: str | None
    top: str | None
    tied: list[str]
    separations: dict[str, Separation | None]
    resource: str  # the budget's resource that broke the tie

    @property
    def by_cost(self) -> bool:
        """Whether the tie rule moved the win off the most accurate candidate."""
        return self.winner is not None and self.winner != self.top


def choose(cells: Sequence[BudgetCell], selection: str, order: Sequence[str] = ()) -> Choice:
    """Rank the finished candidates among ``cells`` and pick the winner (:func:`pick`) on the
    per-image outcomes of the split ``selection`` ranks on, seeds pooled."""
    done = [c for c in cells if c.status == DONE and c.score(selection) is not None]
    key = RESOURCE_OF[cells[0].budget_key] if cells else "params"
    if not done:
        return Choice(None, None, [], {}, key)
    ranks = ranked(done, lambda c: c.score(selection), lambda c: c.cost, lambda c: c.method, order)
    hits = {c.method: c.outcomes(selection) for c in ranks}
    winner, tied = pick(ranks, lambda c: hits[c.method], lambda c: c.cost)
    seps = {c.method: None if c is winner else _separation(hits[c.method], hits[winner.method]) for c in ranks}
    return Choice(winner.method, ranks[0].method, [c.method for c in tied], seps, key)


def pick(
    ranks: Sequence[T], hits: Callable[[T], Sequence[np.ndarray] | None], cost: Callable[[T], float | None]
) -> tuple[T, list[T]]:
    """(the winner, the tied) of candidates already in :func:`rank_key` order: the tied are those not
    separable from the first on their per-image outcomes (``hits``: one vector per seed; None: none
    kept, so never tied), the winner the cheapest of them (then the earlier in the ranking)."""
    top = ranks[0]
    tied = [c for c in ranks if c is top or _tied(hits(c), hits(top))]
    best = min(tied, key=lambda c: (_known_or_inf(cost(c)), ranks.index(c)))
    return best, tied


def _known_or_inf(v: float | None) -> float:
    return v if v is not None else float("inf")


def _separation(a: Sequence[np.ndarray] | None, b: Sequence[np.ndarray] | None) -> Separation | None:
    """``a`` against ``b`` (None: either kept no outcomes, or they saw different images)."""
    if a is None or b is None or len(a[0]) != len(b[0]):
        return None
    return separate(a, b)


def _tied(a: Sequence[np.ndarray] | None, b: Sequence[np.ndarray] | None) -> bool:
    s = _separation(a, b)
    return s is not None and s.tied
