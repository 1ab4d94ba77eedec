"""``filter-templates report``: tables and figures of a results store, in one folder."""

from __future__ import annotations

import argparse
import json

from filter_templates.core.errors import UsageError
from filter_templates.report import METRICS, make_report
from filter_templates.report.tensorboard import TRACKERS_TO, write_tensorboard
from filter_templates.sweep.store import DEFAULT_FILE


def add_parser(sub: argparse._SubParsersAction, help: str) -> None:
    p = sub.add_parser(
        "report",
        help=help,
        description="Write the accuracy and resource tables and the accuracy-versus-cost and filters-per-layer "
        "figures of a results store into a folder, with an index.md that shows them. Works on "
        "partial grids (missing cells are shown as missing).",
    )
    p.add_argument("--db", default=DEFAULT_FILE, metavar="FILE", help=f"results store (default: {DEFAULT_FILE})")
    p.add_argument("--out", default="report", metavar="DIR", help="output folder (default: report/)")
    p.add_argument(
        "--metric",
        choices=METRICS,
        default="final",
        help="which test accuracy to report: after the last epoch (default), or the best test "
        "accuracy seen over the epochs (optimistic: the epoch is picked on the test set)",
    )
    p.add_argument(
        "--to",
        nargs=2,
        metavar=("TRACKER", "DIR"),
        help="instead of tables and figures, write the store's runs for a tracker: 'tensorboard DIR' writes "
        "each run with its epochs, identity (hparams) and final metrics under DIR/<store name>/ "
        "(tensorboard --logdir DIR shows them; needs the tensorboard extra)",
    )
    p.add_argument("--json", action="store_true", help="print one JSON document (the files written) on stdout")
    p.set_defaults(run=run)


def _run_to(args: argparse.Namespace) -> int:
    tracker, out = args.to
    if tracker not in TRACKERS_TO:
        raise UsageError(f"--to {tracker}: choose from {', '.join(TRACKERS_TO)}")
    written = write_tensorboard(args.db, out)
    if args.json:
        print(json.dumps({"tensorboard": [str(p) for p in written]}))
    else:
        print(f"report: {len(written)} runs written for TensorBoard under {out}; tensorboard --logdir {out}")
    return 0


def run(args: argparse.Namespace) -> int:
    if args.to:
        return _run_to(args)
    written = make_report(args.db, args.out, metric=args.metric)
    if args.json:
        print(json.dumps(written))
    else:
        n = len(written["tables"]) + len(written["figures"])
        print(f"report: {n} files in {args.out}; open {written['index']} or {written['html']}")
    return 0
