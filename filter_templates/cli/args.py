"""Argument types shared by the subcommands: each refuses bad input with a message that says what
is accepted, which the CLI turns into one error line."""

from __future__ import annotations

import argparse
import math


def _number(text: str, cast: type, ok, expected: str, bad: str):
    """``cast(text)`` if it is finite and ``ok``; otherwise an argparse error saying what is accepted."""
    noun = "an integer" if cast is int else "a number"
    try:
        v = cast(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not {noun}; expected {expected}") from None
    if not math.isfinite(v) or not ok(v):
        raise argparse.ArgumentTypeError(f"{text!r} {bad}")
    return v


def positive_float(text: str) -> float:
    return _number(text, float, lambda v: v > 0, "a positive finite number", "is not a positive finite number")


def positive_int(text: str) -> int:
    return _number(text, int, lambda v: v >= 1, "a positive integer", "is not a positive integer")


def nonnegative_float(text: str) -> float:
    return _number(text, float, lambda v: v >= 0, "a number >= 0", "is not a finite number >= 0")


def nonnegative_int(text: str) -> int:
    return _number(text, int, lambda v: v >= 0, "an integer >= 0", "is negative; expected an integer >= 0")


def add_run_args(group: "argparse._ArgumentGroup") -> None:
    """The training and data settings that `train` and `sweep` share. Defaults are None so that a
    value given here overrides a config file or preset, and an absent one does not."""
    group.add_argument("--recipe", choices=["fast", "paper"], help="fast (default): warmup + linear decay to 0, "
                       "Nesterov, label smoothing, flip test-time augmentation; paper: the study's SGD with lr / 10 "
                       "at 50%% and 75%% of the epochs. Every setting is written to the run's config.json")
    group.add_argument("--epochs", type=positive_int, metavar="N", help="epochs (default: 160)")
    group.add_argument("--batch-size", type=positive_int, metavar="N", help="batch size (default: the recipe's, 64)")
    group.add_argument("--lr", type=positive_float, metavar="LR", help="initial (paper) or peak (fast) learning rate "
                                                                       "(default: the recipe's, 0.1)")
    group.add_argument("--limit-train", type=positive_int, metavar="N", help="use only the first N training images")
    group.add_argument("--limit-test", type=positive_int, metavar="N", help="use only the first N test images")
    group.add_argument("--data-dir", metavar="DIR", help="where cifar10/cifar100 are (or go, with --download)")
    group.add_argument("--download", action="store_true", default=None,
                       help="fetch the official CIFAR archive if missing (MD5-checked)")
    group.add_argument("--device", metavar="DEV", help="auto (default: CUDA when available), cpu, cuda or cuda:N")
    group.add_argument("--precision", choices=["auto", "fp32", "bf16"],
                       help="fp32 or bf16 autocast (default auto: the faster one, measured on this device for this "
                            "model and cached)")
    group.add_argument("--memory-format", choices=["auto", "channels_last", "contiguous"],
                       help="tensor layout (default auto: the faster one, measured with --precision)")


MODEL_HELP = ("model family ({}) or your own network as package.module:function (a callable returning an "
              "nn.Module; gets num_classes= when it takes it; imported from the current directory too)")


def add_fix_arg(p: "argparse.ArgumentParser | argparse._ArgumentGroup") -> None:
    p.add_argument("--fix", action="append", metavar="MODULE",
                   help="with --model package.module:function: the channel group made by this module (or by the "
                        "layers inside it) keeps its width times --width instead of being a template layer "
                        "(repeatable)")


def model_from_args(args: argparse.Namespace) -> str:
    """The family name ``--model`` (and ``--fix``) give: the one place a command imports a model's code."""
    from ..models import resolve_model

    return resolve_model(args.model, fixed=getattr(args, "fix", None) or ())


def add_model_args(p: argparse.ArgumentParser, *, template_many: bool, model_required: bool = True) -> None:
    """--model, --template, --width, --classes, --divisor, --floor, --as-published: how every command
    names a model."""
    from ..models import family_names

    p.add_argument("--model", required=model_required, metavar="M", help=MODEL_HELP.format(', '.join(family_names())))
    add_fix_arg(p)
    if template_many:
        p.add_argument("--template", action="append", metavar="T", dest="templates",
                       help="template name (repeatable; default: all), explicit counts 'c1,c2,...', "
                            "or a function 'module:function'")
    else:
        p.add_argument("--template", default="base", metavar="T",
                       help="template name, explicit counts 'c1,c2,...', or a function 'module:function' (default: base)")
    p.add_argument("--classes", type=positive_int, default=10, metavar="N", help="number of classes (default: 10)")
    p.add_argument("--divisor", type=positive_int, default=1, metavar="K",
                   help="round every layer to a multiple of K, e.g. 8 for tensor cores (default: 1)")
    p.add_argument("--floor", type=positive_int, default=1, metavar="N",
                   help="smallest filter count of any layer (default: 1)")
    add_as_published(p)


def add_as_published(p: "argparse.ArgumentParser | argparse._ArgumentGroup") -> None:
    """--as-published, the same flag on every command that builds a model (SPEC 2.9)."""
    p.add_argument("--as-published", action="store_true", default=None,
                   help="build the study's own configurations and its rounding max(1, int(w*f)) instead of the "
                        "equations (SPEC 2.9; families vgg19, resnet50, googlenet, mobilenet)")
