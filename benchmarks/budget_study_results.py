"""The CPU budget study's results file, read from the CSV tables its report wrote.

The study (``configs/cifar10-budget-cpu.toml``: VGG-19 and MobileNet, all five templates fitted to
50K and 100K parameters, 2 epochs of the full CIFAR-10, one seed) was measured with

    filter-templates sweep --config configs/cifar10-budget-cpu.toml --db budget.sqlite --runs-dir runs/budget
    filter-templates report --db budget.sqlite --out report/budget

and its report's tables are kept in ``docs/cifar10-budget-cpu/``. This script turns those two CSV
files (accuracy by budget, and the fitted models) into the one results-file layout, naming them
as its source, so the pages render the study like every other figure:

    python benchmarks/budget_study_results.py [docs/cifar10-budget-cpu] [--write docs/results/]
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

from results_file import add_write_argument, write

TEMPLATES = ["base", "reverse", "uniform", "quadratic", "negative-quadratic"]
SWEEP = (
    "filter-templates sweep --config configs/cifar10-budget-cpu.toml --db budget.sqlite --runs-dir runs/budget; "
    "filter-templates report --db budget.sqlite --out report/budget"
)


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("folder", nargs="?", default="docs/cifar10-budget-cpu", help="the report's CSV tables")
    add_write_argument(ap)
    args = ap.parse_args(argv)

    folder = Path(args.folder)
    acc_csv, fits_csv = folder / "accuracy_by_budget_cifar10.csv", folder / "fits_by_budget_cifar10.csv"
    acc = read_csv(acc_csv)
    fits = read_csv(fits_csv)
    rows = [
        [
            r["family"],
            f"{r['budget_key']} <= {int(float(r['budget_value'])):,}",
            *[float(r[t]) for t in TEMPLATES],
            r["best"],
        ]
        for r in acc
    ]
    fitted = [
        {
            "family": r["family"],
            "budget": f"{r['budget_key']}={int(float(r['budget_value']))}",
            "template": r["template"],
            "width": float(r["width"]),
            "params": int(r["params"]),
            "flops": int(r["flops"]),
            "train_memory_bytes": int(r["train_memory_bytes"]),
            "status": r["status"],
        }
        for r in fits
    ]
    for row in rows:
        print(" ".join(str(c) for c in row))
    if args.write:
        write(
            args.write,
            "budget_study_cpu",
            title="CIFAR-10 budget study on a 2-core CPU: templates fitted to 50K and 100K parameters",
            numbers={
                "source": [str(acc_csv), str(fits_csv)],
                "measured_by": SWEEP,
                "config": "configs/cifar10-budget-cpu.toml",
                "epochs": 2,
                "batch_size": 64,
                "final_acc_percent": {f"{r[0]} {r[1]}": dict(zip(TEMPLATES, r[2:7])) for r in rows},
                "fits": fitted,
            },
            seeds=[0],
            views="CIFAR-10 test split, 10,000 images, 2 views (the image and its mirror)",
            note="Final top-1 test accuracy (%) after 2 epochs, one seed: a 10,000-image test set gives "
            "about 0.5 points of standard error per cell. Each run trained at 1 thread, two at a time, "
            "batch 64, on the 2-core CPU (the config's threads, jobs and batch_size). Read from the report's CSV tables "
            "(numbers.source); the sweep that measured them is numbers.measured_by.",
            table={"columns": ["family", "budget", *TEMPLATES, "best"], "rows": rows},
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
