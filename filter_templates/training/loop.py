"""Train one templated model, resumable bit for bit.

Read :func:`train` top to bottom: prepare (refusals, run directory, data, how to execute), the
epoch loop (train, evaluate, checkpoint), finish (final weights, summary). How the weights are
optimised -- the ``fast`` and ``paper`` recipes, the schedule, EMA -- lives in :mod:`.recipe`; the
rule that picks precision (fp32 / bf16 autocast), memory format, threads and compile in :mod:`.autotune`
(or a machine profile, :mod:`.profile`). Data
stay resident on the training device and are augmented there in whole batches
(``data.augment.Loader``).

The run directory holds ``config.json`` (every setting, with the precision and memory format
actually used), ``metrics.jsonl``, ``checkpoint.pt`` (after every epoch, atomically), ``model.pt``
(final state_dict: the EMA weights when EMA is on) and ``summary.json``. Epoch ``e``'s data order
is a pure function of ``(seed, e)``, the schedule of the step count, and the checkpoint carries
torch's RNG state and the EMA, so a run killed at any moment and resumed ends with exactly the
weights of an uninterrupted run on CPU.

Accuracies are fractions in [0, 1] everywhere (metrics, summary).
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

import torch
import torch.nn.functional as F

from filter_templates.core import checkpoint as ckpt
from filter_templates.core import rundir
from filter_templates.core.device import device_name, free_memory, resolve_device
from filter_templates.core.errors import UsageError
from filter_templates.core.loss import training_loss
from filter_templates.core.messages import note
from filter_templates.core.progress import Progress
from filter_templates.core.status import DONE, FAILED, PAUSED
from filter_templates.data import Dataset, data_digest_for, load_data_for, split
from filter_templates.data.augment import Loader, LoaderOptions, scale_pixels
from filter_templates.data.stream import padded_bytes
from filter_templates.method import measure
from filter_templates.training import autotune, distributed, initialise
from filter_templates.training import profile as machine_profile
from filter_templates.training.config import (
    CHOSEN_KEYS,
    DATA_MEMORY_SHARE,
    RESULT_KEYS,
    Summary,
    TrainConfig,
    experiment,
    test_views,
)
from filter_templates.training.recipe import EMA, lr_multiplier, make_optimizer

__all__ = [
    "train",
    "Start",
    "Context",
    "sgd_step",
    "evaluate",
    "evaluate_images",
    "open_checkpoint",
    "with_data_digest",
    "summarise",
    "with_world",
]


def _resume_view(config: Mapping[str, Any]) -> dict[str, Any]:
    """A config as a checkpoint check compares it: its :func:`experiment`, its ``CHOSEN_KEYS`` and its
    process count (one for a checkpoint from before the count was recorded)."""
    return {
        **experiment(config),
        **{k: config.get(k) for k in CHOSEN_KEYS},
        "world_size": config.get("world_size") or 1,
    }


@dataclass
class Start:
    """A run's model made elsewhere (a pruned network): ``build()`` gives its structure (freshly
    initialised); ``weights`` (a state_dict), when given, replace the recipe's start on a fresh run."""

    build: Callable[[], torch.nn.Module]
    weights: Mapping[str, torch.Tensor] | None = None


def open_checkpoint(config: TrainConfig, out_dir: str | Path, resume: bool) -> dict | None:
    """The checkpoint in ``out_dir`` that a run of ``config`` would continue (None: start fresh);
    the refusals are :func:`rundir.open_checkpoint`'s, comparing the result fields and each of
    ``CHOSEN_KEYS`` given explicitly (an ``auto`` or unset one takes the checkpoint's choice: a
    resumed run keeps its precision, layout, threads and compile) and the process count, seen through
    :func:`_resume_view`."""
    cfg = config.to_dict()
    keys = (*RESULT_KEYS, *(k for k in CHOSEN_KEYS if cfg[k] not in ("auto", None)), "world_size")
    return rundir.open_checkpoint(out_dir, resume, cfg, keys, view=_resume_view)


def sgd_step(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    x: torch.Tensor,
    y: torch.Tensor,
    amp: bool,
    label_smoothing: float = 0.0,
    weight: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One training step (shared with ``benchmarks/throughput.py`` so it measures this very code);
    returns the detached loss and logits, still on the device. ``weight`` scales the loss that is
    differentiated (a process's share of a batch; 1: the whole batch, or an equal share)."""
    with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=amp):
        logits, loss = training_loss(model(x), y, label_smoothing)
    optimizer.zero_grad(set_to_none=True)
    (loss if weight == 1.0 else loss * weight).backward()
    optimizer.step()
    return loss.detach(), logits.detach()


def evaluate(model: torch.nn.Module, loader: Loader, amp: bool, tta: bool, shift: int = 0) -> float:
    """Top-1 accuracy of ``model`` over ``loader`` (the mean of :func:`evaluate_images`)."""
    hits = evaluate_images(model, loader, amp, tta, shift)
    return int(hits.sum().item()) / max(len(hits), 1)


def evaluate_images(model: torch.nn.Module, loader: Loader, amp: bool, tta: bool, shift: int = 0) -> torch.Tensor:
    """Per image of ``loader`` (every process's shard, joined in order): whether ``model``'s top-1
    class is right, a bool vector on the CPU. ``tta`` adds the logits of the mirrored images; with
    it, ``shift`` > 0 adds two more views: the mirror image moved by ``shift`` pixels right and
    down, the image moved by ``shift`` pixels left and up (reflect-padded). The views are fixed, so
    the outcomes are a pure function of the weights."""
    model.eval()
    hits = []
    with torch.inference_mode(), torch.autocast(loader.device.type, dtype=torch.bfloat16, enabled=amp):
        for x, y in loader:
            logits = model(x)
            if tta:
                logits = logits.float() + model(x.flip(3)).float()
                if shift:
                    logits += model(_shifted(x.flip(3), shift)).float() + model(_shifted(x, -shift)).float()
            hits.append(logits.argmax(1) == y)
    mine = torch.cat(hits) if hits else torch.zeros(0, dtype=torch.bool, device=loader.device)
    # each process saw its shard: join them (as uint8: collectives of bool are not supported everywhere)
    return distributed.concatenated(mine.to(torch.uint8)).bool().cpu()


def _shifted(x: torch.Tensor, s: int) -> torch.Tensor:
    """``x`` [N, C, H, W] moved by ``s`` pixels along both axes (positive: right and down), the
    uncovered border filled by reflection; same memory format as ``x``."""
    p = abs(s)
    h, w = x.shape[2:]
    padded = F.pad(x, (p, p, p, p), mode="reflect")
    top = p - s  # s > 0: the window starts above-left of the image, so the content moves down-right
    fmt = torch.channels_last if x.is_contiguous(memory_format=torch.channels_last) else torch.contiguous_format
    return padded[:, :, top : top + h, top : top + w].contiguous(memory_format=fmt)


def train(
    config: TrainConfig,
    out_dir: str | Path,
    *,
    resume: bool = False,
    progress: bool | None = None,
    on_epoch: Callable[[dict], None] | None = None,
    threads_source: str | None = None,
    checkpoint: dict | None = None,
    start: Start | None = None,
) -> Summary:
    """Train ``config`` into ``out_dir`` and return the summary written to ``summary.json``.

    ``resume``: continue from ``out_dir/checkpoint.pt`` (fresh start, with a note, if none); without
    it an existing checkpoint is refused so nothing is overwritten. ``progress``: the per-epoch bar
    on stderr (None: only on a terminal). ``on_epoch(row)``: called after each epoch's checkpoint
    with that epoch's metrics row. A loss that turns NaN/inf ends the run with
    ``status == FAILED`` and the reason (returned, not raised); bad input raises UsageError.
    ``threads_source``: how the caller chose torch's thread count (recorded in the summary).
    ``checkpoint``: what :func:`open_checkpoint` returned for these arguments, when the caller
    opened it already (it is not read twice). ``start``: the model made elsewhere (a pruned
    network) instead of ``config.arch``'s. A pruning baseline is no template run: ``pruning.run``
    trains it in stages of this function, and ``run.run_config`` picks which of the two a config is.
    """
    # ---- prepare: refusals first (nothing touched yet), then data, execution choice, directory ----
    config = with_data_digest(config)
    world = distributed.from_env()
    config = with_world(config, world.size)
    out = Path(out_dir)
    state = open_checkpoint(config, out, resume) if checkpoint is None else checkpoint
    if config.prune is not None:
        raise UsageError("a pruning baseline trains in stages (pruning.run.train_pruned), not as one template run")
    measure.meta_model(config.arch)  # a model that cannot be built (a layer over the limit, ...) fails now
    device = distributed.device_for(resolve_device(config.device), world)
    distributed.check_sync_bn(config.sync_bn, device, world.size)
    full = _planned_data(config)
    ds = _validation_split(full, config)
    config, choice = _decide_execution(config, state, device, threads_source)
    config = _with_data_memory(config, device, world)
    with distributed.joined(world, device):
        return _run(config, out, state, _Setting(device, world, full, ds, choice, start), progress, on_epoch)


@dataclass(frozen=True)
class _Setting:
    """Where a run executes and on what: its device, its process's place, the data (``full`` as
    loaded, ``ds`` with the validation split held out), how its execution was decided, and the
    model made elsewhere, if any."""

    device: torch.device
    world: distributed.World
    full: Dataset
    ds: Dataset
    choice: autotune.Choice
    start: Start | None


def _checkpoint(
    parts: _Parts, device: torch.device, epochs: int, metrics: list[dict], config: TrainConfig, out: Path
) -> None:
    """Everything a resumed run needs to continue bit for bit after ``epochs`` epochs."""
    rundir.atomic_save(
        {
            **parts.state(),
            "rng": ckpt.rng_state(device),
            "threads": torch.get_num_threads(),
            "epoch": epochs,
            "metrics": metrics,
            "config": config.to_dict(),
            "arch": config.arch.to_dict(),
        },
        out / rundir.CHECKPOINT,
    )


def _run(
    config: TrainConfig,
    out: Path,
    state: dict | None,
    where: _Setting,
    progress: bool | None,
    on_epoch: Callable[[dict], None] | None,
) -> Summary:
    """The run once prepared: directory, parts, the epoch loop (train, evaluate, checkpoint), and
    the final weights and summary. Only rank 0 writes files or calls ``on_epoch``."""
    device, main, ds = where.device, where.world.main, where.ds
    cfg = config.to_dict()
    if main:
        rundir.start_run(out, cfg)
    parts = _Parts.make(config, ds, device, state is None, where)
    amp, E = config.precision == "bf16", config.epochs
    tta = config.tta and ds.hflip  # a mirrored digit is not a digit
    metrics, start_epoch = parts.resume(state, device) if state is not None else ([], 0)
    if state is not None and start_epoch >= E and main:
        note(f"{out}: all {E} epochs were already done; rewriting the final files")
    del state
    if main:  # metrics.jsonl always equals the checkpoint's history: no duplicate epochs after a resume
        rundir.write_metrics(out, metrics)
    outcomes = _resumed_outcomes(out, start_epoch) if main else None
    eval_model = parts.ema.model if parts.ema is not None else parts.model

    # ---- the epoch loop: train, evaluate, checkpoint ----------------------------------------------
    failure: str | None = None
    for epoch in range(start_epoch, config.stop_epoch):
        t0 = time.perf_counter()
        row, seen, failure = _train_epoch(parts, epoch, config, amp, progress and main)
        if failure is not None:
            break
        train_s = time.perf_counter() - t0
        distributed.broadcast_buffers(eval_model)  # every process evaluates rank 0's model
        # the extra views only where they count: the final accuracy
        shift = scale_pixels(config.tta_shift, ds.image_size) if epoch == E - 1 else 0
        hits = {"test": evaluate_images(eval_model, parts.test, amp, tta, shift)}
        if parts.val is not None:  # the same views as the test set, so the two are comparable
            hits["val"] = evaluate_images(eval_model, parts.val, amp, tta, shift)
            row["val_acc"] = _accuracy(hits["val"])
        row["test_acc"] = _accuracy(hits["test"])
        row["test_views"] = test_views(tta, shift)
        row["seconds"] = round(time.perf_counter() - t0, 4)
        row["images_per_s"] = round(seen / train_s, 1)
        metrics.append(row)
        if outcomes is not None:  # before the checkpoint: a resumed run drops any epoch past its checkpoint's
            outcomes = outcomes.add({k: v.numpy() for k, v in hits.items()})
            rundir.write_outcomes(out, outcomes)
        if main:
            _checkpoint(parts, device, epoch + 1, metrics, config, out)
            rundir.append_metrics(out, row)
            if on_epoch is not None:
                on_epoch(row)

    # ---- finish: final weights and summary ------------------------------------------------------
    if failure is None and main and len(metrics) >= E:
        rundir.atomic_save({k: v.detach().cpu() for k, v in eval_model.state_dict().items()}, out / rundir.MODEL)
    # resources on the training device, measured after training (latency needs a quiet device); by
    # rank 0 only, which writes the summary
    resources = measure.resources(config.arch, batch_size=config.batch_size, device=str(device)) if main else None
    context = Context(
        str(device),
        device_name(device),
        config.precision,
        config.memory_format,
        where.choice.to_dict(),
        torch.get_num_threads(),
        split.describe(where.full, ds, config.val_split),
        where.full.record(),
    )
    paused = len(metrics) if failure is None and len(metrics) < E else None
    summary = summarise(cfg, metrics, failure, resources, context, stopped_at=paused)
    if main:
        rundir.atomic_write_json(out / rundir.SUMMARY, summary)
    return summary


def _accuracy(hits: torch.Tensor) -> float:
    return int(hits.sum().item()) / max(len(hits), 1)


def _resumed_outcomes(out: Path, epochs: int) -> rundir.Outcomes | None:
    """The per-image outcomes of a run's first ``epochs`` epochs as its folder holds them (none yet
    for a fresh run), or None when the folder lacks some of those epochs (a run begun by a version
    that kept none): its later rows would not be the epochs they claim, so that run keeps none."""
    if epochs == 0:
        return rundir.Outcomes({})
    kept = rundir.read_outcomes(out)
    if kept is None or not kept.splits or any(len(v) < epochs for v in kept.splits.values()):
        (out / rundir.OUTCOMES).unlink(missing_ok=True)
        return None
    return kept.first(epochs)


def with_world(config: TrainConfig, size: int) -> TrainConfig:
    """``config`` for a run on ``size`` processes: its ``world_size`` filled in, or refused when it
    names another count (the processes actually started decide it, and it changes the numbers)."""
    if config.world_size is not None and config.world_size != size:
        raise UsageError(
            f"the run is configured for {config.world_size} processes (world_size) but {size} "
            f"{'was' if size == 1 else 'were'} started"
        )
    return dataclasses.replace(config, world_size=size)


def _with_data_memory(config: TrainConfig, device: torch.device, world: distributed.World) -> TrainConfig:
    """``config`` with its ``data_memory`` in bytes: given, or ``DATA_MEMORY_SHARE`` of what the
    device has free now, divided among the run's processes on it (one host's memory for CPU)."""
    if config.data_memory is not None:
        return config
    sharing = world.local_size if device.type == "cpu" else 1
    return dataclasses.replace(config, data_memory=max(1, int(free_memory(device) * DATA_MEMORY_SHARE / sharing)))


def with_data_digest(config: TrainConfig) -> TrainConfig:
    """``config`` validated, with its data's content digest filled in when it was made without it
    (the CLI and sweeps fill it in when they plan)."""
    config.validate()
    if config.data_digest is None and (digest := data_digest_for(config)) is not None:
        config = dataclasses.replace(config, data_digest=digest)
    return config


def _planned_data(config: TrainConfig) -> Dataset:
    """The run's data, refused when they are not the images it was planned for or have another
    class count than its model."""
    ds = load_data_for(config)
    if ds.digest != config.data_digest:
        raise UsageError(
            f"{config.data_dir or config.dataset}: not the images the run was planned for (content "
            f"digest {ds.digest}, planned {config.data_digest}): a file was changed, added or removed, "
            "or copied without its modification time; plan the run again"
        )
    if config.arch.classes != ds.num_classes:
        raise UsageError(
            f"the model has {config.arch.classes} classes but dataset {config.dataset!r} has "
            f"{ds.num_classes}; build the architecture with classes={ds.num_classes}"
        )
    return ds


@dataclass
class _Parts:
    """What a run trains with: the model, its optimiser, schedule and EMA, the loaders, and
    ``stepper``, what takes the training steps."""

    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: Any
    ema: EMA | None
    train: Loader
    test: Loader
    val: Loader | None
    # what takes the training steps: the model, or it under DistributedDataParallel, compiled or not
    # (the same parameters; ``model`` is what checkpoints and evaluation read)
    stepper: torch.nn.Module

    @classmethod
    def make(cls, config: TrainConfig, ds: Dataset, device: torch.device, fresh: bool, where: _Setting) -> "_Parts":
        """Built in a fixed order from ``config.seed`` (the same weights for the same command); a
        ``fresh`` run initialises them (a resumed one loads its checkpoint over them)."""
        torch.manual_seed(config.seed)
        start, world = where.start, where.world
        model = config.arch.build() if start is None else start.build()
        if fresh and start is not None and start.weights is not None:  # a pruned model goes on
            model.load_state_dict(start.weights)
        elif fresh:
            _initialise(model, config, ds)
        if config.sync_bn and world.size > 1:
            model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
        # Module.to takes memory_format at run time; torch's stubs leave it out
        model = model.to(device=device, memory_format=autotune.torch_memory_format(config.memory_format))  # type: ignore[call-overload]
        optimizer = make_optimizer(model, config)
        batches = LoaderOptions(
            device=device,
            seed=config.seed,
            channels_last=config.memory_format == "channels_last",
            pad=scale_pixels(config.crop_pad, ds.image_size),
            flip=ds.hflip,
            memory=config.data_memory,
            share=(world.rank, world.size),
        )
        norm = dict(mean=ds.mean, std=ds.std)
        train = Loader(ds.train_x, ds.train_y, config.batch_size, train=True, options=batches, **norm)
        test = Loader(ds.test_x, ds.test_y, max(config.batch_size, 256), train=False, options=batches, **norm)
        val = (
            None
            if ds.val_x is None or ds.val_y is None
            else Loader(ds.val_x, ds.val_y, max(config.batch_size, 256), train=False, options=batches, **norm)
        )
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lr_multiplier(config.schedule, config.warmup, config.epochs, len(train))
        )
        ema = EMA(model, config.ema) if config.ema > 0 else None
        if train.stream is not None and world.main:
            assert config.data_memory is not None  # a loader streams only over a data_memory budget
            note(
                f"the training split ({padded_bytes(ds.train_x.shape, train.pad) / 2**20:,.0f} MiB padded) is over "
                f"data_memory ({config.data_memory / 2**20:,.0f} MiB): its batches are read from where it lies"
            )
        return cls(
            model,
            optimizer,
            scheduler,
            ema,
            train,
            test,
            val,
            autotune.compiled(distributed.wrap(model, device), config.compile),
        )

    def state(self) -> dict[str, Any]:
        """The training state a checkpoint keeps."""
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "ema": self.ema.state_dict() if self.ema is not None else None,
        }

    def resume(self, state: dict, device: torch.device) -> tuple[list[dict], int]:
        """Load a checkpoint's state and random generators; its metrics and epochs done."""
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if self.ema is not None:
            self.ema.load_state_dict(state["ema"])
        ckpt.set_rng_state(state["rng"], device)
        return list(state["metrics"]), int(state["epoch"])


def _validation_split(ds: Dataset, config: TrainConfig) -> Dataset:
    """``ds`` as the run uses it: ``config.val_split`` held out of its training split
    (:func:`split.holdout`), or the dataset's own validation set, said once, when it brings one."""
    if config.val_split and ds.val_y is not None:
        note(
            f"dataset {config.dataset!r} brings its own validation set ({len(ds.val_y):,} images): it is used "
            f"instead of holding out val_split={config.val_split!r} of the training images"
        )
    return split.holdout(ds, config.val_split)


def _decide_execution(
    config: TrainConfig, state: dict | None, device: torch.device, threads_source: str | None
) -> tuple[TrainConfig, autotune.Choice]:
    """The precision, memory format, CPU threads and compile of this run, all of which change its
    numbers: a resumed run's own (its checkpoint's), else the config's where given, else the
    machine profile's (:func:`machine_profile.find`, when one matches this machine), else
    :func:`autotune.rule`'s. Threads not given are the caller's count (``threads_source`` says how
    it was set: CLI and sweeps ask :func:`autotune.threads_for`); a profile's replace them only
    where that count is the plain rule's (every core to this one run), never a sweep's share.
    Sets torch's thread count and deterministic kernels; returns the config with all four filled
    in, and how they were decided."""
    if state is not None:
        saved = state["config"]
        choice = autotune.Choice(
            saved["precision"],
            saved["memory_format"],
            "checkpoint",
            compile=bool(saved.get("compile")),
            compile_source="checkpoint",
        )
        threads, threads_source = saved.get("threads") or state.get("threads"), "checkpoint"
        sync_bn = bool(saved.get("sync_bn"))
    else:
        found = machine_profile.find(device, config.profile)
        choice = autotune.choose(device, config.precision, config.memory_format, config.compile, found)
        threads = config.threads
        sync_bn = bool(config.sync_bn)
        if threads:
            threads_source = threads_source or "given"
        elif found is not None and threads_source in (None, "rule"):
            threads, threads_source = found[0].threads, "profile"
    if choice.compile:
        autotune.check_compile(device)
    if threads:
        torch.set_num_threads(int(threads))
    autotune.make_deterministic(device)
    config = dataclasses.replace(
        config,
        precision=choice.precision,
        memory_format=choice.memory_format,
        threads=torch.get_num_threads(),
        sync_bn=sync_bn,
        compile=choice.compile,
    )
    return config, dataclasses.replace(choice, threads=config.threads, threads_source=threads_source)


def _initialise(model: torch.nn.Module, config: TrainConfig, ds: Dataset) -> None:
    """The recipe's data-dependent start (:mod:`.initialise`), on the CPU before the model moves.
    It draws no random numbers, so the run's later draws do not depend on it."""
    if not (config.whiten_init or config.identity_init):
        return
    step = max(1, len(ds.train_x) // initialise.WHITEN_SAMPLE)
    sample = Loader(
        ds.train_x[::step][: initialise.WHITEN_SAMPLE],
        ds.train_y[::step][: initialise.WHITEN_SAMPLE],
        500,
        train=False,
        mean=ds.mean,
        std=ds.std,
        options=LoaderOptions(channels_last=False),
    )
    first = initialise.input_convolution(model, next(iter(sample))[0][:2])
    if config.whiten_init:
        if first is None or first.groups != 1:
            note("whiten_init: no one-group convolution reads the model's input directly; left as built")
        else:
            initialise.whiten(first, (x for x, _ in sample))
    if config.identity_init:
        residual = initialise.has_residual_sum(model)
        if residual is None:
            note("identity_init: torch.fx cannot trace the model to look for residual sums; left as built")
        elif not residual:  # a residual network has its identity path already
            initialise.identity(model, skip=first)


def _train_epoch(
    parts: _Parts, epoch: int, config: TrainConfig, amp: bool, progress: bool | None
) -> tuple[dict, int, str | None]:
    """One pass over the training split: (metrics row without the test accuracy, images seen,
    failure or None). Every process checks the loss summed over all of them, so all stop on the
    same step, and the row counts every process's images."""
    t0 = time.perf_counter()
    loader, optimizer = parts.train, parts.optimizer
    device = loader.device
    lr = optimizer.param_groups[0]["lr"]
    parts.stepper.train()
    loader.set_epoch(epoch)
    loss_sum = torch.zeros((), device=device)  # accumulated on the device: no per-step host sync on CUDA
    correct = torch.zeros((), dtype=torch.int64, device=device)
    seen, failure = 0, None
    check_every = 1 if device.type == "cpu" else 50  # a finiteness check syncs; free on CPU
    first_step = epoch * len(loader)
    # a process's share of a batch may be one image more than another's: weigh each share's mean
    # loss by its size so that the averaged gradient is the whole batch's mean
    weight = (loader.share[1] - loader.share[0]) * (config.world_size or 1) / config.batch_size
    bar = Progress(loader, total=len(loader), desc=f"epoch {epoch + 1}/{config.epochs}", enabled=progress)
    for step, (x, y) in enumerate(bar, start=1):
        loss, logits = sgd_step(parts.stepper, optimizer, x, y, amp, config.label_smoothing, weight)
        parts.scheduler.step()
        if parts.ema is not None:
            parts.ema.update(first_step + step)
        loss_sum += loss.float() * y.shape[0]
        correct += (logits.argmax(1) == y).sum()
        seen += y.shape[0]
        if step % check_every == 0 and not distributed.all_finite(loss_sum):
            failure = f"loss became {loss_sum.item()} in epoch {epoch + 1} (by step {step}) at lr {lr:g}"
            break
        if bar.enabled and (step % 10 == 0 or step == len(loader)):
            bar.set(
                loss=loss_sum.item() / seen, acc=correct.item() / seen, img_s=round(seen / (time.perf_counter() - t0))
            )
    bar.close()
    loss_all, correct_all, seen_all = (v.item() for v in distributed.total(loss_sum, correct, torch.tensor(seen)))
    if failure is None and not math.isfinite(loss_all):
        failure = f"loss became {loss_all} in epoch {epoch + 1} at lr {lr:g}"
    row = {
        "epoch": epoch + 1,
        "lr": lr,
        "train_loss": loss_all / max(seen_all, 1),
        "train_acc": correct_all / max(seen_all, 1),
    }
    return row, int(seen_all), failure


@dataclass(frozen=True)
class Context:
    """Where and how a run's last part executed, as its summary records it."""

    device: str
    device_name: str
    precision: str
    memory_format: str
    execution: dict  # how precision, memory format, threads and compile were decided (and the profile read)
    threads: int
    val: dict | None  # the validation set's size, source and digest (None: none)
    data: dict | None  # classes, image size and the normalisation the run used

    @classmethod
    def of(cls, summary: Mapping[str, Any]) -> "Context":
        """The context a finished part (a stage of a pruning run) recorded."""
        return cls(*(summary[f.name] for f in dataclasses.fields(cls)))


def summarise(
    config: Mapping[str, Any],
    metrics: list[dict],
    failure: str | None,
    resources: dict | None,
    context: Context,
    *,
    stage: str | None = None,
    pruned: dict | None = None,
    stopped_at: int | None = None,
) -> Summary:
    """The one writer of a :class:`Summary`: a run's outcome from its metrics rows (``config``: its
    ``to_dict()``). ``stage``: score only the rows of that stage (a pruning run's last); ``pruned``:
    what a pruning run pruned; ``stopped_at``: the epoch of its planned schedule a run paused after
    (its ``stop_at``: not done, a later run continues it)."""
    scored = [m for m in metrics if stage is None or m.get("stage") == stage]
    best = max(scored, key=lambda m: m["test_acc"]) if scored else None
    summary: Summary = {
        "status": FAILED if failure else PAUSED if stopped_at is not None else DONE,
        "reason": failure,
        "stopped_at": None if failure else stopped_at,
        "val_acc": scored[-1].get("val_acc") if scored else None,
        "val": context.val,
        "final_acc": scored[-1]["test_acc"] if scored else None,
        "best_acc": best["test_acc"] if best else None,
        "best_epoch": best["epoch"] if best else None,
        "epochs": len(metrics),
        "resources": resources,
        "wall_s": round(sum(m.get("seconds", 0.0) for m in metrics), 3),
        "device": context.device,
        "recipe": config["recipe"],
        "precision": context.precision,
        "data": context.data,
        "memory_format": context.memory_format,
        "execution": context.execution,
        "device_name": context.device_name,
        "threads": context.threads,
        "config": dict(config),
        "metrics": metrics,
    }
    if pruned is not None:
        summary["pruned"] = pruned
    return summary
