"""``filter-templates probe``: a model's templates at a grid of widths as ONNX files, with the one
standalone script that times them on a target device and writes the latency table ``fit
--latency-table`` reads."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from filter_templates.cli.args import add_model_args, arch_options, model_from_args, positive_float
from filter_templates.core.errors import UsageError
from filter_templates.core.images import IMAGE_SIZE
from filter_templates.core.progress import Progress
from filter_templates.core.rundir import check_writable, writing
from filter_templates.method.deploy_timing import MANIFEST, TABLE
from filter_templates.method.latency_table import DEFAULT_WIDTHS, SCRIPT, write_probe
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
    widths = sorted(set(args.widths))
    options = arch_options(args, image_size=size)
    archs = [
        options.arch(args.model, name, w, args.classes) for name in names for w in widths
    ]  # every name and width checked before any export
    with writing("--out", out):
        manifest = write_probe(out, archs, lambda a: Progress(a, desc="probe: export"))
    if args.json:
        print(json.dumps(manifest))
        return 0
    files = len({e["file"] for e in manifest["entries"]})
    print(
        f"wrote {files} ONNX models ({len(names)} templates x {len(widths)} widths), {out / MANIFEST}, {out / SCRIPT}"
    )
    print(f"on the target: python3 {SCRIPT} --runtime onnxruntime|openvino --threads N [--batch 1]  -> {TABLE}")
    print(f"then: filter-templates fit --model {args.model} --budget latency=... --latency-table {out / TABLE}")
    return 0
