"""Fresh layers at new widths, in the image of a user's: the one place a module is re-created.

A plain ``Conv2d``/``Linear``/norm is made anew from its settings. A subclass of ``Conv2d`` or
``Linear`` (a weight-standardised, masked or binarised convolution) is made by calling its own
class with its own settings, read from the attributes its constructor names, so its forward and
its parameters' initialisation stay its own. A channel-wise layer of any other class (a norm with
its activation, a layer scale) is a copy of itself on the new channels (:mod:`.channelwise`).

A user's network is rebuilt as a copy of its module with these layers and its directly used
per-channel tensors put in (:func:`into_copy`); a model that exposes ``init_weights()`` (timm's
ResNet, ResNetV2, HRNet, ByobNet families) is then initialised by it, so every template, ``base``
included, starts from the same rule.
"""

from __future__ import annotations

import copy
import inspect
import math

import torch
from torch import nn

from filter_templates.core.errors import UsageError
from filter_templates.models.channelwise import resized

__all__ = ["into_copy", "put", "put_tensor", "rebuild"]

_CONV_SETTINGS = ("kernel_size", "stride", "padding", "dilation", "padding_mode")


def put(root: nn.Module, name: str, module: nn.Module) -> None:
    """Set ``module`` at dotted ``name`` under ``root``, making empty parents where there are none."""
    *parents, leaf = name.split(".")
    for p in parents:
        if not hasattr(root, p):
            root.add_module(p, nn.Module())
        root = getattr(root, p)
    root.add_module(leaf, module)


def put_tensor(root: nn.Module, name: str, tensor: torch.Tensor) -> None:
    """Set a parameter (or buffer) at dotted ``name`` under ``root``, replacing the one there."""
    *parents, leaf = name.split(".")
    for p in parents:
        if not hasattr(root, p):
            root.add_module(p, nn.Module())
        root = getattr(root, p)
    if isinstance(tensor, nn.Parameter):
        if leaf in root._buffers:
            del root._buffers[leaf]
        root.register_parameter(leaf, tensor)
    else:
        root.register_buffer(leaf, tensor)


def into_copy(
    source: nn.Module, layers: dict[str, nn.Module], tensors: dict[str, torch.Tensor] | None = None
) -> nn.Module:
    """A deep copy of ``source`` with ``layers`` (dotted name -> new module) and ``tensors`` (its own
    per-channel tensors, resized) put in, initialised by the model's ``init_weights()`` where it has
    one: the user's own forward (its branches on ``self.training``, its autograd functions, its
    auxiliary heads) then runs as written."""
    memo: dict[int, object] = {id(source.get_submodule(name)): layer for name, layer in layers.items()}
    for name, tensor in (tensors or {}).items():
        owner, _, leaf = name.rpartition(".")
        memo[id(getattr(source.get_submodule(owner), leaf))] = tensor
    # the layers being replaced are never copied (most of the weights); a meta-device build is meta throughout
    model = copy.deepcopy(source, memo).to(torch.get_default_device())
    for name, layer in layers.items():
        put(model, name, layer)
    for name, tensor in (tensors or {}).items():
        put_tensor(model, name, tensor)
    init = getattr(model, "init_weights", None)
    if callable(init) and not any(
        p.default is p.empty and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
        for p in inspect.signature(init).parameters.values()
    ):
        init()
    return model.train()


def rebuild(orig: nn.Module, kind: str, c_in: int, c_out: int) -> nn.Module:
    """A default-initialised module like ``orig`` (of record ``kind``: conv, dwconv, gconv, linear,
    norm) taking ``c_in`` and giving ``c_out`` channels."""
    if kind in ("conv", "dwconv", "gconv"):
        if not isinstance(orig, nn.Conv2d):  # the walker records these kinds for Conv2d modules only
            raise TypeError(f"a {kind} record for a {type(orig).__name__}, not a Conv2d")
        groups = c_in if kind == "dwconv" else orig.groups if kind == "gconv" else 1
        if type(orig) is not nn.Conv2d:
            return _own_class(orig, {"in_channels": c_in, "out_channels": c_out, "groups": groups})
        return nn.Conv2d(
            c_in,
            c_out,
            _pair(orig.kernel_size),
            stride=_pair(orig.stride),
            padding=orig.padding if isinstance(orig.padding, str) else _pair(orig.padding),
            dilation=_pair(orig.dilation),
            groups=groups,
            bias=orig.bias is not None,
            padding_mode=orig.padding_mode,
        )
    if kind == "channelwise":
        return resized(orig, c_out)
    if kind == "linear":
        if type(orig) is not nn.Linear:
            return _own_class(orig, {"in_features": c_in, "out_features": c_out})
        return nn.Linear(c_in, c_out, bias=orig.bias is not None)
    if isinstance(orig, (nn.BatchNorm1d, nn.BatchNorm2d, nn.InstanceNorm2d)):
        return type(orig)(
            c_out,
            eps=orig.eps,
            # InstanceNorm2d's stub says float, but it accepts None (a cumulative average) like BatchNorm
            momentum=orig.momentum,  # type: ignore[arg-type]
            affine=orig.affine,
            track_running_stats=orig.track_running_stats,
        )
    if isinstance(orig, nn.GroupNorm):  # keep the group count where it divides the new width
        return nn.GroupNorm(math.gcd(orig.num_groups, c_out), c_out, eps=orig.eps, affine=orig.affine)
    if isinstance(orig, nn.LayerNorm):
        return nn.LayerNorm(
            (c_out,),
            eps=orig.eps,
            elementwise_affine=orig.elementwise_affine,
            bias=getattr(orig, "bias", None) is not None,
        )
    if isinstance(orig, nn.PReLU):
        return nn.PReLU(c_out if orig.num_parameters > 1 else 1)
    raise AssertionError(f"no rebuild rule for {type(orig).__name__}")  # pragma: no cover


def _pair(size: tuple[int, ...]) -> tuple[int, int]:
    """A Conv2d's size, stored as a 2-tuple (``_ConvNd`` types it as any length)."""
    a, b = size
    return a, b


def _own_class(orig: nn.Module, sizes: dict[str, int]) -> nn.Module:
    """``type(orig)(...)`` with ``sizes`` and every other constructor argument read from ``orig``."""
    cls = type(orig)
    values = {**sizes, "bias": getattr(orig, "bias", None) is not None}
    kwargs: dict = {}
    open_kwargs = False
    for pname, p in list(inspect.signature(cls.__init__).parameters.items())[1:]:
        if p.kind is p.VAR_KEYWORD:
            open_kwargs = True
        elif p.kind is p.VAR_POSITIONAL:
            continue
        elif pname in values:
            kwargs[pname] = values[pname]
        elif hasattr(orig, pname):
            kwargs[pname] = getattr(orig, pname)
        elif p.default is p.empty:
            raise UsageError(
                f"cannot re-create {cls.__name__} at a new width: its constructor takes {pname!r}, "
                "which it does not keep as an attribute"
            )
    if open_kwargs and isinstance(orig, nn.Conv2d):  # the settings it passes on to Conv2d
        for key in _CONV_SETTINGS + ("bias", "groups"):
            kwargs.setdefault(key, values.get(key, getattr(orig, key)))
    try:
        new = cls(**kwargs)
    except Exception as exc:
        raise UsageError(
            f"cannot re-create {cls.__name__} at a new width ({type(exc).__name__}: {' '.join(str(exc).split())[:200]})"
        ) from None
    return new
