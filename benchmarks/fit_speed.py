"""How long ``fit`` takes for a params and a FLOPs budget, all five templates, every family.

The goal is under 5 s per family and budget on a 2-core CPU, so that sizing a model to a budget
is interactive. Every fit starts with empty
caches (the per-model shape cache and the per-structure FLOP tables), so each time includes the
meta-device FLOP counting of every new model structure. PyTorch's one-time lazy set-up of meta
kernels (about a second, once per process) is timed separately as "process warm-up". Both the wall
time and the process's CPU time are recorded: other jobs on the machine inflate the first, hardly
the second.

    python benchmarks/fit_speed.py [--repeat 3] [--write docs/results/]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from results_file import add_write_argument, write

from filter_templates.method import measure as M
from filter_templates.method.arch import make_arch
from filter_templates.method.fit import FitRequest, fit, parse_budget
from filter_templates.models import family_names

FLOPS_BUDGET = {"vgg19": "flops=100M", "resnet50": "flops=300M", "googlenet": "flops=300M", "mobilenet": "flops=20M"}


def clear_caches() -> None:
    M._shape.cache_clear()
    M._FLOP_TABLES.clear()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=3, help="timed runs per family and budget (median reported)")
    add_write_argument(ap)
    args = ap.parse_args()

    t = time.perf_counter()
    M.count_flops(M.meta_model(make_arch("vgg19", "base", 0.1)))
    warmup = time.perf_counter() - t
    print(f"process warm-up (first meta forward): {warmup:.2f} s")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(f"{'family':<10} {'budget':<12} {'median s':>9} {'max s':>7} {'probes':>7}  fitted / budget")
    worst = 0.0
    rows = []
    for family in family_names():
        for budget in ("params=1M", FLOPS_BUDGET.get(family, "flops=100M")):
            times, cpu, results = [], [], []
            for _ in range(args.repeat):
                clear_caches()
                t, c = time.perf_counter(), time.process_time()
                results = fit(FitRequest(family, budget, progress=False))
                times.append(time.perf_counter() - t)
                cpu.append(time.process_time() - c)
            key = budget.split("=")[0]
            value = parse_budget(budget).value
            ratios = " ".join(f"{r.resources[key] / value:.3f}" for r in results)
            probes = sum(r.probes for r in results)
            worst = max(worst, max(times))
            print(
                f"{family:<10} {budget:<12} {statistics.median(times):>9.2f} {max(times):>7.2f} {probes:>7}  {ratios}"
            )
            rows.append(
                [
                    family,
                    budget,
                    round(statistics.median(times), 2),
                    round(max(times), 2),
                    round(statistics.median(cpu), 2),
                    probes,
                ]
            )
    print(f"slowest single fit: {worst:.2f} s (goal: < 5 s)")
    if args.write:
        write(
            args.write,
            "fit_speed",
            title="Fitting a budget: seconds per family and budget, all five templates",
            numbers={
                "process_warmup_s": round(warmup, 2),
                "slowest_fit_s": round(worst, 2),
                "repeat": args.repeat,
                "goal_s": 5.0,
            },
            seeds=[],
            views="no data: fitting builds models on the meta device and counts exactly",
            note=f"Median of {args.repeat} fits from empty caches; the first meta forward of the process "
            f"({warmup:.2f} s) is counted apart.",
            table={"columns": ["family", "budget", "median s", "max s", "median CPU s", "probes"], "rows": rows},
        )


if __name__ == "__main__":
    main()
