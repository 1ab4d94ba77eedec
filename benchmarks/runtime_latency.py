"""The five VGG-19 templates at one width, in eager PyTorch, onnxruntime and OpenVINO, at batch 1 and 64.

All fifteen models of one batch size (five templates x three runtimes) are timed together,
alternately in rounds (``runtimes.time_models``): a burst of load from another process lands on
every model of that round alike. Each figure is the median over rounds of the per-call time, with
the inter-quartile range over rounds as its spread; the machine's load average is recorded before
and after each batch size. The question it answers: does the templates' latency ranking change
between runtimes (and between batch 1 and 64)?

    nice -n 10 python benchmarks/runtime_latency.py [--width 0.25] [--threads 1] [--rounds 15] [--write docs/results/]
"""

from __future__ import annotations

import argparse
import os

from results_file import add_write_argument, write

from filter_templates.method.arch import make_arch
from filter_templates.method.runtimes import RUNTIMES, LatencySetting, open_arch, open_runtime, time_models
from filter_templates.method.templates import template_names


def measure(width: float, batch: int, threads: int, rounds: int) -> dict[str, dict[str, dict]]:
    """{runtime: {template: record}} for every template and runtime at ``batch``, timed together."""
    archs = {t: make_arch("vgg19", t, width, 10) for t in template_names()}
    runtimes = [open_runtime(LatencySetting(r, batch, threads, "cpu", rounds)) for r in RUNTIMES]
    keys, calls = [], []
    for rt in runtimes:
        for t, arch in archs.items():
            keys.append((rt, t))
            calls.append(open_arch(rt, arch))
    timed = time_models(runtimes[0], calls)
    out: dict[str, dict[str, dict]] = {rt.name: {} for rt in runtimes}
    for (rt, t), timing in zip(keys, timed):
        out[rt.name][t] = rt.record(timing)
    return out


def ranking(by_template: dict[str, dict]) -> list[str]:
    return sorted(by_template, key=lambda t: by_template[t]["median_s"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--width", type=float, default=0.25, help="width multiplier of every template (default: 0.25)")
    ap.add_argument("--threads", type=int, default=1, help="threads of every runtime (default: 1)")
    ap.add_argument("--rounds", type=int, default=15, help="alternating rounds (default: 15)")
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 64], help="batch sizes (default: 1 64)")
    add_write_argument(ap)
    args = ap.parse_args()

    results, loads, rankings = {}, {}, {}
    for batch in args.batches:
        before = os.getloadavg()[0]
        results[batch] = measure(args.width, batch, args.threads, args.rounds)
        loads[batch] = {"before": before, "after": os.getloadavg()[0]}
        rankings[batch] = {rt: ranking(by_t) for rt, by_t in results[batch].items()}
        print(f"batch {batch} (load {before:.1f} -> {loads[batch]['after']:.1f}):")
        for rt, order in rankings[batch].items():
            rec = results[batch][rt]
            cells = ", ".join(f"{t} {rec[t]['median_s'] * 1e3:.3g}±{rec[t]['spread_s'] * 1e3:.2g}" for t in order)
            print(f"  {rt:<12} {cells} ms")
    changes = {b: len({tuple(o) for o in r.values()}) > 1 for b, r in rankings.items()}
    for b, changed in changes.items():
        print(f"batch {b}: the ranking {'changes' if changed else 'is the same'} between runtimes")

    names = template_names()
    rows = []
    for t in names:
        row: list = [t]
        for batch in args.batches:
            for rt in RUNTIMES:
                rec = results[batch][rt][t]
                row.append(f"{rec['median_s'] * 1e3:.3g} ± {rec['spread_s'] * 1e3:.2g}")
        rows.append(row)
    columns = ["template"] + [f"{rt} b{b} (ms)" for b in args.batches for rt in RUNTIMES]
    versions = {rt: results[args.batches[0]][rt][names[0]]["version"] for rt in RUNTIMES}
    if args.write:
        write(
            args.write,
            "runtime_latency",
            title=f"VGG-19 templates at width {args.width:g}: latency in eager PyTorch, onnxruntime and OpenVINO",
            numbers={
                "width": args.width,
                "threads": args.threads,
                "rounds": args.rounds,
                "versions": versions,
                "load_average": {str(b): v for b, v in loads.items()},
                "ranking": {str(b): r for b, r in rankings.items()},
                "ranking_changes_between_runtimes": {str(b): v for b, v in changes.items()},
                "records": {str(b): r for b, r in results.items()},
            },
            seeds=[],
            views="no data: random weights, one fixed random input",
            note=(
                f"Median ± inter-quartile range over {args.rounds} alternating rounds, {args.threads} thread(s), "
                "all fifteen models of a batch size timed together; "
                + (
                    "the machine was shared with other jobs (load averages in numbers.load_average), so spreads are wide. "
                    if max(v for x in loads.values() for v in x.values()) > (os.cpu_count() or 1)
                    else "the machine was otherwise idle (load averages in numbers.load_average). "
                )
                + "Ranking (fastest first) per runtime in numbers.ranking."
            ),
            table={"columns": columns, "rows": rows},
        )


if __name__ == "__main__":
    main()
