"""``filter-templates templates``: per-layer counts, parameters and FLOPs of every template, and with
``--measure`` training memory and latency too."""

from __future__ import annotations

import argparse
import json
from typing import Any

from filter_templates.cli.args import (
    add_latency_args,
    add_measure_args,
    add_model_args,
    arch_options,
    latency_from_args,
    model_from_args,
    positive_float,
    positive_int,
)
from filter_templates.cli.fit_cmd import latency_caption
from filter_templates.core.errors import UsageError
from filter_templates.core.images import IMAGE_SIZE
from filter_templates.core.messages import note, warn
from filter_templates.method.compare import TOLERANCE, compare_published, markdown_table
from filter_templates.method.measure import arch_flops, arch_params, mib, resolve_device, resources
from filter_templates.method.published import study_families
from filter_templates.method.runtimes import open_runtime, ranking_noise, time_archs
from filter_templates.method.templates import template_names
from filter_templates.models import get_family


def add_parser(sub: argparse._SubParsersAction, help: str) -> None:
    p = sub.add_parser(
        "templates",
        help=help,
        description="Show, for every template (or those named), the per-layer filter counts, "
        "parameters and forward FLOPs per image of the model at a width multiplier; "
        "with --measure also training memory per batch and inference latency.",
    )
    add_model_args(p, template_many=True, model_required=False)
    p.add_argument("--width", type=positive_float, default=1.0, metavar="W", help="width multiplier (default: 1.0)")
    p.add_argument(
        "--measure",
        action="store_true",
        help="also measure training memory of one SGD step at --batch-size (CPU: exact account of "
        "parameters, gradients, momentum, buffers, input and tensors saved for backward; CUDA: "
        "allocator peak) and latency in --runtime at --latency-batch, every template timed "
        "alternately in rounds",
    )
    add_measure_args(p)
    add_latency_args(p)
    p.add_argument(
        "--divisors",
        type=positive_int,
        nargs="+",
        metavar="K",
        help="with --measure: build every template with each of these divisors (e.g. 1 8 16) and time them all "
        "together: the runtime's latency staircase, what rounding every layer to a multiple of K buys",
    )
    p.add_argument(
        "--compare-published",
        action="store_true",
        help="compare parameter counts with the study's Table 2: ours (equations), as published "
        "(--as-published) and the paper's, for --model or all four study families",
    )
    p.add_argument("--markdown", action="store_true", help="with --compare-published: print a Markdown table")
    p.add_argument("--json", action="store_true", help="print one JSON document on stdout")
    p.set_defaults(run=run)


def rows(args: argparse.Namespace) -> list[dict]:
    args.model = model_from_args(args)
    size = args.image_size or IMAGE_SIZE
    measure = getattr(args, "measure", False)
    device = resolve_device(getattr(args, "device", "cpu")) if measure else None
    names = args.templates or template_names()
    if not args.templates and get_family(args.model, size).depth < 3:  # a small user model: the parabolas need 3 layers
        names = [n for n in names if n not in ("quadratic", "negative-quadratic")]
        note(
            f"note: quadratic and negative-quadratic need at least 3 template layers; "
            f"{args.model} has {get_family(args.model, size).depth}"
        )
    divisors = getattr(args, "divisors", None) or [args.divisor]
    if len(divisors) > 1 and not measure:
        raise UsageError("--divisors shows each divisor's measured latency: add --measure")
    options = arch_options(args, image_size=size)
    archs = [
        options.replace(divisor=k).arch(args.model, name, args.width, args.classes) for name in names for k in divisors
    ]  # every name checked before any slow measurement
    runtime = open_runtime(latency_from_args(args)) if measure else None  # a missing runtime: one line, now
    out = []
    for name, arch in zip([n for n in names for _ in divisors], archs):
        row: dict[str, Any] = {
            "name": name,
            "filters": list(arch.filters),
            "params": arch_params(arch),
            "flops": arch_flops(arch),
        }
        if len(divisors) > 1:
            row["divisor"] = arch.divisor
        if measure:
            assert device is not None  # resolved above when measuring
            res = resources(arch, args.batch_size, device, latency=False)
            row["train_memory_bytes"], row["train_memory_method"] = (
                res["train_memory_bytes"],
                res["train_memory_method"],
            )
        out.append(row)
    if runtime is not None:
        note(f"timing {len(archs)} models in {runtime.name}, {runtime.setting.rounds} alternating rounds")
        for row, rec in zip(out, time_archs(runtime, archs)):
            row["latency"] = rec
        labels = [f"{r['name']}" + (f" /{r['divisor']}" if "divisor" in r else "") for r in out]
        line = ranking_noise(labels, [r["latency"] for r in out])
        if line:
            warn(line)
    return out


def compare(args: argparse.Namespace) -> int:
    if args.model is not None and args.model not in study_families():
        raise UsageError(
            f"--compare-published takes a study family ({', '.join(study_families())}), not {args.model!r}"
        )
    table = compare_published([args.model] if args.model else None, args.classes)
    if args.json:
        print(json.dumps({"classes": args.classes, "tolerance": TOLERANCE, "cells": table}))
    elif args.markdown:
        print(markdown_table(table))
    else:
        print(
            f"parameters (millions, {args.classes} classes): ours = the equations, as published = --as-published, "
            f"paper = the study's Table 2; x: more than {TOLERANCE / 1e6:g}M from the paper"
        )
        print(f"{'model':<10}  {'template':<18}  {'ours':>7}    {'as pub.':>7}    {'paper':>5}")
        for r in table:
            mark = "   no configuration in the study's code gives this count" if r["unreproduced"] else ""
            print(
                f"{r['model']:<10}  {r['template']:<18}  {r['params'] / 1e6:>7.2f} {' ' if r['match'] else 'x'}  "
                f"{r['params_as_published'] / 1e6:>7.2f} {' ' if r['match_as_published'] else 'x'}  "
                f"{r['paper_params'] / 1e6:>5.1f}{mark}"
            )
        print(
            f"cells within {TOLERANCE / 1e6:g}M of the paper: ours {sum(r['match'] for r in table)}/{len(table)}, "
            f"as published {sum(r['match_as_published'] for r in table)}/{len(table)}"
        )
    return 0


def run(args: argparse.Namespace) -> int:
    if args.compare_published:
        return compare(args)
    if args.model is None:
        raise UsageError("--model is required (or use --compare-published)")
    table = rows(args)
    where = table[0].get("latency") if table else None
    if args.json:
        doc = {
            "model": args.model,
            "width": args.width,
            "classes": args.classes,
            "image_size": args.image_size or IMAGE_SIZE,
        }
        if where:
            doc["batch_size"] = args.batch_size
        doc["templates"] = table
        layers = _layers(args.model, args.image_size or IMAGE_SIZE)
        if layers is not None:
            doc["layers"] = layers
        print(json.dumps(doc))
        return 0

    size = args.image_size or IMAGE_SIZE
    fam = get_family(args.model, size)
    print(
        f"{fam.description}; width {args.width:g}, {args.classes} classes, {size}x{size} px input; "
        f"one count per {fam.unit}"
    )
    w = max(len(r["name"]) for r in table)
    b = args.batch_size
    div = "divisor" in table[0]
    extra = f"  {'train MiB':>9}  {'ms@' + str(where['batch']):>8}  {'± ms':>6}" if where else ""
    print(f"{'template':<{w}}{'  div' if div else ''}  {'params':>12}  {'GFLOPs':>8}{extra}  filters")
    for r in table:
        extra = ""
        if where:
            lat = r["latency"]
            extra = (
                f"  {mib(r['train_memory_bytes']):>9.1f}  {lat['median_s'] * 1e3:>8.4g}  {lat['spread_s'] * 1e3:>6.2g}"
            )
        k = f"  {r['divisor']:>3}" if div else ""
        print(
            f"{r['name']:<{w}}{k}  {r['params']:>12,}  {r['flops'] / 1e9:>8.3f}{extra}  {' '.join(map(str, r['filters']))}"
        )
    if where:
        print(f"memory: {table[0]['train_memory_method']} of one SGD step at batch {b}; {latency_caption(where)}")
    layers = _layers(args.model, size)
    if layers is not None:
        print("template layers (name, base count, the modules it holds: their widths follow its count):")
        for i, layer in enumerate(layers, start=1):
            print(f"  {i:>3}  {layer['name']}  {layer['base']:>6}  {' '.join(layer['modules'])}")
    return 0


def _layers(model: str, image_size: int) -> list[dict] | None:
    """One entry per template layer of a user's model: its base width and the modules that share it."""
    fam = get_family(model, image_size)
    modules = getattr(fam, "layer_modules", ())
    if not modules:
        return None
    return [{"name": n, "base": b, "modules": list(m)} for n, b, m in zip(fam.layer_names, fam.base_filters, modules)]
