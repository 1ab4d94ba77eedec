"""``filter-templates probe``: a model's templates at a grid of widths as ONNX files, with the one
standalone script that times them on a target device and writes the latency table ``fit
--latency-table`` reads."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Callable

from filter_templates.cli.args import add_model_args, arch_options, model_from_args, positive_float
from filter_templates.core.errors import UsageError
from filter_templates.core.images import IMAGE_SIZE
from filter_templates.core.progress import Progress
from filter_templates.core.rundir import check_writable, writing
from filter_templates.method.arch import Arch
from filter_templates.method.deploy_timing import MANIFEST, TABLE
from filter_templates.method.fit import LATENCY_TOLERANCE, parse_budget
from filter_templates.method.latency_table import DEFAULT_WIDTHS, SCRIPT, read_table, refined_widths, write_probe
from filter_templates.method.onnx_model import ONNX_EXTRA, onnx_available
from filter_templates.method.templates import template_names


def add_parser(sub: argparse._SubParsersAction, help: str) -> None:
    p = sub.add_parser(
        "probe",
        help=help,
        description="Write, for every template (or those named), the model at each of a grid of widths as "
        f"ONNX (as `export` writes it), a {MANIFEST} and one script, {SCRIPT}, that needs only the runtime "
        f"and numpy. Copy the folder to the target device and run `python3 {SCRIPT} --runtime onnxruntime "
        f"--threads 1` there: it times every model alternately and writes {TABLE}, which `fit`, `sweep` and "
        "`reduce` take as --latency-table.",
    )
    add_model_args(p, template_many=True)
    p.add_argument(
        "--widths",
        type=positive_float,
        nargs="+",
        default=list(DEFAULT_WIDTHS),
        metavar="W",
        help=f"width multipliers to probe (default: {len(DEFAULT_WIDTHS)} widths from {DEFAULT_WIDTHS[0]:g} "
        f"to {DEFAULT_WIDTHS[-1]:g}, about 20%% apart); a budget is fitted between them",
    )
    p.add_argument(
        "--refine",
        metavar="TABLE",
        help=f"a {TABLE} of this model: probe instead every 5%% width step between the two probed widths around "
        "each --budget (latency climbs in stairs that a 20%% grid can miss), to fit those budgets to one step",
    )
    p.add_argument(
        "--budget",
        action="append",
        metavar="latency=T",
        help="with --refine: a latency budget to refine around (repeatable)",
    )
    p.add_argument("--out", required=True, metavar="DIR", help="the probe folder to write (new or empty)")
    p.add_argument("--json", action="store_true", help="print the manifest as one JSON document on stdout")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    args.model = model_from_args(args)
    out = Path(args.out)
    check_writable(out, "--out", folder=True)
    if out.is_dir() and any(out.iterdir()):
        raise UsageError(f"--out {out} is not empty; give a new folder (nothing was written)")
    if not onnx_available():
        raise UsageError(ONNX_EXTRA)
    size = args.image_size or IMAGE_SIZE
    names = args.templates or template_names()
    options = arch_options(args, image_size=size)
    widths = {name: sorted(set(args.widths)) for name in names}
    if args.refine is not None or args.budget:
        widths = _refined(args, names, lambda t, w: options.arch(args.model, t, w, args.classes))
    archs = [
        options.arch(args.model, name, w, args.classes) for name in names for w in widths[name]
    ]  # every name and width checked before any export
    with writing("--out", out):
        manifest = write_probe(out, archs, lambda a: Progress(a, desc="probe: export"))
    if args.json:
        print(json.dumps(manifest))
        return 0
    files = len({e["file"] for e in manifest["entries"]})
    print(f"wrote {files} ONNX models ({len(names)} templates, {len(archs)} widths), {out / MANIFEST}, {out / SCRIPT}")
    print(f"on the target: python3 {SCRIPT} --runtime onnxruntime|openvino --threads N [--batch 1]  -> {TABLE}")
    print(f"then: filter-templates fit --model {args.model} --budget latency=... --latency-table {out / TABLE}")
    return 0


def _refined(
    args: argparse.Namespace, names: list[str], arch_at: Callable[[str, float], Arch]
) -> dict[str, list[float]]:
    """Per template, the width steps ``--refine`` asks for around each ``--budget``."""
    if args.refine is None or not args.budget:
        raise UsageError("--refine and --budget go together: --refine TABLE --budget latency=T")
    if args.widths != list(DEFAULT_WIDTHS):
        raise UsageError("--widths and --refine exclude each other: --refine picks the widths")
    budgets = [parse_budget(b) for b in args.budget]
    if any(b.key != "latency" for b in budgets):
        raise UsageError(f"--refine refines latency budgets, got {', '.join(str(b) for b in budgets)}")
    table = read_table(args.refine, "--refine")
    table.check(arch_at, names)
    limits = [b.limit(LATENCY_TOLERANCE) for b in budgets]
    return {name: refined_widths(table, name, limits) for name in names}
