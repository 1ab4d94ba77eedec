"""``filter-templates templates``: per-layer counts, parameters and FLOPs of every template."""

from __future__ import annotations

import argparse
import json

from .args import add_model_args, positive_float


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("templates", help="show each template's per-layer filter counts and cost",
                       description="Show, for every template (or those named), the per-layer filter counts, "
                                   "parameters and forward FLOPs per image of the model at a width multiplier.")
    add_model_args(p, template_many=True)
    p.add_argument("--width", type=positive_float, default=1.0, metavar="W", help="width multiplier (default: 1.0)")
    p.add_argument("--json", action="store_true", help="print one JSON document on stdout")
    p.set_defaults(run=run)


def rows(args: argparse.Namespace) -> list[dict]:
    from ..arch import make_arch
    from ..measure import count_flops, count_params
    from ..models import get_family
    from ..templates import template_names

    get_family(args.model)
    names = args.templates or template_names()
    out = []
    for name in names:
        arch = make_arch(args.model, name, args.width, args.classes, divisor=args.divisor, floor=args.floor)
        model = arch.build()
        out.append({"name": name, "filters": list(arch.filters), "params": count_params(model),
                    "flops": count_flops(model)})
    return out


def run(args: argparse.Namespace) -> int:
    table = rows(args)
    if args.json:
        print(json.dumps({"model": args.model, "width": args.width, "classes": args.classes, "templates": table}))
        return 0
    from ..models import get_family

    fam = get_family(args.model)
    print(f"{fam.description}; width {args.width:g}, {args.classes} classes; one count per {fam.unit}")
    w = max(len(r["name"]) for r in table)
    print(f"{'template':<{w}}  {'params':>12}  {'GFLOPs':>8}  filters")
    for r in table:
        print(f"{r['name']:<{w}}  {r['params']:>12,}  {r['flops'] / 1e9:>8.3f}  {' '.join(map(str, r['filters']))}")
    return 0
