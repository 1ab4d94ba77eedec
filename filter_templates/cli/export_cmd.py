"""``filter-templates export``: a run directory's model as ONNX or TorchScript."""

from __future__ import annotations

import argparse
import json

from filter_templates.cli.args import model_from_args
from filter_templates.export import FORMATS, export_run, run_image_size


def add_parser(sub: argparse._SubParsersAction, help: str) -> None:
    p = sub.add_parser(
        "export",
        help=help,
        description="Rebuild a run's model from its architecture record and weights "
        "(model.pt, else the last checkpoint) and export it with a dynamic batch "
        "dimension. Input: float NCHW [N, 3, S, S] at the run's image size S "
        "(32 for the built-in datasets), normalised like the training data; output: logits.",
    )
    p.add_argument(
        "--run", dest="run_dir", required=True, metavar="DIR", help="run directory written by `filter-templates train`"
    )
    p.add_argument("--format", required=True, choices=FORMATS, help="onnx (needs the onnx extra) or torchscript")
    p.add_argument("--out", metavar="FILE", help="output file (default: DIR/model.onnx or DIR/model.torchscript.pt)")
    p.add_argument(
        "--model",
        metavar="PKG.MOD:FN",
        help="the run's own network, when it was trained with --model package.module:function (a run "
        "directory never imports code by itself); refused if that code's layers changed since",
    )
    p.add_argument("--json", action="store_true", help="print one JSON document on stdout")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    if args.model:
        model_from_args(args, image_size=run_image_size(args.run_dir))
    path = export_run(args.run_dir, args.format, args.out)
    if args.json:
        print(
            json.dumps(
                {"run": str(args.run_dir), "format": args.format, "path": str(path), "bytes": path.stat().st_size}
            )
        )
    else:
        print(f"wrote {path} ({path.stat().st_size:,} bytes)")
    return 0
