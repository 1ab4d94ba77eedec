"""Is successive halving safe? Plain `reduce` against `--halving 2` and `--halving 3` on CIFAR-10.

Each case is one model and one budget, every candidate trained on the same seeds (pooled, as
``reduce`` pools them), ranked on a validation split large enough to separate candidates (2,500
images by default). The plain ``reduce`` trains every candidate to the end; halving at rate R is
then replayed on those very runs: a run paused at a rung and continued ends with exactly the
weights of one never paused (``TrainConfig.stop_at``; tests/test_halving.py), so a rung's scores
are the plain runs' validation accuracies at that epoch and nothing needs training twice. Each
rung keeps the best ``max(1, n // R)`` by the selection module's ranking key; the finalists are
ranked like a plain ``reduce`` (ties -- not separable from the most accurate -- to the cheapest).

Per way and case: the winner, its validation and test accuracy (means over the seeds), the epochs
trained, and the regret -- the plain winner's test accuracy less halving's winner's, in points,
with its 95% paired-bootstrap interval over the test images (``sweep.separation``) -- and every
candidate a rung dropped that was not separable, on that rung's validation images, from the way's
final winner (or from the plain winner) at that rung: the drops where halving decided on noise.

Every number is computed from the run folders (their ``outcomes.npz`` and metrics), so the
analysis can be rerun on finished folders (``--no-train``). The results file is rewritten after
every case; re-running resumes every folder.

    python benchmarks/halving_study.py --write docs/results/ [--models vgg19 mobilenet]
        [--budgets params=100K] [--templates uniform reverse] [--seeds 0 1 2] [--epochs 9] [--limit-train 7500]
        [--val-split 2500] [--limit-test 2000] [--out runs/halving-study]
        [--keep docs/results/halving_study.json] [--no-train]

``--keep FILE`` carries the cases of an earlier results file of this study that this invocation
does not run (another model or budget) into the one it writes.
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from results_file import add_write_argument, read, write

from filter_templates.core import rundir
from filter_templates.core.status import DONE
from filter_templates.method.fit import parse_budget
from filter_templates.reduction import ReduceRequest, reduce
from filter_templates.sweep import selection
from filter_templates.sweep.halving import rung_epochs
from filter_templates.sweep.separation import separate

REPO = Path(__file__).resolve().parents[1]
SHARED_CIFAR = REPO.parent / "shared" / "datasets" / "cifar10-jpeg.tar.gz"
RATES = (2, 3)
RUNGS = 3


def _pct(x: float | None) -> float | None:
    return None if x is None else round(100 * x, 2)


@dataclass
class Candidate:
    """One template of a case, its seeds' run folders read back."""

    template: str
    cost: float  # the budget's resource
    metrics: list[list[dict]]  # per seed, its metrics rows
    outcomes: list[rundir.Outcomes]

    def val(self, epoch: int) -> float:
        """Mean over seeds of the validation accuracy after ``epoch`` epochs."""
        return statistics.fmean(m[epoch - 1]["val_acc"] for m in self.metrics)

    def test(self, epoch: int) -> float:
        return statistics.fmean(m[epoch - 1]["test_acc"] for m in self.metrics)

    def hits(self, split: str, epoch: int) -> np.ndarray:
        rows = [o.at(split, epoch) for o in self.outcomes]
        if any(r is None for r in rows):
            raise SystemExit(f"{self.template}: a seed has no {split} outcomes at epoch {epoch}")
        return np.stack(rows)  # type: ignore[arg-type]


def case_dir(args: argparse.Namespace, model: str, budget: str) -> Path:
    return Path(args.out) / f"{model}-{budget.replace('=', '')}"


def train_case(args: argparse.Namespace, model: str, budget: str) -> None:
    """The plain reduce of the case: every candidate, every seed, to the end."""
    reduce(
        ReduceRequest(
            model,
            budget,
            "cifar10",
            templates=args.templates,
            seeds=args.seeds,
            out=case_dir(args, model, budget),
            report=False,
            export=False,
            train={
                "epochs": args.epochs,
                "limit_train": args.limit_train,
                "limit_test": args.limit_test,
                "val_split": args.val_split,
                "data_dir": args.data,
            },
        ),
        progress=False,
    )


def read_case(args: argparse.Namespace, model: str, budget: str) -> list[Candidate]:
    """The case's finished runs of the asked seeds, per template, in the order they were fitted."""
    key = selection.RESOURCE_OF[parse_budget(budget).key]
    by: dict[str, dict[int, tuple[dict, list[dict], rundir.Outcomes]]] = {}
    for run in sorted((case_dir(args, model, budget) / "runs").iterdir()):
        summary = rundir.read_summary(run)
        if summary is None or summary["status"] != DONE or summary["config"]["seed"] not in args.seeds:
            continue
        outcomes = rundir.read_outcomes(run)
        if outcomes is None:
            raise SystemExit(f"{run}: no {rundir.OUTCOMES}; train it again with this version")
        cfg = summary["config"]
        if args.templates and cfg["arch"]["template"] not in {"base", *args.templates}:
            continue
        by.setdefault(cfg["arch"]["template"], {})[cfg["seed"]] = (summary, rundir.read_metrics(run), outcomes)
    cands = []
    for template, seeds in by.items():
        if set(seeds) != set(args.seeds):
            raise SystemExit(f"{model} {budget} {template}: seeds {sorted(seeds)} finished of {args.seeds}")
        runs = [seeds[s] for s in args.seeds]
        cands.append(
            Candidate(template, float(runs[0][0]["resources"][key]), [r[1] for r in runs], [r[2] for r in runs])
        )
    return cands


def rank(cands: list[Candidate], epoch: int) -> list[Candidate]:
    """By ``reduce``'s ranking key (mean validation accuracy after ``epoch`` epochs, then the cost)."""
    return selection.ranked(cands, lambda c: c.val(epoch), lambda c: c.cost, lambda c: c.template)


def winner(cands: list[Candidate], epoch: int) -> Candidate:
    """``reduce``'s winner: the cheapest of the candidates not separable from the most accurate."""
    return selection.pick(rank(cands, epoch), lambda c: list(c.hits("val", epoch)), lambda c: c.cost)[0]


def replay(cands: list[Candidate], epochs: int, rate: int) -> dict[str, Any]:
    """Successive halving at ``rate`` on the plain runs: each rung's survivors, the winner, the
    epochs it would have trained, and the drops not separable from the final winner."""
    stops = rung_epochs(epochs, rate, RUNGS)
    alive, trained, before, rungs = list(cands), 0, 0, []
    seeds = len(cands[0].metrics)
    for i, stop in enumerate(stops):
        trained += len(alive) * seeds * (stop - before)
        before = stop
        if i == len(stops) - 1:
            break
        names = selection.survivors(
            [c.template for c in alive],
            {c.template: c.val(stop) for c in alive},
            {c.template: c.cost for c in alive},
            (),
            rate,
        )
        keep = [c for c in alive if c.template in names]
        rungs.append({"epochs": stop, "candidates": alive, "survivors": keep})
        alive = keep
    w = winner(alive, epochs)
    return {"winner": w, "epochs_trained": trained, "rungs": rungs}


def _sep(a: Candidate, b: Candidate, split: str, epoch: int) -> dict[str, Any]:
    s = separate(a.hits(split, epoch), b.hits(split, epoch))
    return {
        "difference_points": round(100 * s.difference, 2),
        "interval_points": [round(100 * s.low, 2), round(100 * s.high, 2)],
        "p": round(s.p, 4),
        "tied": s.tied,
    }


def analyse(cands: list[Candidate], epochs: int) -> dict[str, Any]:
    """Every way of the case: winner, accuracies, epochs, regret (with interval), tied drops."""
    plain = winner(cands, epochs)
    ways: dict[str, Any] = {
        "plain": {
            "winner": plain.template,
            "val_acc": _pct(plain.val(epochs)),
            "test_acc": _pct(plain.test(epochs)),
            "epochs_trained": len(cands) * len(cands[0].metrics) * epochs,
            "regret_points": 0.0,
            "regret_interval": [0.0, 0.0],
        }
    }
    for rate in RATES:
        r = replay(cands, epochs, rate)
        w = r["winner"]
        # the same winner: the very same runs, so no regret at all (a bootstrap of a candidate against
        # itself would resample its seeds twice and give a spread around 0)
        regret = (
            _sep(plain, w, "test", epochs)
            if w is not plain
            else {"difference_points": 0.0, "interval_points": [0.0, 0.0]}
        )
        drops = [
            {
                "rung_epochs": g["epochs"],
                "dropped": c.template,
                "vs_final_winner": _sep(w, c, "val", g["epochs"]) if c is not w else None,
                "vs_plain_winner": _sep(plain, c, "val", g["epochs"]) if c is not plain else None,
            }
            for g in r["rungs"]
            for c in g["candidates"]
            if c not in g["survivors"]
        ]
        ways[f"halving{rate}"] = {
            "winner": w.template,
            "val_acc": _pct(w.val(epochs)),
            "test_acc": _pct(w.test(epochs)),
            "epochs_trained": r["epochs_trained"],
            "regret_points": regret["difference_points"],
            "regret_interval": regret["interval_points"],
            "rungs": [
                {
                    "epochs": g["epochs"],
                    "scores": {c.template: _pct(c.val(g["epochs"])) for c in g["candidates"]},
                    "survivors": [c.template for c in g["survivors"]],
                }
                for g in r["rungs"]
            ],
            "drops": drops,
            "dropped_tied_with_final_winner": sum(
                bool(d["vs_final_winner"] and d["vs_final_winner"]["tied"]) for d in drops
            ),
            "dropped_tied_with_plain_winner": sum(
                bool(d["vs_plain_winner"] and d["vs_plain_winner"]["tied"]) for d in drops
            ),
        }
    return ways


def summarise(cases: list[dict]) -> dict[str, Any]:
    """Per halving rate: mean regret with a 95% t-interval over the cases, same winner, tied drops,
    share of epochs saved."""
    out: dict[str, Any] = {}
    for rate in RATES:
        way = f"halving{rate}"
        done = [c for c in cases if way in c["ways"]]
        if not done:
            continue
        regrets = [c["ways"][way]["regret_points"] for c in done]
        mean = statistics.fmean(regrets)
        half = _t95(len(regrets)) * statistics.stdev(regrets) / math.sqrt(len(regrets)) if len(regrets) > 1 else None
        out[way] = {
            "cases": len(done),
            "mean_test_regret_points": round(mean, 2),
            "mean_regret_interval": None if half is None else [round(mean - half, 2), round(mean + half, 2)],
            "regret_separable_cases": sum(
                not (lo <= 0 <= hi) for lo, hi in (c["ways"][way]["regret_interval"] for c in done)
            ),
            "same_winner": sum(c["ways"][way]["winner"] == c["ways"]["plain"]["winner"] for c in done),
            "dropped_tied_with_final_winner": sum(c["ways"][way]["dropped_tied_with_final_winner"] for c in done),
            "dropped_tied_with_plain_winner": sum(c["ways"][way]["dropped_tied_with_plain_winner"] for c in done),
            "drops": sum(len(c["ways"][way]["drops"]) for c in done),
            "mean_epochs_saved": round(
                statistics.fmean(
                    1 - c["ways"][way]["epochs_trained"] / c["ways"]["plain"]["epochs_trained"] for c in done
                ),
                3,
            ),
        }
    return out


def _t95(n: int) -> float:
    """Student's t quantile (0.975) for ``n - 1`` degrees of freedom (n >= 2)."""
    table = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262}
    return table.get(n - 1, 1.96 + 2.4 / (n - 1))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", nargs="+", default=["vgg19", "mobilenet"])
    p.add_argument("--budgets", nargs="+", default=["params=100K"])
    p.add_argument("--templates", nargs="+", help="the candidates besides base (default: every template)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--epochs", type=int, default=9, help="9: the least --halving 3's three rungs allow")
    p.add_argument("--limit-train", type=int, default=7500, help="training images sampled, validation included")
    p.add_argument("--val-split", type=int, default=2500, help="validation images held out of them (what ranks)")
    p.add_argument("--limit-test", type=int, default=2000)
    p.add_argument("--data", default=str(SHARED_CIFAR))
    p.add_argument("--out", default=str(REPO / "runs" / "halving-study"))
    p.add_argument("--keep", metavar="FILE", help="an earlier halving_study.json whose other cases are kept")
    p.add_argument("--no-train", action="store_true", help="analyse the finished run folders only")
    add_write_argument(p)
    args = p.parse_args(argv)
    kept = _kept(args)
    cases = list(kept)
    for model in args.models:
        for budget in args.budgets:
            if not args.no_train:
                train_case(args, model, budget)
            cands = read_case(args, model, budget)
            ways = analyse(cands, args.epochs)
            cases.append({"model": model, "budget": budget, "candidates": len(cands), "ways": ways})
            print(
                model,
                budget,
                {k: (v["winner"], v["test_acc"], v["regret_points"]) for k, v in ways.items()},
                flush=True,
            )
            if args.write:
                _write(args, cases)
    print(summarise(cases))
    return 0


def _scale(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "epochs": args.epochs,
        "limit_train": args.limit_train,
        "val_images": args.val_split,
        "limit_test": args.limit_test,
        "seeds": list(args.seeds),
    }


def _kept(args: argparse.Namespace) -> list[dict]:
    """The cases of ``--keep``'s file that this invocation does not run (same scale only)."""
    if not args.keep:
        return []
    earlier = read(args.keep)
    if {k: earlier["numbers"].get(k) for k in _scale(args)} != _scale(args):
        raise SystemExit(f"--keep {args.keep}: its cases ran another scale (epochs, images, seeds); not mixed")
    now = {(m, b) for m in args.models for b in args.budgets}
    return [c for c in earlier["numbers"]["cases"] if (c["model"], c["budget"]) not in now]


def _write(args: argparse.Namespace, cases: list[dict]) -> None:
    rows = [
        [
            c["model"],
            c["budget"],
            way,
            w["winner"],
            w["val_acc"],
            w["test_acc"],
            f"{w['regret_points']:+.2f} [{w['regret_interval'][0]:+.2f}, {w['regret_interval'][1]:+.2f}]",
            "—" if way == "plain" else f"{w['dropped_tied_with_final_winner']} of {len(w['drops'])}",
            w["epochs_trained"],
        ]
        for c in cases
        for way, w in c["ways"].items()
    ]
    s = summarise(cases)
    words = "; ".join(
        f"R={w[-1]}: mean regret {v['mean_test_regret_points']:+.2f} test points"
        + (
            f" (95% interval over cases {v['mean_regret_interval'][0]:+.2f} to {v['mean_regret_interval'][1]:+.2f})"
            if v["mean_regret_interval"]
            else ""
        )
        + f", separable from 0 in {v['regret_separable_cases']} of {v['cases']} cases, same winner in "
        f"{v['same_winner']} of {v['cases']}, {v['dropped_tied_with_final_winner']} of {v['drops']} drops were "
        f"tied with the final winner at their rung ({v['dropped_tied_with_plain_winner']} with the plain winner), "
        f"{100 * v['mean_epochs_saved']:.0f}% of the epochs saved"
        for w, v in s.items()
    )
    n_train = args.limit_train - args.val_split
    write(
        args.write,
        "halving_study",
        title=f"Successive halving against plain reduce on CIFAR-10 ({len(cases)} cases, {len(args.seeds)} seeds each, "
        f"{args.epochs} epochs, {args.val_split:,} validation images)",
        numbers={**_scale(args), "rungs": RUNGS, "cases": cases, "summary": s},
        seeds=args.seeds,
        views=f"CIFAR-10: a seeded sample of {args.limit_train:,} training images, {args.val_split:,} of them held out "
        f"for validation (what ranks), {n_train:,} trained on; {args.limit_test:,} test images (regret)",
        note=f"{words}. Regret: the plain winner's test accuracy less the halving winner's, in points, means over "
        f"{len(args.seeds)} seeds, with its 95% paired-bootstrap interval over the test images and seeds (negative: "
        "halving's winner tests better). A drop is tied when its validation accuracy at the rung is not separable "
        "from the final winner's there. Halving is replayed on the plain runs (a paused run continues bit for bit). "
        f"The first rung ranks after {', '.join(f'{rung_epochs(args.epochs, r, RUNGS)[0]} (R={r})' for r in RATES)} "
        f"of {args.epochs} epochs; these numbers hold at this scale only."
        + (
            " Analysed from the run folders this script trained (the same command without --no-train)."
            if args.no_train
            else ""
        ),
        table={
            "columns": [
                "model",
                "budget",
                "way",
                "winner",
                "val %",
                "test %",
                "regret, points [95%]",
                "drops tied with winner",
                "epochs trained",
            ],
            "rows": rows,
        },
    )


if __name__ == "__main__":
    sys.exit(main())
