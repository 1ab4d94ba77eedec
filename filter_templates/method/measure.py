"""What a model costs: parameters, forward FLOPs per image, training memory per
batch and inference latency.

Parameters and FLOPs of an :class:`~filter_templates.method.arch.Arch` are counted on a model built on
PyTorch's ``meta`` device: every parameter has its real shape but nothing is allocated or
initialised, so counting a VGG-19 at width 1.6 takes milliseconds instead of a second. FLOPs come
from PyTorch's own ``FlopCounterMode``; because a forward pass (even on meta tensors) is the slow
part, each distinct model *structure* is run through the counter once and its per-layer spatial
sizes are remembered, so later models of that structure are counted from weight shapes alone (and
only if that shape-based count reproduced the counter exactly). Tests check both paths against
real, built models.

Training memory (:func:`train_memory_bytes`):

* on CUDA, the caching allocator's peak (``torch.cuda.max_memory_allocated`` after
  ``reset_peak_memory_stats``) over one real SGD-with-momentum step, measured after a warm-up step
  so the momentum buffers already exist, as in every step but the first;
* elsewhere, an exact and repeatable *account* (:func:`train_memory_account`), the sum of:
  ``parameters`` (every parameter storage, once), ``gradients`` and ``momentum`` (one tensor of
  each trainable parameter's size: SGD with momentum keeps exactly one buffer per parameter),
  ``buffers`` (BatchNorm running statistics and other module buffers), ``input`` (the image batch
  and its int64 labels) and ``saved`` (every tensor autograd keeps for backward during the forward
  pass and cross-entropy loss, captured with ``torch.autograd.graph.saved_tensors_hooks``). Each
  storage is counted once, at its full ``nbytes()``: views share their base's storage, a tensor
  saved by two ops (a ReLU output read by the next conv) counts once, and parameters, buffers or
  the input saved for backward are not counted again. NOT counted: activations autograd does not
  keep (e.g. a logits tensor whose only consumer saves its own output), the transient
  gradient-of-activation tensors that live during backward, kernel workspaces, and allocator
  rounding or fragmentation. The account depends only on shapes and dtypes, so it is computed on
  a meta-device model (fast) and equals the account of the real CPU model (tested).

Every count of an architecture is taken at its own input size (``Arch.image_size``, its dataset's:
32 px for the built-in datasets), so a model for 64 px images costs what it costs on 64 px images.

Latency (:func:`latency`): ``torch.utils.benchmark.Timer.adaptive_autorange`` on an eval-mode
forward pass under ``no_grad`` after a warm-up call, at the process's thread count; median and
inter-quartile range of the per-call time. Only comparable on one machine, hence ``device`` and
``threads`` travel with every number.
"""

from __future__ import annotations

import copy
import functools
import hashlib
import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.benchmark import Timer
from torch.utils.flop_counter import FlopCounterMode

from filter_templates.core import validate
from filter_templates.core.device import DeviceLike, device_name, resolve_device
from filter_templates.core.errors import UsageError
from filter_templates.core.images import IMAGE_SIZE
from filter_templates.core.loss import training_loss
from filter_templates.models import get_family

__all__ = [
    "INPUT_SHAPE",
    "MIB",
    "mib",
    "input_shape_of",
    "LATENCY_MIN_RUN_TIME",
    "count_params",
    "count_flops",
    "meta_model",
    "arch_params",
    "arch_flops",
    "arch_shape",
    "ArchShape",
    "resolve_device",
    "device_name",
    "train_memory_account",
    "train_memory_bytes",
    "latency",
    "resources",
]

INPUT_SHAPE = (3, IMAGE_SIZE, IMAGE_SIZE)
MIB = 2**20  # bytes: every memory figure the package prints is in MiB


def mib(n: float) -> float:
    """``n`` bytes in MiB, the one unit of every printed memory figure."""
    return n / MIB


def input_shape_of(arch: Any) -> tuple[int, int, int]:
    """The (C, H, W) of one input image of ``arch``'s model: RGB at its image size."""
    size = int(getattr(arch, "image_size", INPUT_SHAPE[1]))
    return (3, size, size)


LATENCY_MIN_RUN_TIME = (
    0.1  # seconds of timed calls per batch size; at most 10 x this (latency must not dominate a sweep)
)


# --------------------------------------------------------------------------------------------
# Parameters and FLOPs of a built model (the reference everything else is tested against)
# --------------------------------------------------------------------------------------------


def count_params(model: nn.Module) -> int:
    """Trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


@torch.no_grad()
def count_flops(model: nn.Module, input_shape: tuple[int, ...] = INPUT_SHAPE) -> int:
    """Forward FLOPs for one image (2 x MACs), by PyTorch's own counter, in eval mode."""
    was_training = model.training
    model.eval()
    try:
        x = torch.zeros(1, *input_shape, device=_model_device(model))
        with FlopCounterMode(display=False) as counter:
            model(x)
        return int(counter.get_total_flops())
    finally:
        model.train(was_training)


def _model_device(model: nn.Module) -> torch.device:
    for param in model.parameters():
        return param.device
    for buf in model.buffers():
        return buf.device
    return torch.device("cpu")


# --------------------------------------------------------------------------------------------
# Fast, exact counts of an Arch (meta device + a per-structure FLOPs table)
# --------------------------------------------------------------------------------------------


def meta_model(arch: Any) -> nn.Module:
    """``arch.build()`` on the meta device: real shapes, no memory, no initialisation.

    A family whose builder cannot run on meta falls back to a real CPU build (slower, same counts).
    """
    try:
        with torch.device("meta"):
            return arch.build()
    except UsageError:
        raise
    except Exception:  # pragma: no cover - only for builders that need real data
        return arch.build()


def _structure(model: nn.Module) -> tuple[tuple[str, str], ...]:
    """The module tree without sizes: two models with equal structures run the same ops."""
    return tuple((name, type(m).__name__) for name, m in model.named_modules())


_COUNTED = (nn.modules.conv._ConvNd, nn.Linear)
# (family, input shape, structure) -> {module name: spatial positions (conv) or rows (linear) per
# image, summed over calls}, or None when weight shapes alone do not reproduce FlopCounterMode.
_FLOP_TABLES: dict[tuple, dict[str, int] | None] = {}


def _flops_from_table(model: nn.Module, table: dict[str, int]) -> int:
    # FlopCounterMode: conv = 2 * batch * prod(weight.shape) * prod(out spatial) (bias not counted);
    # linear (addmm/mm) = 2 * rows * in * out. Both are 2 * weight.numel() * positions.
    total = 0
    for name, m in model.named_modules():
        if isinstance(m, _COUNTED):
            total += 2 * m.weight.numel() * table.get(name, 0)
    return total


@torch.no_grad()
def _record_flop_table(model: nn.Module, input_shape: tuple[int, ...]) -> tuple[int, dict[str, int] | None]:
    """Run FlopCounterMode once, remembering each conv/linear's spatial positions per image."""
    positions: dict[str, int] = {}
    handles = []

    def hook(name: str, transposed: bool):
        def fn(mod: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
            if isinstance(mod, nn.Linear):
                n = math.prod(inputs[0].shape[:-1])
            else:  # conv: FlopCounterMode uses the output's spatial size (the input's if transposed)
                n = output.shape[0] * math.prod((inputs[0] if transposed else output).shape[2:])
            positions[name] = positions.get(name, 0) + int(n)

        return fn

    for name, m in model.named_modules():
        if isinstance(m, _COUNTED):
            transposed = bool(getattr(m, "transposed", False))
            handles.append(m.register_forward_hook(hook(name, transposed)))
    try:
        flops = count_flops(model, input_shape)
    finally:
        for h in handles:
            h.remove()
    return flops, (positions if _flops_from_table(model, positions) == flops else None)


def _fast_flops(model: nn.Module, family: str, input_shape: tuple[int, ...] = INPUT_SHAPE) -> int:
    key = (family, tuple(input_shape), _structure(model))
    if key in _FLOP_TABLES:
        table = _FLOP_TABLES[key]
        if table is not None:
            return _flops_from_table(model, table)
        return count_flops(model, input_shape)
    flops, table = _record_flop_table(model, input_shape)
    _FLOP_TABLES[key] = table
    return flops


@dataclass(frozen=True)
class ArchShape:
    """What the fitter needs from one probe: exact counts plus identity of the built model."""

    params: int
    flops: int
    structure: tuple[tuple[str, str], ...]  # shared by every model of that structure
    signature: bytes  # digest of structure + every parameter's shape: equal signatures = the same model


def arch_shape(arch: Any) -> ArchShape:
    """Parameters, FLOPs per image and identity of ``arch``'s model, from a meta-device build.

    Cached on what the build depends on (family, filters, classes, stem width, divisor, floor, input
    size), so the same model reached from two templates or widths is counted once.
    """
    return _shape(
        arch.family,
        tuple(arch.filters),
        arch.classes,
        float(arch.stem_width),
        arch.divisor,
        arch.floor,
        tuple(getattr(arch, "widths", ())),
        input_shape_of(arch)[1],
    )


@functools.lru_cache(maxsize=4096)
def _shape(
    family: str,
    filters: tuple[int, ...],
    classes: int,
    stem_width: float,
    divisor: int,
    floor: int = 1,
    widths: tuple[int, ...] = (),
    image_size: int = INPUT_SHAPE[1],
) -> ArchShape:
    fam = get_family(family, image_size)

    class _Spec:  # the parts of an Arch that meta_model needs
        @staticmethod
        def build() -> nn.Module:
            return fam.build(
                filters, num_classes=classes, stem_width=stem_width, divisor=divisor, floor=floor, widths=widths
            )

    model = meta_model(_Spec)
    structure = _structure(model)
    structure = _STRUCTURES.setdefault(structure, structure)  # thousands of cached shapes, few structures
    params = count_params(model)
    try:
        flops = _fast_flops(model, family, (3, image_size, image_size))
    except RuntimeError:  # a forward that makes a CPU tensor of its own cannot run on meta: count a real one
        if _model_device(model).type != "meta":
            raise
        flops = count_flops(_Spec.build(), (3, image_size, image_size))
    shapes = [(n, tuple(p.shape)) for n, p in model.named_parameters()]
    signature = hashlib.blake2b(repr((family, structure, shapes)).encode(), digest_size=16).digest()
    return ArchShape(params, flops, structure, signature)


_STRUCTURES: dict[tuple, tuple] = {}


def arch_params(arch: Any) -> int:
    """Trainable parameters of ``arch``'s model (exact; equals ``count_params(arch.build())``)."""
    return arch_shape(arch).params


def arch_flops(arch: Any) -> int:
    """Forward FLOPs per image at its input size (exact; equals ``count_flops(arch.build(), input_shape_of(arch))``)."""
    return arch_shape(arch).flops


# --------------------------------------------------------------------------------------------
# Training memory
# --------------------------------------------------------------------------------------------


def _storage_key(t: torch.Tensor) -> tuple:
    s = t.untyped_storage()
    if t.device.type == "meta":  # meta storages have no address; the StorageImpl is the identity
        return ("meta", s._cdata)
    return (t.device.type, t.device.index, s.data_ptr())


def train_memory_account(
    model: nn.Module, batch_size: int = 64, input_shape: tuple[int, ...] = INPUT_SHAPE
) -> dict[str, int]:
    """Bytes of one SGD-with-momentum step, by category (see the module docstring) and ``total``.

    Runs one training-mode forward pass and cross-entropy loss on the model's own device (use a
    meta-device model for speed; the numbers are the same). The model is left as it was: its
    mode, and on real devices its buffers (BatchNorm statistics), are restored.
    """
    validate.integer(batch_size, "batch size")
    dev = _model_device(model)
    counted: set[tuple] = set()

    def once(t: torch.Tensor) -> int:
        key = _storage_key(t)
        if key in counted:
            return 0
        counted.add(key)
        return int(t.untyped_storage().nbytes())

    params = list(model.parameters())
    trainable = [p for p in params if p.requires_grad]
    out: dict[str, int] = {}
    out["parameters"] = sum(once(p) for p in params)
    per_param = sum(p.numel() * p.element_size() for p in trainable)
    out["gradients"] = per_param
    out["momentum"] = per_param
    out["buffers"] = sum(once(b) for b in model.buffers())

    x = torch.zeros(batch_size, *input_shape, device=dev)
    y = torch.zeros(batch_size, dtype=torch.long, device=dev)
    out["input"] = once(x) + once(y)

    saved: list[int] = []

    def pack(t: torch.Tensor) -> torch.Tensor:
        saved.append(once(t))
        return t

    was_training = model.training
    snapshot = None if dev.type == "meta" else [b.detach().clone() for b in model.buffers()]
    try:
        model.train()
        with torch.enable_grad(), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            _, loss = training_loss(model(x), y, 0.0)
        del loss  # frees the graph and with it every saved tensor
    finally:
        model.train(was_training)
        if snapshot is not None:
            with torch.no_grad():
                for b, s in zip(model.buffers(), snapshot):
                    b.copy_(s)
    out["saved"] = sum(saved)
    out["total"] = sum(out.values())
    return out


def _open_libraries(dev: torch.device) -> None:
    """Let cuBLAS and cuDNN set themselves up on ``dev`` before a peak is read.

    cuBLAS takes its workspace from the caching allocator on its first call and keeps it, so
    without this the first measurement in a process counted tens of MiB more than every later one
    (seen on an H100: VGG-19 w=0.5 read 311 MB first, 243 MB after).
    """
    w = torch.randn(8, 3, 3, 3, device=dev, requires_grad=True)
    x = torch.randn(2, 3, 8, 8, device=dev)
    b = torch.zeros(4, device=dev, requires_grad=True)  # with a bias, as nn.Linear: addmm may take cuBLASLt
    F.linear(F.conv2d(x, w).flatten(1), torch.randn(4, 288, device=dev), b).sum().backward()
    del w, x, b


def _cuda_peak(model: nn.Module, batch_size: int, input_shape: tuple[int, ...], dev: torch.device) -> int:
    """Allocator peak of one real SGD-with-momentum step on ``dev`` (bytes above what was there)."""
    validate.integer(batch_size, "batch size")
    _open_libraries(dev)
    torch.cuda.synchronize(dev)
    before = torch.cuda.memory_allocated(dev)
    if _model_device(model).type == "meta":
        work = copy.deepcopy(model).to_empty(device=dev)
        with torch.no_grad():
            for m in work.modules():
                reset = getattr(
                    m, "reset_parameters", None
                )  # a method; nn.Module's stubs type attributes as Tensor | Module
                if reset is not None:
                    reset()
    else:
        work = copy.deepcopy(model).to(dev)
    work.train()
    opt = torch.optim.SGD(work.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    x = torch.randn(batch_size, *input_shape, device=dev)
    y = torch.zeros(batch_size, dtype=torch.long, device=dev)
    try:
        _sgd_step(work, opt, x, y)  # warm-up: momentum buffers exist from now on, kernels are chosen
        opt.zero_grad(set_to_none=True)
        torch.cuda.synchronize(dev)
        torch.cuda.reset_peak_memory_stats(dev)
        _sgd_step(work, opt, x, y)
        torch.cuda.synchronize(dev)
        return int(torch.cuda.max_memory_allocated(dev) - before)
    finally:
        del opt, work, x, y  # the step's tensors go before the cache is emptied
        torch.cuda.empty_cache()


def _sgd_step(model: nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor) -> None:
    opt.zero_grad(set_to_none=True)
    training_loss(model(x), y, 0.0)[1].backward()
    opt.step()


def train_memory_bytes(
    model: nn.Module,
    batch_size: int = 64,
    input_shape: tuple[int, ...] = INPUT_SHAPE,
    device: DeviceLike = "cpu",
) -> int:
    """Training memory of one SGD step at ``batch_size``: the CPU account, or the CUDA peak.

    On ``cpu`` (or ``meta``) the account runs on the model where it is, so pass a meta-device
    model to make it instant. On CUDA a copy of the model is trained for two steps on the device.
    """
    dev = resolve_device(device)
    if dev.type == "cuda":
        return _cuda_peak(model, batch_size, tuple(input_shape), dev)
    return train_memory_account(model, batch_size, tuple(input_shape))["total"]


# --------------------------------------------------------------------------------------------
# Latency
# --------------------------------------------------------------------------------------------


def latency(
    model: nn.Module,
    batch_size: int,
    device: DeviceLike = "cpu",
    *,
    min_run_time: float = LATENCY_MIN_RUN_TIME,
    max_run_time: float | None = None,
    input_shape: tuple[int, ...] = INPUT_SHAPE,
    threads: int | None = None,
) -> dict[str, Any]:
    """Median and IQR (seconds) of one eval-mode, no-grad forward pass at ``batch_size``.

    One warm-up call, then ``Timer.adaptive_autorange`` (at least 4 timed blocks and
    ``min_run_time`` seconds, until IQR/median < 10% or ``max_run_time``, by default ten times
    ``min_run_time``; a model slower than that gets fewer blocks), at
    ``threads`` CPU threads (default: ``torch.get_num_threads()``; the process setting is restored
    afterwards). A model on another device is copied there, not moved.
    """
    validate.integer(batch_size, "batch size")
    dev = resolve_device(device)
    if _model_device(model).type == "meta":
        raise ValueError("latency needs a real model: build it on a device, not on meta")
    if _model_device(model) != dev:
        model = copy.deepcopy(model).to(dev)
    if threads is not None:
        validate.integer(threads, "thread count")
    before = torch.get_num_threads()
    threads = before if threads is None else threads
    was_training = model.training
    model.eval()
    torch.set_num_threads(threads)
    try:
        x = torch.randn(batch_size, *input_shape, device=dev)
        with torch.no_grad():
            model(x)  # warm-up: allocations, kernel selection
            if dev.type == "cuda":
                torch.cuda.synchronize(dev)
            timer = Timer(stmt="model(x)", globals={"model": model, "x": x}, num_threads=threads)
            limit = 10 * min_run_time if max_run_time is None else max_run_time
            m = timer.adaptive_autorange(threshold=0.1, min_run_time=min_run_time, max_run_time=limit)
    finally:
        model.train(was_training)
        torch.set_num_threads(before)
    return {"median_s": float(m.median), "iqr_s": float(m.iqr), "device": str(dev), "threads": threads}


# --------------------------------------------------------------------------------------------
# Everything about one architecture
# --------------------------------------------------------------------------------------------


def resources(
    arch: Any,
    batch_size: int = 64,
    device: DeviceLike = "cpu",
    *,
    memory: bool = True,
    latency: bool = True,
    min_run_time: float = LATENCY_MIN_RUN_TIME,
    threads: int | None = None,
) -> dict[str, Any]:
    """Every resource (parameters, FLOPs, training memory, latency) of ``arch``, as a JSON-ready dict.

    Keys: ``params``, ``flops``; with ``memory``: ``train_memory_bytes`` and
    ``train_memory_method`` ("cpu-account" or "cuda-peak"); with ``latency``: ``latency_s`` and
    ``latency_iqr_s``, each ``{"batch<batch_size>": s, "batch1": s}``; always ``batch_size``,
    ``device``, ``device_name`` and ``threads`` (the CPU threads latency was timed with:
    ``threads`` or ``torch.get_num_threads()``); ``image_size``, the input side it was counted at.
    """
    validate.integer(batch_size, "batch size")
    dev = resolve_device(device)
    shape = arch_shape(arch)
    out: dict[str, Any] = {"params": shape.params, "flops": shape.flops, "batch_size": batch_size}
    if memory:
        model = meta_model(arch)
        out["train_memory_bytes"] = train_memory_bytes(model, batch_size, input_shape_of(arch), device=dev)
        out["train_memory_method"] = "cuda-peak" if dev.type == "cuda" else "cpu-account"
    if latency:
        with torch.device(dev):
            model = arch.build()
        medians, iqrs = {}, {}
        for b in dict.fromkeys((batch_size, 1)):
            r = _latency_fn(model, b, dev, min_run_time=min_run_time, threads=threads, input_shape=input_shape_of(arch))
            medians[f"batch{b}"] = r["median_s"]
            iqrs[f"batch{b}"] = r["iqr_s"]
        out["latency_s"], out["latency_iqr_s"] = medians, iqrs
    out["device"] = str(dev)
    out["device_name"] = device_name(dev)
    out["threads"] = torch.get_num_threads() if threads is None else threads
    out["image_size"] = input_shape_of(arch)[1]
    return out


_latency_fn = latency  # ``resources`` has a parameter named ``latency``
