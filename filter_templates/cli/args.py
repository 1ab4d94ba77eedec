"""Argument types shared by the subcommands: each refuses bad input with a message that says what
is accepted, which the CLI turns into one error line."""

from __future__ import annotations

import argparse
from typing import Any, Callable

from filter_templates.core import trackers, validate
from filter_templates.core.errors import UsageError
from filter_templates.core.images import IMAGE_SIZE, MIN_IMAGE_SIZE
from filter_templates.data import split
from filter_templates.method.arch import ArchOptions
from filter_templates.method.runtimes import DEFAULT_ROUNDS, RUNTIMES, LatencySetting
from filter_templates.models import family_names, resolve_model
from filter_templates.models.readings import READINGS
from filter_templates.training.config import MEMORY_FORMATS, PRECISIONS, PROFILE_OFF, RECIPES


def _flag_type(kind: type, minimum: float, strict: bool = False, maximum: float | None = None) -> Callable[[str], Any]:
    """An argparse ``type`` checked by the package's validators; argparse prefixes the flag's name."""

    def convert(text: str) -> Any:
        try:
            return validate.parse(text, kind, minimum, strict=strict, maximum=maximum)
        except UsageError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    return convert


positive_float = _flag_type(float, 0.0, strict=True)
positive_int = _flag_type(int, 1)
nonnegative_float = _flag_type(float, 0.0)
nonnegative_int = _flag_type(int, 0)
fraction = _flag_type(float, 0.0, maximum=1.0)


def memory_size(text: str) -> int:
    """``--data-memory``: bytes, with an optional unit (``validate.byte_size``)."""
    try:
        return validate.byte_size(text)
    except UsageError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def val_split(text: str) -> int | float:
    """``--val-split``: a count of images or a fraction (``data.split.parse``)."""
    try:
        return split.parse(text)
    except UsageError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


VAL_SPLIT_HELP = (
    "hold out N training images (an integer) or a fraction F in (0, 1) of them, stratified by class, "
    "as a validation set to select on: every run of a dataset holds out the same images (a fixed split "
    "seed, not --seed); runs record val_acc each epoch and at the end, and train on the rest; "
    "0: none (default: {})"
)


def add_run_args(group: "argparse._ArgumentGroup", val_default: str = "0") -> None:
    """The training and data settings that `train`, `sweep` and `reduce` share. Defaults are None so
    that a value given here overrides a config file or preset, and an absent one does not;
    ``val_default`` says in the help what an absent ``--val-split`` means."""
    group.add_argument(
        "--recipe",
        choices=list(RECIPES),
        help="fast (default): warmup + linear decay to 0, "
        "Nesterov, label smoothing, milder crops, flip (and final shifted) test-time augmentation; paper: the study's SGD with lr / 10 "
        "at 50%% and 75%% of the epochs. Every setting is written to the run's config.json",
    )
    group.add_argument("--epochs", type=positive_int, metavar="N", help="epochs (default: 160)")
    group.add_argument("--batch-size", type=positive_int, metavar="N", help="batch size (default: the recipe's, 64)")
    group.add_argument(
        "--lr",
        type=positive_float,
        metavar="LR",
        help="initial (paper) or peak (fast) learning rate "
        f"(default: the recipe's: fast {RECIPES['fast']['lr']:g}, paper {RECIPES['paper']['lr']:g})",
    )
    group.add_argument(
        "--limit-train",
        type=positive_int,
        metavar="N",
        help="use only N training images (a fixed seeded random sample)",
    )
    group.add_argument(
        "--limit-test", type=positive_int, metavar="N", help="use only N test images (a fixed seeded sample)"
    )
    group.add_argument("--val-split", type=val_split, metavar="N|F", help=VAL_SPLIT_HELP.format(val_default))
    _add_data_source_args(group)
    _add_execution_args(group)
    _add_log_args(group)


def _add_data_source_args(group: "argparse._ArgumentGroup") -> None:
    """Where the images come from and how much of them may be held in memory."""
    group.add_argument(
        "--data-dir",
        metavar="DIR",
        help="where cifar10/cifar100 are (or go, with --download); for "
        "--dataset folder: your images, train/<class>/ + test/<class>/ (+ val/<class>/) or a tar of them",
    )
    add_image_size_arg(
        group,
        "for --dataset folder: resize every image once to N x N (shorter side to N, centre "
        "crop; default: the training images' own size when they all share one)",
    )
    group.add_argument(
        "--download",
        action="store_true",
        default=None,
        help="fetch the official CIFAR archive if missing (MD5-checked)",
    )
    group.add_argument(
        "--data-memory",
        type=memory_size,
        metavar="SIZE",
        help="memory the padded training split may take on the training device, e.g. 4GiB; a larger "
        "split is read batch by batch from its memory-mapped cache instead, giving the same "
        "batches (default: half of the device's free memory, shared by the run's processes)",
    )


def _add_execution_args(group: "argparse._ArgumentGroup") -> None:
    """How the run executes: device, precision, layout, compilation and the machine profile."""
    group.add_argument("--device", metavar="DEV", help="auto (default: CUDA when available), cpu, cuda or cuda:N")
    group.add_argument(
        "--precision",
        choices=["auto", *PRECISIONS],
        help="fp32 or bf16 autocast (default auto: the machine profile's, else bf16 on CUDA with bf16 "
        "and on a CPU with AMX, else fp32; never picked by a timing during the run, as it changes "
        "the numbers)",
    )
    group.add_argument(
        "--memory-format",
        choices=["auto", *MEMORY_FORMATS],
        help="tensor layout (default auto: the machine profile's, else channels_last)",
    )
    group.add_argument(
        "--compile",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="torch.compile the training step (default: the machine profile's, else off; on a CPU "
        "it needs a C++ compiler). Written to config.json: it changes the numbers",
    )
    group.add_argument(
        "--profile",
        metavar="FILE",
        help="the machine profile to read (default: "
        "$XDG_CONFIG_HOME/filter-templates/profile.toml, written by `filter-templates tune`)",
    )
    group.add_argument(
        "--no-profile",
        dest="profile",
        action="store_const",
        const=PROFILE_OFF,
        help="ignore any machine profile: settings not given follow the rule",
    )


def _add_log_args(group: "argparse._ArgumentGroup") -> None:
    """Where the runs are watched (docs/trackers.md): they never change a run's numbers or identity."""
    group.add_argument(
        "--log",
        dest="log_to",
        action="append",
        choices=list(trackers.TRACKERS),
        help="also log every run to this tracker (repeatable; each an extra: pip install "
        "'filter-templates[tensorboard]', '[mlflow]' or '[wandb]'): per epoch the loss, accuracies, "
        "learning rate and images/s, per run its identity, resources, final metrics and model",
    )
    group.add_argument(
        "--log-dir",
        metavar="DIR",
        help="the trackers' local folder: TensorBoard's event files (default: tensorboard/) and W&B's "
        "run folders (default: $WANDB_DIR, else wandb's)",
    )
    group.add_argument(
        "--tracking-uri",
        metavar="URI",
        help="MLflow's tracking store, e.g. file:mlruns or http://host:5000 (default: $MLFLOW_TRACKING_URI, "
        "else MLflow's)",
    )
    group.add_argument(
        "--project",
        metavar="NAME",
        help="the W&B project (default: $WANDB_PROJECT, else filter-templates) and the MLflow experiment's prefix",
    )


def log_setting(args: argparse.Namespace, base: Any = None) -> dict[str, Any] | None:
    """The ``log`` training setting: ``base`` (a config file's, any form :func:`trackers.normal`
    reads) with the --log flags given over it, each replacing its key (None: neither names a
    tracker setting), prepared (:func:`trackers.prepare`: trackers installed, folder absolute)."""
    before = trackers.normal(base) or {}
    flags = {"to": "log_to", "dir": "log_dir", "uri": "tracking_uri", "project": "project"}
    given = {**before, **{k: getattr(args, a) for k, a in flags.items() if getattr(args, a, None) is not None}}
    if not any(v is not None for v in given.values()):
        return None
    return trackers.prepare(given)


TEMPLATE_HELP = "template name, explicit counts 'c1,c2,...', or a function 'module:function'"
MODEL_HELP = (
    "model family ({}) or your own network as package.module:function (a callable returning an "
    "nn.Module; gets num_classes= when it takes it; imported from the current directory too)"
)


def add_fix_arg(p: "argparse.ArgumentParser | argparse._ArgumentGroup") -> None:
    """--fix MODULE: a user model's channel group that keeps its width instead of being a template layer."""
    p.add_argument(
        "--fix",
        action="append",
        metavar="MODULE",
        help="with --model package.module:function: the channel group made by this module (or by the "
        "layers inside it) keeps its width times --width instead of being a template layer "
        "(repeatable)",
    )
    add_reading_arg(p)


def add_reading_arg(p: "argparse.ArgumentParser | argparse._ArgumentGroup") -> None:
    """--reading modules|groups: which channel groups of a user's model share one template layer."""
    p.add_argument(
        "--reading",
        choices=READINGS,
        default=None,
        help="with --model package.module:function: modules (default) reads each residual stage and each "
        "multi-branch module as one template layer, its inner layers scaling in proportion (the "
        "paper's blocks as single layers); groups makes every free channel group a template layer",
    )


def model_from_args(args: argparse.Namespace, name: str | None = None, *, image_size: int | None = None) -> str:
    """The family name a model flag gives (``--model``, or ``name``: one entry of ``--models``), with
    ``--fix`` and ``--reading``: the one place a command imports a model's code. ``image_size``: the
    side a user's network is discovered on (default: ``--image-size``, else 32). ``--reading`` is
    refused with a built-in ``--model``; among ``--models`` it applies to the user's networks."""
    model = args.model if name is None else name
    reading = getattr(args, "reading", None)
    return resolve_model(
        model,
        fixed=getattr(args, "fix", None) or (),
        image_size=image_size or getattr(args, "image_size", None) or IMAGE_SIZE,
        reading=reading if name is None or ":" in model else None,
    )


def arch_options(args: argparse.Namespace, *, image_size: int | None = None) -> ArchOptions:
    """The architecture options the flags give (--divisor, --floor, --as-published, --image-size or
    ``image_size``, --reading); those a command lacks or a user left out keep their defaults."""
    return ArchOptions().replace(
        divisor=getattr(args, "divisor", None),
        floor=getattr(args, "floor", None),
        as_published=getattr(args, "as_published", None),
        image_size=image_size or getattr(args, "image_size", None),
        reading=getattr(args, "reading", None),
    )


def add_image_size_arg(p: "argparse.ArgumentParser | argparse._ArgumentGroup", help_text: str) -> None:
    """--image-size N: the side of the square images a model takes (its dataset's)."""
    p.add_argument("--image-size", type=_flag_type(int, MIN_IMAGE_SIZE), metavar="N", help=help_text)


def add_measure_args(p: argparse.ArgumentParser) -> None:
    """--batch-size, --device, --threads: where and how memory and latency are measured."""
    p.add_argument(
        "--batch-size",
        type=positive_int,
        default=64,
        metavar="N",
        help="batch size of the training memory measurement (default: 64; latency: --latency-batch)",
    )
    p.add_argument(
        "--device",
        default="cpu",
        metavar="D",
        help="cpu, cuda, cuda:N or auto (CUDA when available), for memory and latency (default: cpu)",
    )
    p.add_argument(
        "--threads",
        type=positive_int,
        default=None,
        metavar="N",
        help="CPU threads for latency measurements (default: PyTorch's, i.e. OMP_NUM_THREADS or the "
        "core count); reported with every latency",
    )


def add_latency_args(
    p: "argparse.ArgumentParser | argparse._ArgumentGroup", threads: bool = False, table: bool = False
) -> None:
    """--runtime, --latency-batch, --latency-rounds (and --latency-threads where --threads means
    something else, --latency-table where the command takes one): how latency is measured, in the
    runtime the model deploys to."""
    p.add_argument(
        "--runtime",
        default="torch",
        metavar="R",
        help=f"where latency is measured: {', '.join(RUNTIMES)} (eager PyTorch, or the model exported as "
        "`export` writes it, in onnxruntime or OpenVINO on the CPU; onnxruntime uses its CUDA provider on "
        "--device cuda) (default: torch)",
    )
    p.add_argument(
        "--latency-batch",
        type=positive_int,
        default=1,
        metavar="N",
        help="images per timed call (default: 1, what a deployed model serves one request at a time)",
    )
    p.add_argument(
        "--latency-rounds",
        type=positive_int,
        default=DEFAULT_ROUNDS,
        metavar="N",
        help=f"rounds of alternating timing; latency is the median over rounds, the spread their "
        f"inter-quartile range (default: {DEFAULT_ROUNDS})",
    )
    if threads:
        p.add_argument(
            "--latency-threads",
            type=positive_int,
            default=None,
            metavar="N",
            help="threads of the latency runtime (default: torch's thread count); recorded with every latency",
        )
    if table:
        p.add_argument(
            "--latency-table",
            metavar="FILE",
            help="fit a latency budget against this table (latency_table.json, written on the target device "
            "by the script `probe` writes) instead of timing here: interpolation over the probed widths",
        )


def latency_from_args(args: argparse.Namespace, device: str | None = None) -> LatencySetting:
    """The :class:`LatencySetting` the latency flags ask for, on ``device`` (default: ``--device``);
    checked: an unknown or missing runtime is one line."""
    threads = args.latency_threads if hasattr(args, "latency_threads") else args.threads
    where = device or getattr(args, "device", None) or "cpu"
    return LatencySetting(args.runtime, args.latency_batch, threads, where, args.latency_rounds).checked()


def add_model_arg(
    p: "argparse.ArgumentParser | argparse._ArgumentGroup", *, required: bool = False, default: str | None = None
) -> None:
    """--model (with --fix and --reading): the network a command builds."""
    more = f" (default: {default})" if default else ""
    p.add_argument(
        "--model",
        required=required,
        default=default,
        metavar="M",
        help=MODEL_HELP.format(", ".join(family_names())) + more,
    )
    add_fix_arg(p)


def add_rounding_args(p: "argparse.ArgumentParser | argparse._ArgumentGroup", *, defaults: bool = True) -> None:
    """--divisor, --floor, --as-published: how a model's counts are rounded. ``defaults=False``: absent
    flags are None, so that a config file's or a preset's values stand (``train --config``, ``sweep``)."""
    given = "" if defaults else "the config's or preset's, else "
    for flag, metavar, what in (
        ("--divisor", "K", "round every layer to a multiple of K, e.g. 8 for tensor cores"),
        ("--floor", "N", "smallest filter count of any layer"),
    ):
        p.add_argument(
            flag,
            type=positive_int,
            default=1 if defaults else None,
            metavar=metavar,
            help=f"{what} (default: {given}1)",
        )
    add_as_published(p)


def add_model_args(p: argparse.ArgumentParser, *, template_many: bool, model_required: bool = True) -> None:
    """--model, --template, --classes, --divisor, --floor, --as-published, --image-size: how every
    command that measures models names them."""
    add_model_arg(p, required=model_required)
    if template_many:
        p.add_argument(
            "--template",
            action="extend",
            nargs="+",
            metavar="T",
            dest="templates",
            help="template names (--template A B, or repeated; default: all), explicit counts "
            "'c1,c2,...', or a function 'module:function'",
        )
    else:
        p.add_argument("--template", default="base", metavar="T", help=TEMPLATE_HELP + " (default: base)")
    p.add_argument("--classes", type=positive_int, default=10, metavar="N", help="number of classes (default: 10)")
    add_rounding_args(p)
    add_image_size_arg(
        p,
        f"side of the square input images (default: {IMAGE_SIZE}, the built-in datasets'): FLOPs, "
        "memory and latency are counted at it and a package.module:function model is discovered "
        "on it",
    )


def add_as_published(p: "argparse.ArgumentParser | argparse._ArgumentGroup") -> None:
    """--as-published, the same flag on every command that builds a model."""
    p.add_argument(
        "--as-published",
        action="store_true",
        default=None,
        help="build the study's own configurations and its rounding max(1, int(w*f)) instead of the "
        "equations (families vgg19, resnet50, googlenet, mobilenet)",
    )
