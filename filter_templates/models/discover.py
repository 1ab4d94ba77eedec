"""Channel groups of any CNN: which layers must share a width, found with torch.fx.

The model is traced symbolically (``torch.fx``) and run once on an example input to learn every
tensor's shape. Walking the graph in execution order, each tensor's channel dimension gets a
*layout*: a tuple of ``(group, multiplier)`` terms whose widths add up to its channel count
(a convolution's output is one fresh group; a concatenation joins its parts' terms; a flatten of a
``C x H x W`` map multiplies by ``H * W``). Additions, depthwise convolutions and norms tie groups
together (union-find). Every group that is neither the input's nor the classifier output's is a
template layer, ordered by first execution; groups can be *fixed* by naming a module that
produces them (they then scale with the width multiplier only, like a stem).

Why torch.fx and not Torch-Pruning's DependencyGraph: fx ships with torch and lists every op, so
an op we cannot reason about is refused by name; Torch-Pruning treats unknown ops as elementwise
(silently) and couples channels by index for removal, which cannot express "this width is the sum
of those two" that growing a concatenation's parts needs. We rebuild fresh layers, never slice.

Supported: ``Conv2d`` (``groups=1`` or depthwise ``groups=in=out``), ``Linear`` on 2-D input,
``BatchNorm1d/2d``, ``InstanceNorm2d``, ``GroupNorm``, ``LayerNorm`` over features, ``PReLU``;
activations, pools, dropout, upsampling; ``+ - * /`` and ``expand_as`` (with broadcasting), ``cat``,
``flatten`` and flatten-like ``view``/``reshape`` (hard-coded sizes are rewritten to
``flatten(x, 1)``), ``[N, C] -> [N, C, 1, 1]`` gates (``view``, ``unsqueeze``, ``[:, :, None, None]``),
``squeeze`` of 1x1 maps, spatial ``mean``/``sum``/``amax``. A layer tied to a concatenation (an SE
gate's conv) takes the sum of its parts' widths. Anything else is a
:class:`~filter_templates.core.errors.UsageError` that names the module or op.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import io
import json
import math
import operator
from dataclasses import dataclass, field
from typing import Any, Callable, NoReturn, Sequence

import torch
import torch.fx as fx
import torch.nn as nn
import torch.nn.functional as F
from torch.fx.passes.shape_prop import ShapeProp

from filter_templates.core.errors import UsageError
from filter_templates.core.images import IMAGE_SIZE
from filter_templates.models.channel_moves import ChannelMoves
from filter_templates.models.readings import DEFAULT_READING, Layer, read
from filter_templates.models.rebuild import into_copy, put, rebuild

__all__ = ["Group", "Plan", "discover", "trace", "INPUT_SHAPE"]

INPUT_SHAPE = (3, IMAGE_SIZE, IMAGE_SIZE)

Layout = tuple[tuple[int, int], ...]  # ((raw group id, multiplier), ...)

# ------------------------------------------------------------------------------------------------
# What the walker knows about ops
# ------------------------------------------------------------------------------------------------

_PASS_MODULES: tuple[type, ...] = (
    nn.ReLU,
    nn.ReLU6,
    nn.LeakyReLU,
    nn.ELU,
    nn.SELU,
    nn.CELU,
    nn.GELU,
    nn.SiLU,
    nn.Mish,
    nn.Hardswish,
    nn.Hardsigmoid,
    nn.Hardtanh,
    nn.Sigmoid,
    nn.Tanh,
    nn.Softplus,
    nn.Identity,
    nn.Dropout,
    nn.Dropout2d,
    nn.AlphaDropout,
    nn.MaxPool2d,
    nn.AvgPool2d,
    nn.AdaptiveAvgPool2d,
    nn.AdaptiveMaxPool2d,
    nn.Upsample,
    nn.ZeroPad2d,
    nn.ReflectionPad2d,
    nn.ReplicationPad2d,
)
_DROPOUT_FNS: dict[object, Callable[[float], nn.Module]] = {
    F.dropout: nn.Dropout,
    F.dropout2d: nn.Dropout2d,
    F.alpha_dropout: nn.AlphaDropout,
}
_PASS_FNS = {
    F.relu,
    F.relu6,
    F.leaky_relu,
    F.elu,
    F.selu,
    F.celu,
    F.gelu,
    F.silu,
    F.mish,
    F.hardswish,
    F.hardsigmoid,
    F.hardtanh,
    F.softplus,
    F.sigmoid,
    F.tanh,
    torch.relu,
    torch.sigmoid,
    torch.tanh,
    torch.clamp,
    torch.zeros_like,
    torch.ones_like,
    torch.empty_like,
    torch.full_like,
    F.max_pool2d,
    F.avg_pool2d,
    F.adaptive_avg_pool2d,
    F.adaptive_max_pool2d,
    F.interpolate,
    F.pad,
    torch.nn.functional.relu_,
}
_PASS_METHODS = {
    "relu",
    "relu_",
    "sigmoid",
    "sigmoid_",
    "tanh",
    "tanh_",
    "clamp",
    "clamp_",
    "contiguous",
    "clone",
    "float",
    "to",
    "detach",
    "type_as",
}
_BINARY_FNS = {
    operator.add,
    operator.sub,
    operator.mul,
    operator.truediv,
    operator.iadd,
    operator.isub,
    operator.imul,
    operator.itruediv,
    torch.add,
    torch.sub,
    torch.mul,
    torch.div,
}
_BINARY_METHODS = {"add", "add_", "sub", "sub_", "mul", "mul_", "div", "div_", "expand_as"}
_SUMS = {operator.add, operator.sub, operator.iadd, operator.isub, torch.add, torch.sub, "add", "add_", "sub", "sub_"}
_REDUCE_FNS = {torch.mean: "mean", torch.sum: "sum", torch.amax: "amax"}
_REDUCE_METHODS = {"mean", "sum", "amax"}
_NONTENSOR_METHODS = {"size", "dim"}
_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.InstanceNorm2d, nn.GroupNorm, nn.LayerNorm, nn.PReLU)


def _fn_name(target: Any) -> str:
    if isinstance(target, str):
        return f".{target}()"
    mod = getattr(target, "__module__", None) or ""
    name = getattr(target, "__name__", repr(target))
    return f"{mod}.{name}" if mod and mod not in ("_operator", "builtins") else name


# ------------------------------------------------------------------------------------------------
# The result
# ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Group:
    """Channels that must share one width. ``role``: free (a template layer), fixed (scaled by the
    width multiplier only), input (the image channels), output (the class count) or derived (the
    sum of a concatenation's parts it is tied to)."""

    base: int
    role: str
    modules: tuple[str, ...]  # modules whose output channels are this group's, in execution order
    producers: tuple[str, ...]  # the convolutions/linears that create it


@dataclass(frozen=True)
class _Rec:
    """How to re-create one module: its kind and the layouts of its input and output channels."""

    kind: str  # conv, dwconv, gconv (grouped), linear, norm
    ins: Layout
    outs: Layout


@dataclass
class Plan:
    """A discovered model: its graph, its layers' records and its channel groups."""

    graph: fx.Graph
    originals: dict[str, nn.Module]  # every call_module target of the graph (base model's modules)
    records: dict[str, _Rec]
    root_of: dict[int, int]  # raw group id -> index into ``groups``
    groups: list[Group]
    fingerprint: str
    name: str = "Model"
    _extra: dict[str, nn.Module] = field(default_factory=dict)  # dropout modules replacing F.dropout
    derived: dict[int, Layout] = field(default_factory=dict)  # group index -> layout whose sum is its width
    layers: list[Layer] = field(default_factory=list)  # the template layers (the reading's)
    multiples: dict[int, int] = field(default_factory=dict)  # group index -> the grouped convs' group count
    pads: dict[str, tuple[int | None, int | None]] = field(default_factory=dict)  # F.pad node -> its channel groups
    reading: str = DEFAULT_READING
    source: nn.Module | None = None  # the user's module, when a model is its copy with new layers

    @property
    def template_groups(self) -> list[int]:
        return [i for i, g in enumerate(self.groups) if g.role == "free"]

    def widths(
        self,
        filters: Sequence[int],
        num_classes: int,
        fixed: Callable[[int], int],
        scale: Callable[[float], int] = round,
    ) -> list[int]:
        """One width per group: a template layer's count for its output group, ``scale(base * count /
        layer base)`` for the groups inside it, ``fixed(base)`` for fixed groups, the class count for
        the output, the base width for the input; a grouped conv's groups to a multiple of its groups."""
        count: dict[int, int] = {}
        for layer, f in zip(self.layers, filters):
            for i in layer.members:
                b = self.groups[i].base
                count[i] = int(f) if b == layer.base else scale(b * f / layer.base)
        out: list[int] = []
        for i, g in enumerate(self.groups):
            w = (
                count[i]
                if g.role == "free"
                else fixed(g.base)
                if g.role == "fixed"
                else num_classes
                if g.role == "output"
                else g.base
            )
            m = self.multiples.get(i, 1) if g.role in ("free", "fixed") else 1
            out.append(max(m, round(w / m) * m))

        def resolve(i: int, seen: tuple[int, ...] = ()) -> int:
            if i not in self.derived:
                return out[i]
            return sum(m * resolve(self.root_of[r], seen + (i,)) for r, m in self.derived[i])

        return [resolve(i) for i in range(len(out))]

    def build(self, widths: Sequence[int]) -> nn.Module:
        """A fresh, default-initialised model with every group at its width in ``widths``: the traced
        graph (``GraphModule``) with new layers, or, for a forward that branches on ``self.training``,
        a copy of the user's own module with new layers put in."""

        def w(layout: Layout) -> int:
            return sum(m * widths[self.root_of[r]] for r, m in layout)

        if self.source is not None:
            return into_copy(
                self.source,
                {
                    name: rebuild(self.originals[name], rec.kind, w(rec.ins), w(rec.outs))
                    for name, rec in self.records.items()
                },
            )
        root = nn.Module()  # holds the new layers under their original names, in execution order
        for name, orig in self.originals.items():
            rec = self.records.get(name)
            put(root, name, copy.deepcopy(orig) if rec is None else rebuild(orig, rec.kind, w(rec.ins), w(rec.outs)))
        for name, mod in self._extra.items():
            put(root, name, copy.deepcopy(mod))
        graph = copy.deepcopy(self.graph)
        for node in graph.nodes:  # a channel padding pads by its groups' new widths
            if node.name in self.pads:
                pad = list(_arg(node, 1, "pad", ()))[:4] + [0 if g is None else widths[g] for g in self.pads[node.name]]
                node.args, node.kwargs = (
                    (node.args[0], tuple(pad)) + tuple(node.args[2:]),
                    {k: v for k, v in node.kwargs.items() if k != "pad"},
                )
        return fx.GraphModule(root, graph, class_name=self.name)


# ------------------------------------------------------------------------------------------------
# Discovery
# ------------------------------------------------------------------------------------------------


class _Groups:
    """The rules of channel groups, apart from the graph: a union-find over raw groups (each made by
    one layer, ``base`` channels wide, first seen at walk step ``first``), the ties an op makes
    between layouts, and aliases (a group whose width is the sum of a concatenation's)."""

    def __init__(self) -> None:
        self.parent: list[int] = []
        self.base: list[int] = []
        self.first: list[int] = []
        self.producer: list[str | None] = []
        self.alias: dict[int, Layout] = {}  # root -> the layout whose sum its width is
        self.multiple: dict[int, int] = {}  # raw group -> a grouped conv's group count its width must divide by
        self.step = 0

    def new(self, base: int, producer: str | None) -> int:
        self.parent.append(len(self.parent))
        self.base.append(int(base))
        self.first.append(self.step)
        self.producer.append(producer)
        return len(self.parent) - 1

    def find(self, r: int) -> int:
        while self.parent[r] != r:
            self.parent[r] = self.parent[self.parent[r]]
            r = self.parent[r]
        return r

    def union(self, a: int, b: int, where: str) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra == rb:
            return
        if self.base[ra] != self.base[rb]:  # a model that runs cannot do this; refuse rather than guess
            raise UsageError(f"{where} ties {self.base[ra]} channels to {self.base[rb]}; cannot reason about it")
        keep, gone = min(ra, rb), max(ra, rb)
        self.parent[gone] = keep
        if gone in self.alias:
            moved = self.alias.pop(gone)
            if keep in self.alias:
                self.tie(self.alias[keep], moved, where)
            else:
                self.alias_to(keep, moved, where)

    def tie(self, a: Layout, b: Layout, where: str) -> None:
        if len(a) == len(b) and all(ma == mb for (_, ma), (_, mb) in zip(a, b)):
            for (ga, _), (gb, _) in zip(a, b):
                self.union(ga, gb, where)
        elif len(b) == 1 and b[0][1] == 1 and len(a) > 1:  # one layer's channels = a concatenation's
            self.alias_to(b[0][0], a, where)
        elif len(a) == 1 and a[0][1] == 1 and len(b) > 1:
            self.alias_to(a[0][0], b, where)
        else:
            raise UsageError(
                f"{where} combines tensors whose channels are made differently "
                f"({self._fmt(a)} vs {self._fmt(b)}); this is not supported"
            )

    def alias_to(self, r: int, layout: Layout, where: str) -> None:
        """Group ``r``'s width is the sum of ``layout`` (e.g. an SE gate's conv on a concatenation):
        it follows those groups and is no template layer of its own."""
        root = self.find(r)
        if root in self.alias:
            self.tie(self.alias[root], layout, where)
            return
        if any(self.find(g) == root for g, _ in layout) or self.base[root] != self.width(layout):
            raise UsageError(f"{where} ties {self.base[root]} channels to {self._fmt(layout)}; cannot reason about it")
        self.alias[root] = layout

    def _fmt(self, layout: Layout) -> str:
        return " + ".join(f"{m}x{self.base[r]}" if m != 1 else str(self.base[r]) for r, m in layout)

    def width(self, layout: Layout) -> int:
        return sum(m * self.base[r] for r, m in layout)


class _Walker(_Groups, ChannelMoves):
    """The walk over a traced graph: each node's channel layout from its inputs, by the kind of
    op, recording every layer that makes channels and the rewrites a rebuilt model needs."""

    def __init__(self, gm: fx.GraphModule) -> None:
        super().__init__()
        self.gm = gm
        self.modules = dict(gm.named_modules())
        self.input_raws: set[int] = set()
        self.output_raws: set[int] = set()
        self.layout: dict[fx.Node, Layout] = {}
        self.records: dict[str, _Rec] = {}
        self.init_moves()
        self.sums: list[tuple[str, Layout]] = []  # (scope, the terms an addition ties): residual streams
        self.cats: list[tuple[str, Layout]] = []  # (scope, the parts of a channel concatenation)
        self.rewrites: dict[fx.Node, str] = {}  # node -> "flatten" | "identity" | "dropout"

    # -- helpers ---------------------------------------------------------------------------------
    def scope(self, node: fx.Node) -> str:
        """The module whose forward made ``node`` ('' for the network's own forward)."""
        if node.op == "call_module":
            return str(node.target).rpartition(".")[0]
        stack = node.meta.get("nn_module_stack") or {}
        if not stack:
            return ""
        path = list(stack.values())[-1]
        return path[0] if isinstance(path, tuple) else str(path)

    def where(self, node: fx.Node) -> str:
        if node.op == "call_module":
            return f"module '{node.target}' ({type(self.modules[node.target]).__name__})"
        stack = node.meta.get("nn_module_stack") or {}
        inside = f" in the forward of {type(self.gm).__name__.removesuffix('GraphModule') or 'the model'}"
        if stack:
            path = list(stack.values())[-1]
            path = path[0] if isinstance(path, tuple) else str(path)
            inside = f" in module '{path}'"
        return f"op '{_fn_name(node.target)}'{inside} (graph node '{node.name}')"

    @staticmethod
    def shape(node: Any) -> tuple[int, ...] | None:
        if not isinstance(node, fx.Node):
            return None
        meta = node.meta.get("tensor_meta")
        return tuple(meta.shape) if meta is not None and hasattr(meta, "shape") else None

    def tensor_args(self, node: fx.Node) -> list[fx.Node]:
        out: list[fx.Node] = []
        for a in list(node.args) + list(node.kwargs.values()):
            for x in a if isinstance(a, (list, tuple)) else [a]:
                if isinstance(x, fx.Node) and self.shape(x) is not None and x not in out:
                    out.append(x)
        return out

    def refuse(self, node: fx.Node, why: str = "is not supported") -> NoReturn:
        raise UsageError(
            f"cannot find the channel groups: {self.where(node)} {why}. Supported: Conv2d "
            "(any groups), Linear, BatchNorm/GroupNorm/LayerNorm, activations, pools, "
            "dropout, + - * /, cat, flatten/view to [N, features], spatial mean"
        )

    def tshape(self, node: fx.Node) -> tuple[int, ...]:
        """The shape of a node that is a tensor (ShapeProp gave every one its shape)."""
        s = self.shape(node)
        if s is None:
            self.refuse(node, "gives a value of unknown shape where a tensor is expected")
        return s

    def first_input(self, node: fx.Node) -> fx.Node:
        x = node.args[0] if node.args else None
        if not isinstance(x, fx.Node) or x not in self.layout:
            self.refuse(node, "has no tensor input with known channels")
        return x

    def passthrough(self, node: fx.Node) -> None:
        x = self.first_input(node)
        sx, so = self.tshape(x), self.shape(node)
        if so is None or len(so) != len(sx) or so[:2] != sx[:2]:
            self.refuse(node, f"changes the batch or channel dimension ({list(sx)} -> {list(so or ())})")
        self.layout[node] = self.layout[x]

    @staticmethod
    def _dims(dims: Any, ndim: int) -> set[int] | None:
        if dims is None:
            return None
        dims = [dims] if isinstance(dims, int) else list(dims)
        return {d % ndim for d in dims}

    # -- the walk --------------------------------------------------------------------------------
    def run(self) -> None:
        for self.step, node in enumerate(self.gm.graph.nodes):
            getattr(self, f"op_{node.op}")(node)

    def op_placeholder(self, node: fx.Node) -> None:
        s = self.shape(node)
        if s is None:
            return
        if len(s) != 4:
            self.refuse(node, f"is an input of shape {list(s)}; expected one image batch [N, C, H, W]")
        r = self.new(s[1], None)
        self.input_raws.add(r)
        self.layout[node] = ((r, 1),)

    def op_get_attr(self, node: fx.Node) -> None:
        raise UsageError(
            f"cannot find the channel groups: the model uses its own tensor '{node.target}' outside a "
            "supported layer (a parameter or buffer used directly in forward); this is not supported"
        )

    def op_output(self, node: fx.Node) -> None:
        out = node.args[0]
        if not isinstance(out, fx.Node) or out not in self.layout:
            raise UsageError(
                "the model's forward must return one logits tensor [N, classes]; it returns "
                f"{type(out).__name__ if not isinstance(out, fx.Node) else 'a value of unknown channels'}"
            )
        layout, s = self.layout[out], self.tshape(out)
        if len(s) != 2 or len(layout) != 1 or layout[0][1] != 1:
            raise UsageError(
                f"the model's forward must return logits [N, classes] from one layer; it returns a "
                f"tensor of shape {list(s)} made of {self._fmt(layout)} channels"
            )
        self.output_raws.add(layout[0][0])

    def op_call_module(self, node: fx.Node) -> None:
        name, mod = str(node.target), self.modules[str(node.target)]
        if isinstance(mod, nn.Flatten):
            self.flatten(node, mod.start_dim, mod.end_dim)
        elif isinstance(mod, _PASS_MODULES):
            self.passthrough(node)
        elif isinstance(mod, nn.Conv2d):
            self.conv(node, name, mod)
        elif isinstance(mod, nn.Linear):
            x = self.first_input(node)
            if len(self.tshape(x)) != 2:
                self.refuse(
                    node,
                    f"is applied to a tensor of shape {list(self.tshape(x))}; only [N, features] "
                    "(flatten or pool first) is supported",
                )
            self.record(node, name, "linear", self.layout[x], None, mod.in_features, mod.out_features)
        elif isinstance(mod, _NORMS) and type(mod) in _NORMS:
            x = self.first_input(node)
            if isinstance(mod, nn.LayerNorm) and (len(self.tshape(x)) != 2 or len(mod.normalized_shape) != 1):
                self.refuse(node, "normalises more than the features of an [N, features] tensor")
            if isinstance(mod, nn.PReLU) and mod.num_parameters == 1:
                self.passthrough(node)
                return
            self.passthrough(node)
            n = {nn.GroupNorm: "num_channels", nn.LayerNorm: "normalized_shape", nn.PReLU: "num_parameters"}
            size = getattr(mod, next((v for k, v in n.items() if isinstance(mod, k)), "num_features"))
            size = size[0] if isinstance(size, tuple) else size
            self.record(node, name, "norm", self.layout[x], self.layout[x], size, size)
        else:
            self.refuse(node)

    def conv(self, node: fx.Node, name: str, mod: nn.Conv2d) -> None:
        x = self.first_input(node)
        if len(self.tshape(x)) != 4:
            self.refuse(node, f"is applied to a tensor of shape {list(self.tshape(x))}")
        ins = self.layout[x]
        if mod.groups == 1:
            self.record(node, name, "conv", ins, None, mod.in_channels, mod.out_channels)
        elif mod.groups == mod.in_channels == mod.out_channels:
            self.record(node, name, "dwconv", ins, ins, mod.in_channels, mod.out_channels)
        else:  # grouped: the group count stays, every width it touches stays a multiple of it
            self.record(node, name, "gconv", ins, None, mod.in_channels, mod.out_channels)
            for r, _ in ins + self.layout[node]:
                self.multiple[r] = math.lcm(self.multiple.get(r, 1), mod.groups)

    def record(
        self, node: fx.Node, name: str, kind: str, ins: Layout, outs: Layout | None, c_in: int, c_out: int
    ) -> None:
        if self.width(ins) != c_in:
            self.refuse(node, f"expects {c_in} input channels but gets {self.width(ins)}")
        prev = self.records.get(name)
        if prev is not None:  # the same module called again: same layouts both times
            self.tie(prev.ins, ins, self.where(node))
            self.layout[node] = prev.outs
            return
        if outs is None:
            outs = ((self.new(c_out, name), 1),)
        self.records[name] = _Rec(kind, ins, outs)
        self.layout[node] = outs

    def sizes_only(self, node: fx.Node) -> bool:
        """Arithmetic on sizes (``c // 2``, ``x.size(0)``): no tensor in, no tensor out."""
        return self.shape(node) is None and not self.tensor_args(node)

    def op_call_function(self, node: fx.Node) -> None:
        t = node.target
        if self.sizes_only(node) and t is not getattr:
            return
        if t is F.pad:
            self.pad(node, _arg(node, 1, "pad", None))
        elif t is torch.chunk:
            self.chunk(node, _arg(node, 1, "chunks", None), _arg(node, 2, "dim", 0))
        elif t is operator.getitem and node.args and node.args[0] in self.chunks:
            self.take(node)
        elif t is torch.transpose and self.shuffle_transpose(node, tuple(node.args[1:3])):
            return
        elif t in _DROPOUT_FNS:
            self.passthrough(node)
            self.rewrites[node] = "dropout"
        elif t in _PASS_FNS:
            self.passthrough(node)
        elif t in _BINARY_FNS:
            self.binary(node)
        elif t in (torch.cat, torch.concat):
            self.cat(node)
        elif t is torch.flatten:
            self.flatten(node, _arg(node, 1, "start_dim", 0), _arg(node, 2, "end_dim", -1))
        elif t is torch.reshape:
            self.reshape(node)
        elif t in _REDUCE_FNS:
            self.reduce(node, _arg(node, 1, "dim", None), _arg(node, 2, "keepdim", False))
        elif t in (torch.unsqueeze, torch.squeeze):
            self.same_channels(node)
        elif t is operator.getitem and node.args and node.args[0] in self.layout:
            idx = node.args[1] if isinstance(node.args[1], tuple) else (node.args[1],)
            full = slice(None, None, None)
            if len(idx) < 2 or idx[0] != full or idx[1] != full or any(isinstance(i, fx.Node) for i in idx):
                self.refuse(node, "indexes or slices the batch or channel dimension of a feature map")
            self.same_channels(node)  # x[:, :, None, None], x[:, :, 1:, 1:]
        elif t is getattr or t is operator.getitem:
            if self.shape(node) is not None:
                self.refuse(node, "indexes a tensor")
        else:
            self.refuse(node)

    def op_call_method(self, node: fx.Node) -> None:
        t = str(node.target)
        if t in _NONTENSOR_METHODS or self.sizes_only(node):
            return
        if t in _PASS_METHODS and self.shuffle_pass(node):
            return
        if t in _PASS_METHODS:
            self.passthrough(node)
        elif t == "chunk":
            self.chunk(node, _arg(node, 1, "chunks", None), _arg(node, 2, "dim", 0))
        elif t == "transpose" and self.shuffle_transpose(node, tuple(node.args[1:3])):
            return
        elif t in _BINARY_METHODS:
            self.binary(node)
        elif t == "flatten":
            self.flatten(node, _arg(node, 1, "start_dim", 0), _arg(node, 2, "end_dim", -1))
        elif t in ("view", "reshape"):
            self.reshape(node)
        elif t in ("unsqueeze", "squeeze"):
            self.same_channels(node)
        elif t in _REDUCE_METHODS:
            self.reduce(node, _arg(node, 1, "dim", None), _arg(node, 2, "keepdim", False))
        else:
            self.refuse(node)

    def binary(self, node: fx.Node) -> None:
        so = self.shape(node)
        if so is None:
            return  # arithmetic on sizes
        full: list[fx.Node] = []
        for x in self.tensor_args(node):
            sx = self.tshape(x)  # tensor_args keeps nodes of known shape
            if len(sx) == 0 or math.prod(sx) == 1:
                continue
            if len(sx) != len(so):
                self.refuse(node, f"broadcasts a tensor of shape {list(sx)} against {list(so)}")
            if sx[1] == 1 and so[1] != 1:
                continue
            if x not in self.layout:
                self.refuse(node, "uses a tensor of unknown channels")
            full.append(x)
        if not full:
            self.refuse(node, "has no feature-map operand")
        for x in full[1:]:
            self.tie(self.layout[full[0]], self.layout[x], self.where(node))
        if len(full) > 1 and node.target in _SUMS:
            self.sums.append((self.scope(node), tuple(t for x in full for t in self.layout[x])))
        self.layout[node] = self.layout[full[0]]

    def cat(self, node: fx.Node) -> None:
        parts = _nodes(node.args[0] if node.args else node.kwargs.get("tensors"))
        dim = _arg(node, 1, "dim", 0)
        if parts is None or not all(p in self.layout for p in parts):
            self.refuse(node, "joins tensors of unknown channels")
        ndim = len(self.tshape(node))
        if dim % ndim == 1:
            self.layout[node] = tuple(t for p in parts for t in self.layout[p])
            self.cats.append((self.scope(node), self.layout[node]))
        else:
            for p in parts[1:]:
                self.tie(self.layout[parts[0]], self.layout[p], self.where(node))
            self.layout[node] = self.layout[parts[0]]

    def flatten(self, node: fx.Node, start: int, end: int) -> None:
        x = self.first_input(node)
        sx = self.tshape(x)
        if start % len(sx) != 1 or end % len(sx) != len(sx) - 1:
            self.refuse(node, f"flattens dims {start}..{end} of {list(sx)}; only flatten(x, 1) is supported")
        hw = math.prod(sx[2:])
        self.layout[node] = tuple((r, m * hw) for r, m in self.layout[x])

    def reshape(self, node: fx.Node) -> None:
        x0 = node.args[0] if node.args else None
        sx0, so0 = self.shape(x0), self.shape(node)
        if isinstance(x0, fx.Node) and sx0 is not None and so0 is not None and self.shuffle_view(node, x0, sx0, so0):
            return
        x = self.first_input(node)
        sx, so = self.tshape(x), self.tshape(node)
        if so == sx:
            self.layout[node] = self.layout[x]
            self.rewrites[node] = "identity"
        elif len(so) == 2 and so[0] == sx[0] and so[1] == math.prod(sx[1:]):
            self.flatten(node, 1, -1)
            self.rewrites[node] = "flatten"
        elif len(sx) == 2 and so[:2] == sx and math.prod(so[2:]) == 1:  # [N, C] -> [N, C, 1, 1] (an SE gate)
            self.layout[node] = self.layout[x]
            self.rewrites[node] = f"expand{len(so) - 2}"
        else:
            self.refuse(node, f"reshapes {list(sx)} to {list(so)}; only reshapes to [N, features] are supported")

    def same_channels(self, node: fx.Node) -> None:
        """Ops that only add or drop size-1 spatial dims (or crop them): channels pass through."""
        x = self.first_input(node)
        sx, so = self.tshape(x), self.shape(node)
        if (
            so is None
            or len(so) < 2
            or so[:2] != sx[:2]
            or (len(so) != len(sx) and (math.prod(so[2:]) != 1 or math.prod(sx[2:]) != 1))
        ):
            self.refuse(node, f"changes the batch or channel dimension ({list(sx)} -> {list(so or ())})")
        self.layout[node] = self.layout[x]

    def reduce(self, node: fx.Node, dims: Any, keepdim: bool) -> None:
        x = self.first_input(node)
        sx = self.tshape(x)
        d = self._dims(dims, len(sx))
        if d is None or 0 in d or 1 in d:
            self.refuse(node, "reduces over the batch or channel dimension")
        self.layout[node] = self.layout[x]


def _node(arg: fx.node.Argument) -> fx.Node:
    """``arg`` as a graph node: the walker rewrites only nodes whose first argument is a tensor node."""
    if not isinstance(arg, fx.Node):
        raise TypeError(f"expected a graph node, got {type(arg).__name__}")
    return arg


def _nodes(arg: fx.node.Argument) -> list[fx.Node] | None:
    """``arg`` as a list of graph nodes when it is a list or tuple of them, else None."""
    if isinstance(arg, (list, tuple)) and all(isinstance(a, fx.Node) for a in arg):
        return [a for a in arg if isinstance(a, fx.Node)]
    return None


def _arg(node: fx.Node, pos: int, name: str, default: Any) -> Any:
    if len(node.args) > pos:
        return node.args[pos]
    return node.kwargs.get(name, default)


class _Tracer(fx.Tracer):
    """fx's tracer, with every convolution and linear layer a leaf, subclasses too (a masked or
    binarised convolution is one layer, its own forward kept)."""

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return isinstance(m, (nn.Conv2d, nn.Linear)) or super().is_leaf_module(m, module_qualified_name)


def trace(model: nn.Module) -> fx.GraphModule:
    """The model's torch.fx graph module; UsageError in one line when fx cannot trace it."""
    try:
        graph = _Tracer().trace(model)
        return fx.GraphModule(model, graph, class_name=type(model).__name__)
    except Exception as exc:  # control flow on tensors, unsupported Python: say so in one line
        msg = " ".join(str(exc).split())[:300]
        raise UsageError(
            f"cannot trace the model with torch.fx ({type(exc).__name__}: {msg}); its forward must "
            "not branch on tensor values"
        ) from None


def discover(
    model: nn.Module,
    fixed: Sequence[str] = (),
    *,
    name: str = "Model",
    input_shape: tuple[int, ...] = INPUT_SHAPE,
    reading: str = DEFAULT_READING,
) -> Plan:
    """The channel groups of ``model`` on inputs of ``input_shape``; ``fixed`` names modules (or
    parents of modules) whose output groups are fixed rather than template layers; ``reading``
    (:mod:`.readings`) says which groups share one template layer. Read in eval mode; a forward that
    traces differently in train mode (stochastic depth, shake-shake) is rebuilt as a copy of the
    user's module, checked by running it at other widths."""
    with torch.device("cpu"):
        was_training = model.training
        try:
            gm_eval = trace(model.eval())
            try:
                gm: fx.GraphModule | None = trace(model.train())
            except UsageError:  # e.g. float() of a tensor in a training-only branch
                gm = None
        finally:
            model.train(was_training)
        _normalise_dropout(gm_eval)
        if gm is not None:
            _normalise_dropout(gm)
        own = gm is None or gm.code != gm_eval.code
        chosen = gm_eval if own or gm is None else gm
        chosen.eval()
        _shapes(chosen, input_shape)
    walker = _Walker(chosen)
    walker.run()
    plan = _plan(walker, chosen, tuple(fixed), name, reading, copy.deepcopy(model).eval() if own else None)
    if own:
        _check_own(plan, input_shape)
    return plan


def _shapes(gm: fx.GraphModule, input_shape: tuple[int, ...]) -> None:
    """Every node's shape on a batch of two zero images (fx's own traceback print silenced)."""
    try:
        with torch.no_grad(), contextlib.redirect_stderr(io.StringIO()):
            ShapeProp(gm).propagate(torch.zeros(2, *input_shape))
    except Exception as exc:
        msg = " ".join(str(exc).split())[:300]
        raise UsageError(
            f"the model does not run on a [2, {', '.join(map(str, input_shape))}] input ({type(exc).__name__}: {msg})"
        ) from None


def _check_own(plan: Plan, input_shape: tuple[int, ...]) -> None:
    """A copy of the user's module with new layers must run, in both modes, at widths other than its
    own: a forward with sizes written into it would not, and is refused here rather than in training."""
    filters = [layer.base + max(1, layer.base // 4) for layer in plan.layers]
    widths = plan.widths(filters, 10, lambda b: b, round)
    model = plan.build(widths)
    try:
        with torch.no_grad():
            for mode in (True, False):
                out = model.train(mode)(torch.zeros(2, *input_shape))
                if tuple(out.shape) != (2, 10):
                    raise RuntimeError(f"it returns shape {list(out.shape)}")
    except Exception as exc:
        msg = " ".join(str(exc).split())[:200]
        raise UsageError(
            "the model's forward depends on self.training and does not run with its layers at other "
            f"widths ({type(exc).__name__}: {msg}); sizes written into its forward are not "
            "supported there"
        ) from None


def _normalise_dropout(gm: fx.GraphModule) -> None:
    """``F.dropout(x, p, self.training)`` traces with ``training`` frozen; compare traces without it."""
    for node in gm.graph.nodes:
        if node.op == "call_function" and node.target in _DROPOUT_FNS:
            node.kwargs = {k: v for k, v in node.kwargs.items() if k != "training"}
            node.args = node.args[:2]
    gm.recompile()


def _plan(
    wk: _Walker, gm: fx.GraphModule, fixed: tuple[str, ...], name: str, reading: str, source: nn.Module | None
) -> Plan:
    members = _members(wk)
    roots = sorted(members, key=lambda r: wk.first[members[r][0]])
    groups = _groups(wk, roots, members, fixed)
    index = {r: i for i, r in enumerate(roots)}
    root_of = {x: index[wk.find(x)] for x in range(len(wk.parent))}
    graph, extra = _rewrite(gm, wk.rewrites)
    originals = {
        str(n.target): wk.modules[str(n.target)]
        for n in graph.nodes
        if n.op == "call_module" and str(n.target) not in extra
    }
    records = {k: v for k, v in wk.records.items()}
    multiples: dict[int, int] = {}
    for r, m in wk.multiple.items():
        multiples[root_of[r]] = math.lcm(multiples.get(root_of[r], 1), m)
    sums = [(scope, tuple(root_of[r] for r, _ in terms)) for scope, terms in wk.sums]
    cats = [(scope, tuple((root_of[r], m) for r, m in terms)) for scope, terms in wk.cats]
    derived = {index[r]: layout for r, layout in wk.alias.items()}
    pads = {n: (None if a is None else root_of[a], None if b is None else root_of[b]) for n, (a, b) in wk.pads.items()}
    layers = read(
        groups, sums, cats, reading, {i: tuple((root_of[r], m) for r, m in lay) for i, lay in derived.items()}
    )
    fp = _fingerprint(graph, originals, groups, layers, reading, source)
    return Plan(
        graph,
        originals,
        records,
        root_of,
        groups,
        fp,
        name=name,
        _extra=extra,
        derived=derived,
        layers=layers,
        multiples=multiples,
        reading=reading,
        source=source,
        pads=pads,
    )


def _members(wk: _Walker) -> dict[int, list[int]]:
    """Each group's raw ids by root; raw ids are created in execution order, so the first member is the first use."""
    members: dict[int, list[int]] = {}
    for x in range(len(wk.parent)):
        members.setdefault(wk.find(x), []).append(x)
    return members


def _touched(wk: _Walker, roots: list[int]) -> dict[int, list[str]]:
    """The modules whose outputs land in each group, in record order, each once."""
    touched: dict[int, list[str]] = {r: [] for r in roots}
    for mod_name, rec in wk.records.items():
        for r, _ in rec.outs:
            if mod_name not in touched[wk.find(r)]:
                touched[wk.find(r)].append(mod_name)
    return touched


def _groups(wk: _Walker, roots: list[int], members: dict[int, list[int]], fixed: tuple[str, ...]) -> list[Group]:
    """The channel groups in ``roots``' order, each with its role; raises on a model nothing can be templated in."""
    touched = _touched(wk, roots)
    used_fixed: set[str] = set()
    groups: list[Group] = []
    for r in roots:
        group, hits = _group(wk, r, members[r], touched[r], fixed)
        used_fixed |= hits
        groups.append(group)
    _check_groups(groups, fixed, used_fixed)
    return groups


def _group(
    wk: _Walker, r: int, members: list[int], touched: list[str], fixed: tuple[str, ...]
) -> tuple[Group, set[str]]:
    """Group ``r`` with its role, and the ``--fix`` names that hit it; raises on combinations not supported."""
    producers = tuple(p for p in (wk.producer[x] for x in members) if p is not None)
    is_in = any(x in wk.input_raws for x in members)
    is_out = any(x in wk.output_raws for x in members)
    hits = {f for f in fixed for p in producers if p == f or p.startswith(f + ".")}
    if is_in and is_out:
        raise UsageError("the model's output channels are tied to its input channels; nothing to template")
    if hits and (is_in or is_out):
        raise UsageError(
            f"--fix {sorted(hits)[0]}: that group is the {'input' if is_in else 'classifier output'}, "
            "which is never a template layer anyway"
        )
    if r in wk.alias and (is_in or is_out or hits):
        raise UsageError(
            f"channels of {', '.join(producers) or 'the input'} are the sum of a concatenation's "
            "parts and also the model's input/output or fixed; this is not supported"
        )
    role = "input" if is_in else "output" if is_out else "derived" if r in wk.alias else "fixed" if hits else "free"
    return Group(wk.base[r], role, tuple(touched), producers), hits


def _check_groups(groups: list[Group], fixed: tuple[str, ...], used_fixed: set[str]) -> None:
    """Every ``--fix`` name matched a layer, and the model has an output layer and a layer to template."""
    unused = [f for f in fixed if f not in used_fixed]
    if unused:
        names = ", ".join(p for g in groups if g.role in ("free", "fixed") for p in g.producers)
        raise UsageError(
            f"--fix {unused[0]}: no convolution or linear layer of that name (or inside it); layers: {names}"
        )
    if not any(g.role == "output" for g in groups):
        raise UsageError("the model's output does not come from a layer (conv or linear)")
    if not any(g.role == "free" for g in groups):
        raise UsageError("the model has no layer a template can change (every group is input, output or fixed)")


def _fingerprint(
    graph: fx.Graph,
    originals: dict[str, nn.Module],
    groups: list[Group],
    layers: list[Layer],
    reading: str,
    source: nn.Module | None,
) -> str:
    """The plan's identity: a hash of its code, modules, groups (and layers, but not for the groups reading)."""
    identity: dict[str, Any] = {
        "code": graph.python_code("self").src,
        "modules": [[k, repr(m)] for k, m in originals.items()],
        "groups": [[g.base, g.role, list(g.modules)] for g in groups],
    }
    if reading != "groups":  # the groups reading's plans keep the identity they always had
        identity["layers"] = [[layer.base, list(layer.members)] for layer in layers]
    if source is not None:
        identity["own forward"] = True
    return hashlib.sha256(json.dumps(identity).encode()).hexdigest()[:16]


def _rewrite(gm: fx.GraphModule, rewrites: dict[fx.Node, str]) -> tuple[fx.Graph, dict[str, nn.Module]]:
    """The graph with size-dependent views turned into ``flatten(x, 1)``, no-op reshapes removed and
    ``F.dropout`` (whose ``training`` flag fx froze) turned into dropout modules."""
    graph = gm.graph
    extra: dict[str, nn.Module] = {}
    for node, what in rewrites.items():
        x = _node(node.args[0])
        if what == "identity":
            node.replace_all_uses_with(x)
            graph.erase_node(node)
        elif what in ("flatten", "expand2", "expand1", "expand3"):
            full = slice(None, None, None)
            with graph.inserting_after(node):
                new = (
                    graph.call_function(torch.flatten, (x, 1))
                    if what == "flatten"
                    else graph.call_function(operator.getitem, (x, (full, full) + (None,) * int(what[-1])))
                )
            node.replace_all_uses_with(new)
            graph.erase_node(node)
        else:
            p = _arg(node, 1, "p", 0.5)
            target = f"_ft_dropout_{len(extra)}"
            extra[target] = _DROPOUT_FNS[node.target](p)
            gm.add_submodule(target, extra[target])
            with graph.inserting_after(node):
                new = graph.call_module(target, (x,))
            node.replace_all_uses_with(new)
            graph.erase_node(node)
    for node in reversed(list(graph.nodes)):  # the sizes that fed removed views (never a tensor op:
        if not node.users and node.op in ("call_method", "call_function") and "tensor_meta" not in node.meta:
            graph.erase_node(node)  # in-place ops with unused results must stay)
    graph.lint()
    return graph, extra
