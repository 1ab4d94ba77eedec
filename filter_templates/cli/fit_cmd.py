"""``filter-templates fit``: the widest model of each template that fits a budget (no training)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from filter_templates.cli.args import (
    add_latency_args,
    add_measure_args,
    add_model_args,
    arch_options,
    fraction,
    latency_from_args,
    model_from_args,
    positive_float,
)
from filter_templates.core import units
from filter_templates.core.messages import warn
from filter_templates.core.rundir import atomic_write_json, check_writable, portable, writing
from filter_templates.method.fit import (
    LATENCY_TOLERANCE,
    Budget,
    FitRequest,
    FitResult,
    fit,
    format_value,
    parse_budget,
)
from filter_templates.method.latency_table import read_table
from filter_templates.method.measure import mib
from filter_templates.method.runtimes import load_text
from filter_templates.models import MAX_WIDTH, get_family

BUDGET_HELP = (
    "the budget, KEY=VALUE. KEY: params or flops (forward FLOPs per image at --image-size, default 32x32), "
    "counts with an optional K/M/G/T suffix, 1000-based (params=1M, flops=100M); memory, bytes of one SGD training "
    "step at --batch-size (CPU: exact account; CUDA: allocator peak), K/M/G/T = 1000-based, "
    "Ki/Mi/Gi/Ti = 1024-based, optional trailing B (memory=512M, memory=2GiB); latency, seconds of "
    "one call of --latency-batch images (default 1) in --runtime at --threads, with suffix s, ms or us "
    "(latency=1ms)"
)


def add_parser(sub: argparse._SubParsersAction, help: str) -> None:
    p = sub.add_parser(
        "fit",
        help=help,
        description="For every template (or those named), find by bisection on the real rounded model the "
        "largest width multiplier whose model stays within the budget. Parameters and FLOPs are "
        "exact (to 1e-4 relative in width); memory is the exact CPU account or the CUDA peak; "
        "latency is measured at every probe, with a noise tolerance (see --latency-tolerance).",
    )
    add_model_args(p, template_many=True)
    p.add_argument("--budget", required=True, metavar="KEY=VALUE", help=BUDGET_HELP)
    add_measure_args(p)
    add_latency_args(p, table=True)
    p.add_argument(
        "--latency-tolerance",
        type=fraction,
        default=LATENCY_TOLERANCE,
        metavar="FRAC",
        help=f"latency probes fit only when their median is at most budget*(1-FRAC), a margin for "
        f"timing noise (default: {LATENCY_TOLERANCE:g}, i.e. {LATENCY_TOLERANCE * 100:g}%%)",
    )
    p.add_argument(
        "--max-width",
        type=positive_float,
        default=MAX_WIDTH,
        metavar="W",
        help=f"largest width multiplier considered (default: {MAX_WIDTH:g}); a budget that even this "
        "width meets is reported at this width with a warning",
    )
    p.add_argument(
        "--measure", action="store_true", help="also measure training memory and latency of every fitted model"
    )
    p.add_argument(
        "--save",
        metavar="DIR",
        help="write one JSON config per fitted model, DIR/<model>-<template>-w<width>.json "
        '({"arch": ..., "fit": ...}; \'train --config\' reads its arch)',
    )
    p.add_argument("--json", action="store_true", help="print one JSON document on stdout")
    p.set_defaults(run=run)


def config_name(model: str, template: str, width: float) -> str:
    """``<model>-<template>-w<width>.json``, with characters unsafe in file names replaced."""
    return f"{portable(model) or 'model'}-{portable(template) or 'custom'}-w{width:g}.json"


def run(args: argparse.Namespace) -> int:
    args.model = model_from_args(args)
    options = arch_options(args)
    size = options.image_size
    budget = parse_budget(args.budget)
    latency = latency_from_args(args)
    table = read_table(args.latency_table) if args.latency_table else None
    if args.save:
        check_writable(args.save, "--save", folder=True)  # before the fit, which may take a while
    results = fit(
        FitRequest(
            args.model,
            budget,
            args.templates,
            classes=args.classes,
            options=options,
            batch_size=args.batch_size,
            device=args.device,
            threads=args.threads,
            latency_tolerance=args.latency_tolerance,
            max_width=args.max_width,
            measure=args.measure,
            latency=latency,
            latency_table=table,
        )
    )
    for r in results:
        if r.note:
            warn(f"{r.template}: {r.note}")

    fits = [r.to_dict() for r in results]
    if args.save:
        out = Path(args.save)
        with writing("--save", out):
            out.mkdir(parents=True, exist_ok=True)
            for r, d in zip(results, fits):
                path = out / config_name(args.model, r.template, r.width)
                doc = {"arch": r.arch.to_dict(), "fit": {"budget": budget.to_dict(), "resources": r.resources}}
                atomic_write_json(path, doc)
                d["config"] = str(path)

    if args.json:
        print(json.dumps({"model": args.model, "budget": budget.to_dict(), "image_size": size, "fits": fits}))
        return 0
    _print_fits(args, budget, results, fits, size)
    return 0


def _print_fits(
    args: argparse.Namespace, budget: Budget, results: list[FitResult], fits: list[dict], size: int
) -> None:
    """The fitted widths as a table on stdout, with where latency and memory were measured."""
    fam = get_family(args.model, size)
    print(
        f"{fam.description}; {args.classes} classes; {size}x{size} px input; budget {budget.key} <= {format_value(budget.key, budget.value)}"
    )
    if budget.key == "latency":
        _print_latency_fits(budget, results, fits)
        return
    w = max(8, *(len(r.template) for r in results))
    measured = any("train_memory_bytes" in d for d in fits)
    timed = any("latency_s" in d for d in fits)
    # FLOPs in the budget's own prefix (flops=20M: MFLOPs), else in that of the smallest model
    prefix, scale = (
        units.prefix_of(budget.value) if budget.key == "flops" else units.prefix_for(d["flops"] for d in fits)
    )
    flops_head = f"{prefix}FLOPs"
    head = f"{'template':<{w}}  {'width':>9}  {'params':>12}  {flops_head:>8}"
    if measured:
        head += f"  {'train MiB':>9}"
    if timed:
        head += f"  {f'ms@{args.batch_size}':>8}  {'ms@1':>7}"
    print(head + f"  {'budget':>7}  filters")
    for r, d in zip(results, fits):
        line = f"{r.template:<{w}}  {r.width:>9.6g}  {d['params']:>12,}  {d['flops'] / scale:>8.2f}"
        if measured:
            line += f"  {mib(d['train_memory_bytes']):>9.1f}" if "train_memory_bytes" in d else f"  {'':>9}"
        if timed:
            lat = d.get("latency_s", {})
            line += (
                f"  {lat[f'batch{args.batch_size}'] * 1e3:>8.2f}  {lat['batch1'] * 1e3:>7.2f}"
                if lat
                else f"  {'':>8}  {'':>7}"
            )
        used = _used(budget.key, d)
        line += f"  {used / budget.value:>6.1%}" if used is not None else f"  {'':>7}"
        print(line + f"  {' '.join(map(str, d['filters']))}{'  (capped)' if r.capped else ''}")
    if timed or budget.key == "memory":
        d0 = fits[0]
        print(
            f"measured on {d0.get('device')} ({d0.get('device_name')}), {d0.get('threads')} threads, "
            f"batch {args.batch_size}"
        )
    for d in fits:
        if "config" in d:
            print(f"saved {d['config']}")


def _print_latency_fits(budget: Budget, results: list[FitResult], fits: list[dict]) -> None:
    """Latency fits: each chosen model's latency, spread and margin, and the next width step's."""
    w = max(8, *(len(r.template) for r in results))
    print(
        f"{'template':<{w}}  {'width':>7}  {'params':>11}  {'GFLOPs':>7}  {'ms':>8}  {'± ms':>6}  {'margin':>6}  "
        f"{'next w':>7}  {'next ms':>8}  filters"
    )
    for r, d in zip(results, fits):
        lat, nxt = d["latency"], d.get("next_step")
        gap = "(capped)" if r.capped else "-"  # a table fit interpolates: it times no next step
        after = f"  {nxt['width']:>7.4g}  {nxt['median_s'] * 1e3:>8.4g}" if nxt else f"  {gap:>7}  {'':>8}"
        print(
            f"{r.template:<{w}}  {r.width:>7.4g}  {d['params']:>11,}  {d['flops'] / 1e9:>7.3f}  "
            f"{lat['median_s'] * 1e3:>8.4g}  {lat['spread_s'] * 1e3:>6.2g}  {lat['margin']:>6.1%}{after}  "
            f"{' '.join(map(str, d['filters']))}"
        )
    print(latency_caption(fits[0]["latency"]))
    for d in fits:
        if "config" in d:
            print(f"saved {d['config']}")


def latency_caption(rec: dict) -> str:
    """One line saying how a latency record was measured."""
    return (
        f"latency: {rec['runtime']} {rec['version']} on {rec['device']} ({rec['device_name']}), batch {rec['batch']}, "
        f"{rec['threads']} thread{'s' if rec['threads'] != 1 else ''}; median of {rec['rounds']} alternating rounds, "
        f"± their inter-quartile range{load_text(rec)}"
    )


def _used(key: str, d: dict):
    if key in ("params", "flops"):
        return d[key]
    if key == "memory":
        return d.get("train_memory_bytes")
    lat = d.get("latency_s") or {}
    return lat.get(f"batch{d.get('batch_size', 64)}")
