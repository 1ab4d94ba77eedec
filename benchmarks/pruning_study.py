"""Templates against pruning at one budget on CIFAR-10: `reduce --baselines` for each model.

For each model, the five templates fitted to the budget and the three pruning baselines
(prune-l1, prune-l1-global, prune-scratch) train on the same images, with the same recipe, seed
and total number of epochs (``reduce`` with ``--baselines``). The table gives each candidate's
parameters, forward FLOPs per image, validation accuracy (what ``reduce`` ranks on) and final test
accuracy. Each model's candidates go to ``OUT/<model>/`` (a ``reduce`` folder: re-running resumes);
the results file is rewritten after each model, and ``--collect`` writes it from what the folders
hold without training anything (runs that have not finished show as pending).

    python benchmarks/pruning_study.py --write docs/results/ [--models vgg19 mobilenet]
        [--budget params=100K] [--epochs 4] [--limit-train 2500] [--limit-test 1000] [--seeds 0 1]
        [--prune-from vgg19=0.25 mobilenet=0.5] [--out runs/pruning-study] [--collect] [--retry-failed]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from results_file import add_write_argument, write

from filter_templates.method.templates import BUILTIN_TEMPLATES
from filter_templates.pruning.adapter import Baselines
from filter_templates.reduction import Candidate, ReduceRequest, rank, reduce
from filter_templates.report.budgets import collect_budgets
from filter_templates.sweep.options import EngineOptions
from filter_templates.sweep.store import Store
from filter_templates.training.config import PRUNE_METHODS

REPO = Path(__file__).resolve().parents[1]
SHARED_CIFAR = REPO.parent / "shared" / "datasets" / "cifar10-jpeg.tar.gz"


def collect(folder: Path) -> tuple[list[Candidate], dict[str, list[dict]]]:
    """The candidates a reduce folder holds (their seeds pooled), ranked as reduce ranks them
    (mean validation accuracy), and each candidate's finished runs by seed."""
    db = folder / "results.sqlite"
    if not db.is_file():
        return [], {}
    with Store(db) as store:
        cells = list(collect_budgets(store.budget_rows()).values())
    runs = {
        c.template: sorted(
            ({"seed": r["seed"], "val_acc": r.get("val_acc"), "final_acc": r.get("final_acc")} for r in c.done),
            key=lambda r: r["seed"],
        )
        for c in cells
    }
    ranked = rank([Candidate.from_cell(c, "val_acc") for c in cells], [*BUILTIN_TEMPLATES, *PRUNE_METHODS], "val_acc")
    return ranked, runs


def _pct(x):
    return None if x is None else round(100 * x, 2)


def rows(model: str, candidates: list[Candidate], runs: dict[str, list[dict]]) -> list[list]:
    return [
        [
            model,
            c.template,
            c.kind,
            c.params,
            None if c.flops is None else round(c.flops / 1e6, 2),
            _pct(c.val_acc),
            _pct(c.final_acc),
            " / ".join(f"{_pct(r['final_acc'])}" for r in runs.get(c.template, [])),
            c.status,
        ]
        for c in candidates
    ]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", nargs="+", default=["vgg19", "mobilenet"])
    p.add_argument("--budget", default="params=100K")
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--limit-train", type=int, default=2500)
    p.add_argument("--limit-test", type=int, default=1000)
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--prune-from", nargs="+", default=["vgg19=0.25", "mobilenet=0.5"], metavar="MODEL=W")
    p.add_argument("--prune-at", type=float, default=0.5)
    p.add_argument("--data", default=str(SHARED_CIFAR))
    p.add_argument("--out", default=str(REPO / "runs" / "pruning-study"))
    p.add_argument("--collect", action="store_true", help="write the results file from the folders; train nothing")
    p.add_argument("--retry-failed", action="store_true", help="train candidates that failed before again")
    add_write_argument(p)
    args = p.parse_args(argv)
    start = {k: float(v) for k, _, v in (x.partition("=") for x in args.prune_from)}
    table, numbers = [], {}
    for model in args.models:
        folder = Path(args.out) / model
        if not args.collect:
            base = Baselines(PRUNE_METHODS, args.prune_at, start.get(model, 1.0))
            reduce(
                ReduceRequest(
                    model,
                    args.budget,
                    "cifar10",
                    seeds=args.seeds,
                    out=folder,
                    baselines=base,
                    report=False,
                    export=False,
                    engine=EngineOptions(retry_failed=args.retry_failed),
                    train={
                        "epochs": args.epochs,
                        "limit_train": args.limit_train,
                        "limit_test": args.limit_test,
                        "data_dir": args.data,
                    },
                ),
                progress=False,
            )
        found, runs = collect(folder)
        table += rows(model, found, runs)
        numbers[model] = {
            "prune_from": start.get(model, 1.0),
            "candidates": [{**c.to_dict(), "runs": runs.get(c.template, [])} for c in found],
        }
        print("\n".join(" ".join(str(x) for x in r) for r in rows(model, found, runs)), flush=True)
        if args.write:
            _write(args, table, numbers)
    return 0


def _write(args, table: list[list], numbers: dict) -> None:
    pending = [r for r in table if r[-1] != "done"]
    write(
        args.write,
        "pruning_study",
        title=f"Templates against pruning at {args.budget} on CIFAR-10 ({args.epochs} epochs, "
        f"{args.limit_train} training images, seeds {', '.join(map(str, args.seeds))})",
        numbers={
            "budget": args.budget,
            "epochs": args.epochs,
            "prune_at": args.prune_at,
            "limit_train": args.limit_train,
            "limit_test": args.limit_test,
            "models": numbers,
        },
        seeds=args.seeds,
        views=f"CIFAR-10: a seeded sample of {args.limit_train} training images, 10% of them held out for "
        f"validation (what ranks); {args.limit_test} test images (final accuracy)",
        note=f"{len(args.seeds)} seed(s), few epochs, a subset: differences of a few points are within what "
        "another seed or a larger test sample would change; val % and test % are means over the seeds, "
        "test by seed lists each." + (f" {len(pending)} candidates not finished." if pending else ""),
        table={
            "columns": [
                "model",
                "candidate",
                "kind",
                "params",
                "MFLOPs",
                "val %",
                "test %",
                "test % by seed",
                "status",
            ],
            "rows": table,
        },
    )


if __name__ == "__main__":
    sys.exit(main())
