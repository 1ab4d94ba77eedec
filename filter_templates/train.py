"""Train one templated model the way the study did (SPEC section 7), resumable bit for bit.

Read :func:`train` top to bottom: it is the whole loop. SGD (momentum 0.9, weight decay 5e-4,
no Nesterov), learning rate divided by 10 at 50% and 75% of the epochs, cross-entropy, top-1 test
accuracy after every epoch. Data stay resident on the training device and are augmented there in
whole batches (``data.augment.Loader``); the model runs channels_last (faster on CUDA and, measured
by ``benchmarks/throughput.py``, on x86 CPUs with oneDNN too) and under bf16 autocast where the
hardware does bf16 natively (CUDA; CPUs with AMX/AVX512-BF16, 1.5x faster steps there); elsewhere,
or with ``bf16=False``, in fp32. ``summary.json`` records which ("precision").

The run directory holds ``config.json``, ``metrics.jsonl``, ``checkpoint.pt`` (after every epoch,
atomically), ``model.pt`` (final state_dict) and ``summary.json``. Epoch ``e``'s data order is a
pure function of ``(seed, e)`` and the checkpoint carries torch's RNG state, so a run killed at any
moment and resumed ends with exactly the weights of an uninterrupted run on CPU.

Accuracies are fractions in [0, 1] everywhere (metrics, summary).
"""

from __future__ import annotations

import dataclasses
import functools
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

import torch
import torch.nn.functional as F

from . import checkpoint as ckpt
from . import rundir, validate
from .arch import Arch
from .errors import UsageError
from .measure import device_name, meta_model, resolve_device
from .messages import note
from .progress import Progress

__all__ = ["TrainConfig", "train", "sgd_step", "bf16_autocast", "open_checkpoint", "resolve_device", "load_data", "RESULT_KEYS"]

DEVICES = ("auto", "cpu", "cuda")

# Keys whose change makes a checkpoint belong to a different experiment. Where the data live,
# whether to download, and the device do not change what is being trained, so they may differ.
RESULT_KEYS = ("arch", "dataset", "epochs", "batch_size", "lr", "momentum", "weight_decay", "seed",
               "channels_last", "bf16", "limit_train", "limit_test")


@dataclass
class TrainConfig:
    """Everything that defines a training run (the paper's defaults). JSON via to_dict/from_dict."""

    arch: Arch
    dataset: str = "digits"
    data_dir: str | None = None
    download: bool = False
    epochs: int = 160
    batch_size: int = 64
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    seed: int = 0
    device: str = "auto"
    channels_last: bool = True
    bf16: bool = True
    limit_train: int | None = None
    limit_test: int | None = None

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Refuse values no run could use, naming the field (UsageError)."""
        if not isinstance(self.arch, Arch):
            raise UsageError("training config 'arch' must be an architecture record")
        if not isinstance(self.dataset, str) or not self.dataset:
            raise UsageError("training config 'dataset' must be a dataset name")
        if self.data_dir is not None and not isinstance(self.data_dir, str):
            raise UsageError("training config 'data_dir' must be a path or null")
        for name in ("epochs", "batch_size"):
            _check_int(name, getattr(self, name), minimum=1)
        _check_int("seed", self.seed, minimum=0)
        for name in ("limit_train", "limit_test"):
            if getattr(self, name) is not None:
                _check_int(name, getattr(self, name), minimum=1)
        _check_float("lr", self.lr, positive=True)
        _check_float("momentum", self.momentum, positive=False)
        _check_float("weight_decay", self.weight_decay, positive=False)
        for name in ("download", "channels_last", "bf16"):
            if not isinstance(getattr(self, name), bool):
                raise UsageError(f"training config '{name}' must be true or false, got {getattr(self, name)!r}")
        if not isinstance(self.device, str) or not (self.device in DEVICES or self.device.startswith("cuda:")):
            raise UsageError(f"device must be one of {', '.join(DEVICES)} (or cuda:N), got {self.device!r}")

    def to_dict(self) -> dict[str, Any]:
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        d["arch"] = self.arch.to_dict()
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "TrainConfig":
        """Validate a config read from JSON; any problem is a UsageError."""
        if not isinstance(d, Mapping):
            raise UsageError("training config must be a JSON object")
        if "arch" not in d:
            raise UsageError("training config lacks 'arch'")
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - fields
        if unknown:
            raise UsageError(f"training config has unknown keys: {', '.join(sorted(unknown))}")
        kw = dict(d)
        kw["arch"] = d["arch"] if isinstance(d["arch"], Arch) else Arch.from_dict(d["arch"])
        for name in ("lr", "momentum", "weight_decay"):  # JSON writes 1.0 as 1 sometimes
            if isinstance(kw.get(name), int) and not isinstance(kw.get(name), bool):
                kw[name] = float(kw[name])
        return cls(**kw)


def _check_int(name: str, v: Any, minimum: int) -> None:
    validate.integer(v, f"training config '{name}'", minimum)


def _check_float(name: str, v: Any, positive: bool) -> None:
    validate.number(v, f"training config '{name}'", strict=positive)


def bf16_autocast(device: torch.device, wanted: bool = True) -> bool:
    """Whether to train under bf16 autocast: where the hardware does bf16 natively -- CUDA with bf16
    support, and CPUs with AMX or AVX512-BF16 (oneDNN; 1.5x faster steps than fp32 for VGG-19 at
    w=0.25 on a Sapphire Rapids core, measured). Elsewhere bf16 is emulated and slower: fp32."""
    if not wanted:
        return False
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        caps = torch.cpu.get_capabilities() if hasattr(torch.cpu, "get_capabilities") else {}
        return bool(torch.backends.mkldnn.is_available() and (caps.get("amx_bf16") or caps.get("avx512_bf16")))
    return False


@functools.lru_cache(maxsize=1)
def load_data(name: str, data_dir: str | None = None, download: bool = False,
              limit_train: int | None = None, limit_test: int | None = None):  # -> data.Dataset
    """``data.load_dataset``, remembering the last one: a sweep trains many models on one dataset,
    and the CLI asks for the class count before training."""
    from .data import load_dataset

    return load_dataset(name, data_dir, download=download, limit_train=limit_train, limit_test=limit_test)


def open_checkpoint(config: TrainConfig, out_dir: str | Path, resume: bool) -> dict | None:
    """The checkpoint in ``out_dir`` that a run of ``config`` would continue (None: start fresh);
    the refusals are :func:`rundir.open_checkpoint`'s, comparing the ``RESULT_KEYS``."""
    return rundir.open_checkpoint(out_dir, resume, config.to_dict(), RESULT_KEYS)


def sgd_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor,
             amp: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """One training step (shared with ``benchmarks/throughput.py`` so it measures this very code);
    returns the detached loss and logits, still on the device."""
    with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=amp):
        logits = model(x)
        loss = F.cross_entropy(logits, y)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss.detach(), logits.detach()


def train(config: TrainConfig, out_dir: str | Path, *, resume: bool = False, progress: bool | None = None,
          on_epoch: Callable[[dict], None] | None = None, checkpoint: dict | None = None) -> dict:
    """Train ``config`` into ``out_dir`` and return the summary written to ``summary.json``.

    ``resume``: continue from ``out_dir/checkpoint.pt`` (fresh start, with a note, if none); without
    it an existing checkpoint is refused so nothing is overwritten. ``progress``: the per-epoch bar
    on stderr (None: only on a terminal). ``on_epoch(row)``: called after each epoch's checkpoint
    with that epoch's metrics row. ``checkpoint``: what :func:`open_checkpoint` returned for these
    arguments, when the caller opened it already (it is not read twice). A loss that turns NaN/inf ends the run with
    ``status == "failed"`` and the reason (returned, not raised); bad input raises UsageError.
    """
    config.validate()
    out = Path(out_dir)
    ckpt_path = out / rundir.CHECKPOINT
    cfg = config.to_dict()

    # refusals happen before anything is touched
    state = open_checkpoint(config, out, resume) if checkpoint is None else checkpoint
    meta_model(config.arch)  # so does a model that cannot be built (a layer over the limit, ...)

    device = resolve_device(config.device)
    ds = load_data(config.dataset, config.data_dir, config.download, config.limit_train, config.limit_test)
    if config.arch.classes != ds.num_classes:
        raise UsageError(f"the model has {config.arch.classes} classes but dataset {config.dataset!r} has "
                         f"{ds.num_classes}; build the architecture with classes={ds.num_classes}")

    rundir.start_run(out, cfg)

    # ---- model, optimiser, schedule, data ----------------------------------------------
    from .data.augment import Loader

    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    torch.manual_seed(config.seed)
    memory_format = torch.channels_last if config.channels_last else torch.contiguous_format
    model = config.arch.build().to(device=device, memory_format=memory_format)
    optimizer = torch.optim.SGD(model.parameters(), lr=config.lr, momentum=config.momentum,
                                weight_decay=config.weight_decay, nesterov=False)
    E = config.epochs
    milestones = [m for m in (int(0.5 * E), int(0.75 * E)) if m >= 1]  # a 1-epoch run keeps its lr
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=milestones, gamma=0.1)
    amp = bf16_autocast(device, config.bf16)
    loader_kw = dict(mean=ds.mean, std=ds.std, device=device, seed=config.seed, channels_last=config.channels_last)
    train_loader = Loader(ds.train_x, ds.train_y, config.batch_size, train=True, flip=ds.hflip, **loader_kw)
    test_loader = Loader(ds.test_x, ds.test_y, max(config.batch_size, 256), train=False, **loader_kw)

    metrics: list[dict] = []
    start_epoch = 0
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        ckpt.set_rng_state(state["rng"], device)
        metrics = list(state["metrics"])
        start_epoch = int(state["epoch"])
        if start_epoch >= E:
            note(f"{out}: all {E} epochs were already done; rewriting the final files")
    del state
    # metrics.jsonl always equals the checkpoint's history: no duplicate epochs after a resume.
    rundir.write_metrics(out, metrics)

    # ---- the loop ---------------------------------------------------------------------
    failure: str | None = None
    check_every = 1 if device.type == "cpu" else 50  # a finiteness check syncs; free on CPU
    for epoch in range(start_epoch, E):
        t0 = time.perf_counter()
        lr = optimizer.param_groups[0]["lr"]
        model.train()
        train_loader.set_epoch(epoch)
        loss_sum = torch.zeros((), device=device)
        correct = torch.zeros((), dtype=torch.int64, device=device)
        seen = 0
        bar = Progress(train_loader, total=len(train_loader), desc=f"epoch {epoch + 1}/{E}", enabled=progress)
        for step, (x, y) in enumerate(bar, start=1):
            loss, logits = sgd_step(model, optimizer, x, y, amp)
            # accumulate on the device: no per-step host sync on CUDA
            loss_sum += loss.float() * y.shape[0]
            correct += (logits.argmax(1) == y).sum()
            seen += y.shape[0]
            if step % check_every == 0 and not math.isfinite(loss_sum.item()):
                failure = f"loss became {loss_sum.item()} in epoch {epoch + 1} (by step {step}) at lr {lr:g}"
                break
            if bar.enabled and (step % 10 == 0 or step == len(train_loader)):
                dt = time.perf_counter() - t0
                bar.set(loss=loss_sum.item() / seen, acc=correct.item() / seen, img_s=round(seen / dt))
        bar.close()
        if failure is None and not math.isfinite(loss_sum.item()):
            failure = f"loss became {loss_sum.item()} in epoch {epoch + 1} at lr {lr:g}"
        if failure is not None:
            break
        train_s = time.perf_counter() - t0
        scheduler.step()

        model.eval()
        test_correct = torch.zeros((), dtype=torch.int64, device=device)
        tested = 0
        with torch.inference_mode(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            for x, y in test_loader:
                test_correct += (model(x).argmax(1) == y).sum()
                tested += y.shape[0]
        row = {"epoch": epoch + 1, "lr": lr, "train_loss": loss_sum.item() / seen, "train_acc": correct.item() / seen,
               "test_acc": test_correct.item() / max(tested, 1), "seconds": round(time.perf_counter() - t0, 4),
               "images_per_s": round(seen / train_s, 1)}
        metrics.append(row)

        ckpt.atomic_save({
            "model": model.state_dict(), "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
            "rng": ckpt.rng_state(device), "epoch": epoch + 1, "metrics": metrics, "config": cfg,
            "arch": config.arch.to_dict(),
        }, ckpt_path)
        rundir.append_metrics(out, row)
        if on_epoch is not None:
            on_epoch(row)

    # ---- the end: final weights and summary ------------------------------------------------
    if failure is None:
        ckpt.atomic_save({k: v.detach().cpu() for k, v in model.state_dict().items()}, out / rundir.MODEL)
    summary = _summary(config, metrics, device, failure)
    rundir.atomic_write_json(out / rundir.SUMMARY, summary)
    return summary


def _summary(config: TrainConfig, metrics: list[dict], device: torch.device, failure: str | None) -> dict:
    from .measure import resources

    best = max(metrics, key=lambda m: m["test_acc"]) if metrics else None
    return {
        "status": "failed" if failure else "done",
        "reason": failure,
        "final_acc": metrics[-1]["test_acc"] if metrics else None,
        "best_acc": best["test_acc"] if best else None,
        "best_epoch": best["epoch"] if best else None,
        "epochs": len(metrics),  # completed epochs
        # SPEC section 4 on the training device, measured after training (latency needs a quiet device)
        "resources": resources(config.arch, batch_size=config.batch_size, device=str(device)),
        "wall_s": round(sum(m["seconds"] for m in metrics), 3),  # training + evaluation, all sessions
        "device": str(device),
        "precision": "bf16-autocast" if bf16_autocast(device, config.bf16) else "fp32",
        "device_name": device_name(device),
        "threads": torch.get_num_threads(),
        "config": config.to_dict(),
        "metrics": metrics,
    }

