"""``filter-templates tune``: measure how this machine trains fastest and keep it as its profile."""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict

from filter_templates.cli.args import (
    add_as_published,
    add_image_size_arg,
    add_model_arg,
    arch_options,
    model_from_args,
    positive_float,
    positive_int,
)
from filter_templates.core import rundir
from filter_templates.core.device import resolve_device
from filter_templates.core.errors import UsageError
from filter_templates.core.images import IMAGE_SIZE
from filter_templates.core.load import BUSY_SHARE, Load, load_average, usable_cores
from filter_templates.core.messages import note
from filter_templates.training import profile as machine_profile
from filter_templates.training.config import PROFILE_AUTO, RECIPES
from filter_templates.training.tune import (
    BF16_TOLERANCE,
    PAYBACK_EPOCHS,
    PAYBACK_IMAGES,
    TuneRequest,
    TuneResult,
    describe_machine,
    tune,
)


def add_parser(sub: argparse._SubParsersAction, help: str) -> None:
    p = sub.add_parser(
        "tune",
        help=help,
        description="Time the bare training step of every precision (fp32, bf16) x memory format x thread count "
        "(1, half, all cores) on this device, in alternating rounds, and torch.compile of the fastest; "
        f"bf16 may win only if a short fast-recipe run on digits ends within {BF16_TOLERANCE * 100:g} "
        f"points of fp32, compile only if it pays back its compile time on a {PAYBACK_EPOCHS}-epoch run "
        f"of {PAYBACK_IMAGES:,} images. Prints the table (min/median/max images/s) and writes the "
        "machine profile, which later runs on this machine (same device, cores and torch) use for "
        "every execution setting they are not given.",
    )
    add_model_arg(p, default="vgg19")
    p.add_argument("--template", default="uniform", metavar="T", help="template (default: uniform)")
    p.add_argument("--width", type=positive_float, default=0.25, metavar="W", help="width multiplier (default: 0.25)")
    add_image_size_arg(p, f"side of the square images timed (default: {IMAGE_SIZE})")
    add_as_published(p)
    p.add_argument(
        "--batch-size",
        type=positive_int,
        default=RECIPES["fast"]["batch_size"],
        metavar="N",
        help="batch size of the timed steps (default: the fast recipe's, %(default)s)",
    )
    p.add_argument("--device", default="auto", metavar="DEV", help="auto (default), cpu, cuda or cuda:N")
    p.add_argument(
        "--seconds",
        type=positive_float,
        default=60.0,
        metavar="S",
        help="how long tune takes in all, within about 20%%: the eager rounds, the bf16 check and the "
        "compile (default: 60; a part that does not fit is left out and the output says so, with how "
        "long each part took)",
    )
    p.add_argument(
        "--rounds",
        type=positive_int,
        default=3,
        metavar="R",
        help="alternating rounds over the variants (default: 3); the median round counts",
    )
    p.add_argument(
        "--compile",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also time torch.compile of the fastest variant (default: on)",
    )
    p.add_argument(
        "--profile",
        metavar="FILE",
        help="write the profile here (default: "
        "$XDG_CONFIG_HOME/filter-templates/profile.toml, else ~/.config/filter-templates/profile.toml)",
    )
    p.add_argument("--print", dest="print_only", action="store_true", help="measure and print; write nothing")
    p.add_argument(
        "--force",
        action="store_true",
        help="write the profile even from a busy machine (other processes on more than "
        f"{BUSY_SHARE * 100:.0f}%% of the cores, by the load average before or the CPU they used during); "
        "without it, tune refuses: timings taken beside other work describe the contention, not the machine",
    )
    p.add_argument("--json", action="store_true", help="print one JSON document on stdout")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    device = resolve_device(args.device)
    path = machine_profile.resolve_path(args.profile or PROFILE_AUTO)
    if not args.print_only:  # refuse a path that cannot be written, or a corrupt file, before minutes of work
        if path is None:
            raise UsageError(
                "tune writes its profile to --profile FILE; '--profile off' names none "
                "(use --print to measure without writing)"
            )
        rundir.check_writable(path, "--profile", folder=False)
        machine_profile.read(path)
    before = Load(load_average(), None, usable_cores())
    if before.busy and not (args.force or args.print_only):  # refuse before minutes of timing, not after
        raise UsageError(_busy_line(before))
    size = args.image_size or IMAGE_SIZE
    arch = arch_options(args, image_size=size).arch(model_from_args(args), args.template, args.width, 10)
    note(
        f"tune: {describe_machine(device)}; {arch.family} {arch.template} w={arch.width:g} at {size} px, "
        f"batch {args.batch_size}"
    )
    result = tune(
        TuneRequest(
            arch,
            device,
            args.batch_size,
            args.seconds,
            args.rounds,
            args.compile,
            say=lambda line: note(f"tune: {line}"),
        )
    )
    entry = result.entry(arch, args.batch_size, device)
    if result.load is not None:
        note(f"tune: {result.load.words()}")
        if result.load.busy and not (args.force or args.print_only):
            raise UsageError(_busy_line(result.load))
    written = None if args.print_only or path is None else machine_profile.write(path, entry)
    if args.json:
        print(
            json.dumps(
                {
                    "machine": entry.key,
                    "recommended": result.recommended.name,
                    "execution": asdict(entry.execution),
                    "rule": result.rule.name,
                    "variants": [t.row() for t in result.timings],
                    "reasons": result.reasons,
                    "bf16_check": result.bf16_check,
                    "seconds": round(result.seconds, 1),
                    "phases": result.phases,
                    "profile": None if written is None else str(written),
                    "load": None if result.load is None else result.load.to_dict(),
                }
            )
        )
        return 0
    _print_table(result)
    print(f"{'wrote' if written else 'would write'} {path}" + ("" if written else " (--print: nothing written)"))
    return 0


def _print_table(result: TuneResult) -> None:
    print(f"{'variant (precision/layout/threads)':<36} {'min':>9} {'median':>9} {'max':>9}  img/s")
    for t in sorted(result.timings, key=lambda t: -t.median):
        row = t.row()
        mark = ("  <- profile" if t.variant == result.recommended else "") + (
            "  <- rule" if t.variant == result.rule else ""
        )
        extra = f"  (+{row['compile_s']:.1f} s compile)" if row["compile_s"] is not None else ""
        print(f"{row['variant']:<36} {row['min']:9.1f} {row['median']:9.1f} {row['max']:9.1f}{extra}{mark}")
    for line in result.reasons:
        print(f"- {line}")
    parts = ", ".join(f"{name} {s:.0f} s" for name, s in result.phases.items())
    print(f"profile: {result.recommended.name} ({result.seconds:.0f} s of measuring: {parts})")


def _busy_line(load: Load) -> str:
    """The one-line refusal to keep timings taken beside other work."""
    return (
        f"tune: the machine is busy ({load.words().split(': ')[0]}); a profile timed now would describe the other "
        "work, not this machine: run tune when it is idle, or pass --force to write it anyway (--print writes nothing)"
    )
