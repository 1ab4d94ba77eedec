"""``filter-templates train``: train one templated model into a run directory."""

from __future__ import annotations

import argparse
import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from filter_templates.cli.args import (
    TEMPLATE_HELP,
    add_model_arg,
    add_rounding_args,
    add_run_args,
    fraction,
    log_setting,
    model_from_args,
    nonnegative_float,
    nonnegative_int,
    positive_float,
    positive_int,
)
from filter_templates.core.device import resolve_device
from filter_templates.core.errors import UsageError
from filter_templates.core.images import IMAGE_SIZE
from filter_templates.core.messages import error, note, warn
from filter_templates.core.rundir import SUMMARY, run_name
from filter_templates.core.status import DONE, PAUSED
from filter_templates.data import data_facts
from filter_templates.method.arch import Arch, ArchOptions, floor_warning
from filter_templates.run import run_config
from filter_templates.training import distributed
from filter_templates.training.autotune import threads_for
from filter_templates.training.config import (
    CONCERNS,
    OPTIMIZERS,
    RECIPES,
    SCHEDULES,
    ArchitectureSettings,
    TrainConfig,
    names,
)
from filter_templates.training.initialise import WHITEN_SAMPLE
from filter_templates.training.loop import open_checkpoint, with_world

# TrainConfig fields a --config file may carry (a run's own config.json does; `fit --save` files
# carry only "arch" among them, and their other keys ("fit", ...) are ignored). A flag's dest is
# its field's name.
_TRAIN_KEYS = names(*(c for c in CONCERNS if c is not ArchitectureSettings))
#: The model flags (their dests), and the defaults of those an absent --config leaves unset.
_MODEL_KEYS = ("model", "template", "width", "divisor", "floor", "as_published")
_DEFAULTS: dict[str, Any] = {"template": "base", "width": 1.0, "divisor": 1, "floor": 1, "as_published": False}
_ARCH_FIELD = {"model": "family"}  # a flag's Arch field where the names differ

#: What Ctrl-C prints after 'interrupted;' (cli.interrupted_line).
ON_INTERRUPT = "the checkpoint keeps every finished epoch: the same command with --resume continues it, to bit-identical weights on a CPU"


def add_parser(sub: argparse._SubParsersAction, help: str) -> None:
    p = sub.add_parser(
        "train",
        help=help,
        description="Train a templated model (--recipe fast by default; --recipe paper: SGD momentum 0.9, weight "
        "decay 5e-4, lr divided by 10 at 50%% and 75%% of the epochs). The run directory gets config.json, "
        "metrics.jsonl, checkpoint.pt (every epoch), model.pt and summary.json. The number of "
        "classes is the dataset's.",
    )
    _add_model_flags(p)
    _add_data_flags(p)
    _add_recipe_flags(p)
    _add_execution_flags(p)
    _add_output_flags(p)
    p.set_defaults(run=run)


def _add_model_flags(p: argparse.ArgumentParser) -> None:
    """The architecture: flags or a --config record."""
    m = p.add_argument_group("model (or --config FILE from `fit --save`; flags given here override it)")
    add_model_arg(m)
    m.add_argument("--template", metavar="T", help=TEMPLATE_HELP + " (default: base)")
    m.add_argument("--width", type=positive_float, metavar="W", help="width multiplier (default: 1.0)")
    add_rounding_args(m, defaults=False)
    m.add_argument(
        "--config",
        metavar="FILE",
        help="JSON file with an 'arch' record (written by `fit --save`, or a run's config.json)",
    )


def _add_data_flags(p: argparse.ArgumentParser) -> None:
    """The data and the optimiser basics."""
    t = p.add_argument_group("data and training")
    t.add_argument(
        "--dataset",
        metavar="D",
        help="cifar10, cifar100, digits (embedded, default), synthetic, or "
        "folder (your own images in --data-dir, at --image-size)",
    )
    add_run_args(t)
    t.add_argument("--momentum", type=nonnegative_float, metavar="M", help="SGD momentum (default: 0.9)")
    t.add_argument(
        "--weight-decay",
        type=nonnegative_float,
        metavar="WD",
        help="weight decay (default: the recipe's, "
        + ", ".join(f"{r['weight_decay']:g} {name}" for name, r in RECIPES.items())
        + ")",
    )
    t.add_argument("--seed", type=nonnegative_int, metavar="S", help="seed of init and data order (default: 0)")


def _add_recipe_flags(p: argparse.ArgumentParser) -> None:
    """The recipe's settings, each overriding the --recipe's value."""
    r = p.add_argument_group("recipe settings (default: the --recipe's; all are written to config.json)")
    r.add_argument(
        "--schedule",
        choices=list(SCHEDULES),
        help="step: lr / 10 at 50%% and 75%% of the epochs; linear: warmup, then linear decay to 0",
    )
    r.add_argument("--warmup", type=fraction, metavar="F", help="fraction of all steps spent warming up (linear)")
    r.add_argument("--nesterov", action=argparse.BooleanOptionalAction, default=None, help="Nesterov momentum")
    r.add_argument("--label-smoothing", type=fraction, metavar="E", help="label smoothing of the cross-entropy")
    r.add_argument(
        "--norm-bias-decay",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="weight decay on BatchNorm and bias parameters too",
    )
    r.add_argument(
        "--ema",
        type=fraction,
        metavar="D",
        help="per-step decay of an EMA of the weights, evaluated and saved instead of them (0: off)",
    )
    r.add_argument(
        "--tta",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="evaluate on each test image and its mirror image (only where the dataset allows flips)",
    )
    r.add_argument(
        "--tta-shift",
        type=nonnegative_int,
        metavar="S",
        help="with --tta, the final evaluation also averages the mirror image shifted S pixels right and "
        "down and the image shifted S pixels left and up (0: off)",
    )
    r.add_argument(
        "--crop-pad",
        type=nonnegative_int,
        metavar="P",
        help="pixels of zero padding around each training image before the random crop back to its size "
        "(shifts of up to P pixels; 0: no crop)",
    )
    r.add_argument(
        "--optimizer",
        choices=list(OPTIMIZERS),
        help="sgd; or muon: Muon steps for the convolutions that feed a BatchNorm, SGD for the rest",
    )
    r.add_argument(
        "--muon-lr",
        type=positive_float,
        metavar="LR",
        help="peak lr of the Muon steps (with --optimizer muon; the schedule scales it as --lr)",
    )
    r.add_argument(
        "--whiten-init",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="start the convolution that reads the image as a whitening filter bank of its input "
        f"patches, measured on {WHITEN_SAMPLE:,} training images",
    )
    r.add_argument(
        "--identity-init",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="in a network without residual sums, start every other convolution that can (one group, "
        "odd kernel, no fewer outputs than inputs) as the identity on its first in_channels filters",
    )


def _add_execution_flags(p: argparse.ArgumentParser) -> None:
    """How the run executes; the ones that change the numbers say so."""
    x = p.add_argument_group("execution")
    x.add_argument(
        "--threads",
        type=positive_int,
        metavar="N",
        help="CPU threads of torch (default: $OMP_NUM_THREADS, else the machine profile's, else every core "
        "this process may use; a resumed run keeps its own). Written to config.json: it changes the "
        "numbers",
    )
    x.add_argument(
        "--nproc",
        type=positive_int,
        metavar="N",
        help="train this one run on N processes on this machine (DistributedDataParallel: gloo on CPU, "
        "one GPU each over NCCL), as torchrun --nproc-per-node N -m filter_templates train ... "
        "does; the batch size stays the whole batch, each process takes a share. It changes the "
        "numbers: a checkpoint resumes only with the same N",
    )
    x.add_argument(
        "--sync-bn",
        action="store_true",
        default=None,
        help="with several processes, BatchNorm statistics over the whole batch instead of each "
        "process's share (kept on resume)",
    )
    x.add_argument(
        "--stop-at",
        type=positive_int,
        metavar="K",
        help="pause after epoch K of the planned --epochs, with the full run's schedule (status paused); "
        "--resume later continues it to exactly the weights of a run never paused",
    )
    x.add_argument(
        "--no-bf16", dest="precision", action="store_const", const="fp32", help="the same as --precision fp32"
    )
    x.add_argument(
        "--no-channels-last",
        dest="memory_format",
        action="store_const",
        const="contiguous",
        help="the same as --memory-format contiguous",
    )


def _add_output_flags(p: argparse.ArgumentParser) -> None:
    """Where the run goes and what it prints."""
    o = p.add_argument_group("output")
    o.add_argument(
        "--out", metavar="DIR", help="run directory (default: runs/<model>-<template>-w<width>-<dataset>-s<seed>)"
    )
    o.add_argument("--resume", action="store_true", help="continue the checkpoint in --out (fresh start if none)")
    o.add_argument("--json", action="store_true", help="print the summary as one JSON document on stdout")
    o.add_argument("--quiet", action="store_true", help="no per-epoch lines on stdout")


def _read_config(path: str) -> dict:
    try:
        with open(path, encoding="utf-8") as f:
            doc = json.load(f)
    except OSError as exc:
        raise UsageError(f"--config {path}: {exc.strerror or exc}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UsageError(f"--config {path}: not valid JSON ({exc})") from None
    if not isinstance(doc, dict) or "arch" not in doc:
        raise UsageError(f"--config {path}: expected a JSON object with an 'arch' record (as `fit --save` writes)")
    return doc


def build_config(args: argparse.Namespace):  # -> TrainConfig
    """Merge defaults < --config file < explicit flags into a TrainConfig."""

    doc = _read_config(args.config) if args.config else {}
    base = Arch.from_dict(doc["arch"]) if doc else None
    train_kw = {k: doc[k] for k in _TRAIN_KEYS if k in doc}
    for k in _TRAIN_KEYS:
        if getattr(args, k, None) is not None:
            train_kw[k] = getattr(args, k)
    train_kw.setdefault("dataset", "digits")
    train_kw["log"] = log_setting(args, train_kw.get("log"))  # the flags over a --config file's
    if base is not None and base.image_size != IMAGE_SIZE:  # a `fit --image-size N --save` record
        train_kw.setdefault("image_size", base.image_size)
    # the model follows the data: its class count and image size (a folder is read here, once)
    facts = data_facts(train_kw)
    classes, size = facts.classes, facts.image_size
    train_kw["image_size"] = size
    train_kw["data_digest"] = facts.digest  # the images read now, not those a --config file names
    model_flags = {k: getattr(args, k) for k in _MODEL_KEYS if getattr(args, k) is not None}
    if "model" in model_flags:
        model_flags["model"] = model_from_args(args, image_size=size)
    elif args.fix or args.reading:
        raise UsageError(f"--{'fix' if args.fix else 'reading'} needs --model package.module:function")
    if base is not None and not model_flags:  # the file's exact counts; only the class count follows the dataset
        arch = replace(base, classes=classes, image_size=size)
    else:  # the defaults, or the file's settings, with the flags on top
        v = _DEFAULTS if base is None else {k: getattr(base, _ARCH_FIELD.get(k, k)) for k in _MODEL_KEYS}
        v = {**v, **model_flags}
        if "model" not in v:
            raise UsageError("--model is required (or --config FILE with an 'arch' record)")
        if base is not None and "template" not in model_flags and ":" in base.template:
            # a data file never imports code: only a flag typed by the user may name a function
            raise UsageError(
                f"the config's template {base.template!r} names a Python function; "
                "pass it with --template to re-derive the counts"
            )
        options = ArchOptions(
            divisor=v["divisor"], floor=v["floor"], as_published=bool(v["as_published"]), image_size=size
        )
        arch = options.arch(v["model"], v["template"], v["width"], classes)
    return TrainConfig(arch=arch, **train_kw)


def default_out(config: TrainConfig) -> Path:
    return Path("runs") / run_name(config.to_dict())


def _processes(args: argparse.Namespace, world: distributed.World) -> int:
    """How many processes train the run: those started (torchrun's), or ``--nproc``'s to start."""
    if world.size > 1 and args.nproc not in (None, world.size):
        raise UsageError(f"--nproc {args.nproc} but {world.size} processes were started (WORLD_SIZE)")
    return world.size if world.size > 1 else (args.nproc or 1)


def run(args: argparse.Namespace) -> int:

    world = distributed.from_env()
    nproc = _processes(args, world)
    config = with_world(build_config(args), nproc)
    out = Path(args.out) if args.out else default_out(config)
    if nproc > 1 and world.size == 1:  # the launcher: refuse here, once, what every process would
        open_checkpoint(config, out, args.resume)
        distributed.check_sync_bn(config.sync_bn, resolve_device(config.device), nproc)
        return distributed.launch(nproc, args.argv)
    quiet = args.quiet or args.json or not world.main
    floored = floor_warning(config.arch)
    if floored and world.main:
        warn(floored)

    def on_epoch(row: dict) -> None:
        if not quiet:
            print(
                f"epoch {row['epoch']:>3}/{config.epochs}  lr {row['lr']:.4g}  loss {row['train_loss']:.4f}  "
                f"train {row['train_acc']:.2%}  "
                + (f"val {row['val_acc']:.2%}  " if "val_acc" in row else "")
                + f"test {row['test_acc']:.2%}  {row['seconds']:.1f}s  "
                f"{row['images_per_s']:.0f} img/s",
                flush=True,
            )

    state = open_checkpoint(config, out, args.resume)  # refuse before printing anything; read once
    done = int(state["epoch"]) if state is not None else 0
    threads_source = "--threads" if args.threads else None
    if state is None and config.threads is None:  # else the flag's, the --config file's or the checkpoint's
        threads, threads_source = threads_for(resolve_device(config.device), jobs=world.local_size)
        torch.set_num_threads(threads)
    if not quiet:
        a = config.arch
        print(
            f"training {a.family} {a.template} w={a.width:g} ({' '.join(map(str, a.filters))}) on {config.dataset} "
            f"for {config.epochs} epochs -> {out}" + (f" (resuming after epoch {done})" if done else ""),
            flush=True,
        )
    summary = run_config(
        config, out, resume=state is not None, on_epoch=on_epoch, threads_source=threads_source, checkpoint=state
    )
    if args.json and world.main:
        print(json.dumps(summary))
    if summary["status"] == PAUSED:
        note(f"paused after epoch {summary['stopped_at']} of {config.epochs}; --resume --out {out} continues it")
        return 0
    if summary["status"] != DONE:
        if not world.main:
            return 1
        error(f"training failed: {summary['reason']} (see {out / SUMMARY})")
        return 1
    if not quiet:
        val = f"final validation accuracy {summary['val_acc']:.2%}, " if summary.get("val_acc") is not None else ""
        print(
            f"done: {val}final test accuracy {summary['final_acc']:.2%} (best test accuracy over epochs, "
            f"optimistic: {summary['best_acc']:.2%} at epoch {summary['best_epoch']}), {summary['wall_s']:.0f}s on "
            f"{summary['device']}; run dir {out}"
        )
    return 0
