"""Is successive halving safe? Plain `reduce` against `--halving 2` and `--halving 3` on CIFAR-10.

Each case is one model, one budget and one seed: the same reduce three ways, each in its own
folder (``OUT/<case>/plain``, ``halving2``, ``halving3``), nothing shared between them, so each
way's epochs are counted as it trained them. Per way: the epochs trained (over every candidate),
the winner, its final validation and test accuracy, and the regret -- the plain winner's accuracy
less this winner's, in points (0 when both pick the same candidate: its weights are then the very
same). The results file is rewritten after every case; re-running resumes every folder.

    python benchmarks/halving_study.py --write docs/results/ [--models vgg19 mobilenet]
        [--budgets params=50K params=100K] [--seeds 0 1] [--epochs 9] [--limit-train 2500]
        [--limit-test 1000] [--out runs/halving-study] [--keep docs/results/halving_study.json]

``--keep FILE`` carries the cases of an earlier results file of this study that this invocation
does not run (another model, budget or seed) into the one it writes, with that file's command
named in the note: the cases of one table need not all be trained in one sitting.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

from results_file import add_write_argument, read, write

from filter_templates.reduction import ReduceRequest, ReduceResult, reduce
from filter_templates.sweep.halving import Halving, rung_epochs

REPO = Path(__file__).resolve().parents[1]
SHARED_CIFAR = REPO.parent / "shared" / "datasets" / "cifar10-jpeg.tar.gz"
WAYS = {"plain": None, "halving2": 2, "halving3": 3}


def _pct(x):
    return None if x is None else round(100 * x, 2)


def run_way(args, model: str, budget: str, seed: int, way: str) -> dict:
    """One reduce of the case, its numbers as the table shows them."""
    rate = WAYS[way]
    folder = Path(args.out) / f"{model}-{budget.replace('=', '')}-s{seed}" / way
    r: ReduceResult = reduce(
        ReduceRequest(
            model,
            budget,
            "cifar10",
            seeds=[seed],
            out=folder,
            report=False,
            export=False,
            halving=None if rate is None else Halving(rate),
            train={
                "epochs": args.epochs,
                "limit_train": args.limit_train,
                "limit_test": args.limit_test,
                "data_dir": args.data,
            },
        ),
        progress=False,
    )
    w = r.winner
    planned = len([c for c in r.candidates if c.status in ("done", "stopped")]) * args.epochs
    trained = r.halving["epochs_trained"] if r.halving else planned
    return {
        "way": way,
        "winner": None if w is None else w.template,
        "val_acc": None if w is None else w.val_acc,
        "test_acc": None if w is None else w.final_acc,
        "epochs_trained": trained,
        "epochs_plain": r.halving["epochs_plain"] if r.halving else planned,
        "rungs": None if r.halving is None else r.halving["rungs"],
    }


def summarise(cases: list[dict]) -> dict:
    """Per halving rate: mean regret (points of test and validation accuracy) and share of epochs saved."""
    out = {}
    for way in ("halving2", "halving3"):
        done = [c for c in cases if way in c["ways"] and c["ways"][way]["test_acc"] is not None]
        if not done:
            continue
        out[way] = {
            "cases": len(done),
            "mean_test_regret_points": round(statistics.fmean(c["ways"][way]["test_regret"] for c in done), 2),
            "mean_val_regret_points": round(statistics.fmean(c["ways"][way]["val_regret"] for c in done), 2),
            "same_winner": sum(c["ways"][way]["winner"] == c["ways"]["plain"]["winner"] for c in done),
            "mean_epochs_saved": round(
                statistics.fmean(
                    1 - c["ways"][way]["epochs_trained"] / c["ways"]["plain"]["epochs_trained"] for c in done
                ),
                3,
            ),
        }
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", nargs="+", default=["vgg19", "mobilenet"])
    p.add_argument("--budgets", nargs="+", default=["params=50K", "params=100K"])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--epochs", type=int, default=9, help="9: the least --halving 3's three rungs allow")
    p.add_argument("--limit-train", type=int, default=2500)
    p.add_argument("--limit-test", type=int, default=1000)
    p.add_argument("--data", default=str(SHARED_CIFAR))
    p.add_argument("--out", default=str(REPO / "runs" / "halving-study"))
    p.add_argument("--keep", metavar="FILE", help="an earlier halving_study.json whose other cases are kept")
    add_write_argument(p)
    args = p.parse_args(argv)
    kept, args.kept_from = _kept(args)
    cases = list(kept)
    for model in args.models:
        for budget in args.budgets:
            for seed in args.seeds:
                ways = {way: run_way(args, model, budget, seed, way) for way in WAYS}
                plain = ways["plain"]
                for w in ways.values():
                    for k in ("test", "val"):
                        a, b = plain[f"{k}_acc"], w[f"{k}_acc"]
                        w[f"{k}_regret"] = None if a is None or b is None else round(100 * (a - b), 2)
                cases.append({"model": model, "budget": budget, "seed": seed, "ways": ways})
                print(
                    model,
                    budget,
                    seed,
                    {k: (v["winner"], _pct(v["test_acc"]), v["epochs_trained"]) for k, v in ways.items()},
                    flush=True,
                )
                if args.write:
                    _write(args, cases)
    print(summarise(cases))
    return 0


def _kept(args) -> tuple[list[dict], str | None]:
    """The cases of ``--keep``'s file that this invocation does not run, and the command that ran them."""
    if not args.keep:
        return [], None
    earlier = read(args.keep)
    if earlier["numbers"]["epochs"] != args.epochs or earlier["numbers"]["limit_train"] != args.limit_train:
        raise SystemExit(f"--keep {args.keep}: its cases ran another scale (epochs, limit_train); not mixed")
    now = {(m, b, s) for m in args.models for b in args.budgets for s in args.seeds}
    cases = [c for c in earlier["numbers"]["cases"] if (c["model"], c["budget"], c["seed"]) not in now]
    return cases, earlier["command"]


def _write(args, cases: list[dict]) -> None:
    rows = [
        [
            c["model"],
            c["budget"],
            c["seed"],
            way,
            w["winner"],
            _pct(w["val_acc"]),
            _pct(w["test_acc"]),
            w["test_regret"],
            w["epochs_trained"],
        ]
        for c in cases
        for way, w in c["ways"].items()
    ]
    s = summarise(cases)
    words = "; ".join(
        f"R={w[-1]}: mean regret {v['mean_test_regret_points']:+.2f} test points "
        f"({v['mean_val_regret_points']:+.2f} val), same winner in {v['same_winner']} of {v['cases']}, "
        f"{100 * v['mean_epochs_saved']:.0f}% of the epochs saved"
        for w, v in s.items()
    )
    write(
        args.write,
        "halving_study",
        title=f"Successive halving against plain reduce on CIFAR-10 ({len(cases)} cases, {args.epochs} epochs, "
        f"{args.limit_train} training images)",
        numbers={
            "epochs": args.epochs,
            "limit_train": args.limit_train,
            "limit_test": args.limit_test,
            "rungs": 3,
            "cases": cases,
            "summary": s,
        },
        seeds=args.seeds,
        views=f"CIFAR-10: a seeded sample of {args.limit_train} training images, 10% of them held out for "
        f"validation (what ranks); {args.limit_test} test images (final accuracy)",
        note=f"{words}. Regret: the plain winner's accuracy less the halving winner's, in points (negative: "
        "halving's winner tests better). Few epochs on a subset: the first rung ranks after "
        f"{', '.join(f'{rung_epochs(args.epochs, r, 3)[0]} (R={r})' for r in (2, 3))} of {args.epochs} epochs, "
        "where a candidate's rank is still far from its final one; these numbers hold at this scale only."
        + (
            f" The {', '.join(sorted({c['model'] for c in cases if c['model'] not in args.models}))} cases were run "
            f"by `{args.kept_from}` and kept from its file."
            if args.kept_from
            else ""
        ),
        table={
            "columns": [
                "model",
                "budget",
                "seed",
                "way",
                "winner",
                "val %",
                "test %",
                "test regret (points)",
                "epochs trained",
            ],
            "rows": rows,
        },
    )


if __name__ == "__main__":
    sys.exit(main())
