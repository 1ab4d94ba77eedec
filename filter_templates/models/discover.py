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
from typing import Any, Callable, NoReturn, Sequence, cast

import torch
import torch.fx as fx
import torch.nn as nn
import torch.nn.functional as F
from torch.fx.passes.shape_prop import ShapeProp

from filter_templates.core.errors import UsageError
from filter_templates.core.images import IMAGE_SIZE
from filter_templates.models.channel_moves import ChannelMoves
from filter_templates.models.channelwise import channel_count, resized_tensor, vector_dim
from filter_templates.models.readings import DEFAULT_READING, Layer, read
from filter_templates.models.rebuild import into_copy, put, put_tensor, rebuild

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
    direct: dict[str, Layout] = field(default_factory=dict)  # a tensor used in forward -> its channels
    resized: dict[str, tuple[str, list[Layout]]] = field(default_factory=dict)  # graph node -> its sizes' parts

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

        origin = self.source if self.source is not None else self.graph.owning_module
        tensors: dict[str, torch.Tensor] = {}
        for target, layout in self.direct.items():
            t = _tensor(origin, target)
            tensors[target] = nn.Parameter(resized_tensor(t, vector_dim(t.shape) or 0, w(layout)), t.requires_grad)
        layers = {
            name: rebuild(self.originals[name], rec.kind, w(rec.ins), w(rec.outs)) for name, rec in self.records.items()
        }
        if self.source is not None:
            return into_copy(self.source, layers, tensors)
        root = nn.Module()  # holds the new layers under their original names, in execution order
        for name, orig in self.originals.items():
            put(root, name, layers.get(name) or copy.deepcopy(orig))
        for name, mod in self._extra.items():
            put(root, name, copy.deepcopy(mod))
        for target, tensor in tensors.items():
            put_tensor(root, target, tensor)
        graph = copy.deepcopy(self.graph)
        for node in graph.nodes:  # a channel padding pads by its groups' new widths
            if node.name in self.pads:
                pad = list(_arg(node, 1, "pad", ()))[:4] + [0 if g is None else widths[g] for g in self.pads[node.name]]
                node.args, node.kwargs = (
                    (node.args[0], tuple(pad)) + tuple(node.args[2:]),
                    {k: v for k, v in node.kwargs.items() if k != "pad"},
                )
            if node.name in self.resized:
                _resize_args(node, *self.resized[node.name], w)
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
        self.cdim: dict[fx.Node, int] = {}  # node -> its channel dimension where it is not 1 (channels-last)
        self.params: dict[fx.Node, str] = {}  # node -> the model's own tensor (parameter, buffer) it is
        self.direct: dict[str, Layout] = {}  # a tensor the forward uses directly -> its channels' layout
        self.containers: dict[fx.Node, list[fx.Node]] = {}  # a named tuple built in forward -> its tensors

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
            cls = path[1] if isinstance(path, tuple) and len(path) > 1 else None
            cls_name = getattr(cls, "__name__", None) or str(cls or "").rpartition(".")[2].rstrip("'>")
            path = path[0] if isinstance(path, tuple) else str(path)
            inside = f" in module '{path}'" + (f" ({cls_name})" if cls_name else "")
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

    def cd(self, node: fx.Node) -> int:
        """The channel dimension of a feature map (1, or the last after a permute to channels-last)."""
        return self.cdim.get(node, 1)

    def channels_first(self, node: fx.Node, x: fx.Node) -> None:
        if self.cd(x) != 1:
            self.refuse(node, f"is applied to a channels-last tensor (channels in dimension {self.cd(x)})")

    def passthrough(self, node: fx.Node) -> None:
        x = self.first_input(node)
        sx, so = self.tshape(x), self.shape(node)
        c = self.cd(x)
        if so is None or len(so) != len(sx) or so[0] != sx[0] or so[c] != sx[c]:
            self.refuse(node, f"changes the batch or channel dimension ({list(sx)} -> {list(so or ())})")
        self.layout[node] = self.layout[x]
        if c != 1:
            self.cdim[node] = c

    def arg_nodes(self, node: fx.Node) -> list[fx.Node]:
        out: list[fx.Node] = []
        fx.node.map_arg((node.args, node.kwargs), out.append)
        return out

    def no_channels(self, node: fx.Node) -> bool:
        """A tensor made of no feature map: a constant, random noise (stochastic depth's), or the
        model's own tensor (recorded in ``params`` while it is that tensor reshaped or scaled)."""
        if self.shape(node) is None:
            return False
        args = self.arg_nodes(node)
        if any(a in self.layout or a in self.chunks or a in self.shuffled for a in args):
            return False
        own = {self.params[a] for a in args if a in self.params}
        if len(own) == 1 and math.prod(self.tshape(node)) == math.prod(
            self.tshape(next(a for a in args if a in self.params))
        ):
            self.params[node] = own.pop()
        elif own:
            self.refuse(node, f"combines the model's own tensors {sorted(own)}")
        return True

    def own_tensor(self, node: fx.Node, p: fx.Node, so: tuple[int, ...], feature: fx.Node) -> None:
        """The model's own tensor ``p`` scales or shifts the channels of ``feature`` (a layer scale):
        it is one of their group's layers, resized with it."""
        sp = self.tshape(p)
        if math.prod(sp) == 1:
            return
        d = vector_dim(sp)
        c = self.cd(feature)
        if d is None or len(so) - len(sp) + d != c or sp[d] != self.width(self.layout[feature]):
            self.refuse(
                node,
                f"uses the model's own tensor '{self.params[p]}' of shape {list(sp)} on a feature map of "
                f"shape {list(so)} other than as one value per channel",
            )
        target = self.params[p]
        if target in self.direct:
            self.tie(self.direct[target], self.layout[feature], self.where(node))
        else:
            self.direct[target] = self.layout[feature]

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
        """The model's own tensor, used in its forward: a per-channel scale or shift (a layer scale)
        is resized with its channels; used otherwise, it is refused where it meets a feature map."""
        if self.shape(node) is not None:
            self.params[node] = str(node.target)

    def op_output(self, node: fx.Node) -> None:
        outs = [x for o in self.arg_nodes(node) for x in self.containers.get(o, [o])]
        shapes = {self.shape(o) for o in outs}
        if len(outs) > 1 and len(shapes) == 1 and all(o in self.layout for o in outs):  # auxiliary heads' logits
            for o in outs:
                self.logits(o)
            return
        self.logits(outs[0] if len(outs) == 1 else node.args[0])

    def logits(self, out: Any) -> None:
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
            sx = self.tshape(x)
            if len(sx) != 2 and self.cd(x) != len(sx) - 1:
                self.refuse(
                    node,
                    f"is applied to a tensor of shape {list(sx)}; only [N, features] (flatten or pool "
                    "first) or the channels of a channels-last feature map are supported",
                )
            self.record(node, name, "linear", self.layout[x], None, mod.in_features, mod.out_features)
            if len(sx) != 2:
                self.cdim[node] = len(sx) - 1
        elif isinstance(mod, nn.Conv1d):
            self.conv1d(node, mod)
        elif isinstance(mod, _NORMS) and type(mod) in _NORMS:
            x = self.first_input(node)
            sx = self.tshape(x)
            if isinstance(mod, nn.LayerNorm) and (self.cd(x) != len(sx) - 1 or len(mod.normalized_shape) != 1):
                self.refuse(node, "normalises more than the channels of a tensor whose last dimension they are")
            if isinstance(mod, nn.PReLU) and mod.num_parameters == 1:
                self.passthrough(node)
                return
            self.passthrough(node)
            n = {nn.GroupNorm: "num_channels", nn.LayerNorm: "normalized_shape", nn.PReLU: "num_parameters"}
            size = getattr(mod, next((v for k, v in n.items() if isinstance(mod, k)), "num_features"))
            size = size[0] if isinstance(size, tuple) else size
            self.record(node, name, "norm", self.layout[x], self.layout[x], size, size)
        elif channel_count(mod) is not None:
            self.channelwise(node, name, mod)
        else:
            self.refuse(node)

    def channelwise(self, node: fx.Node, name: str, mod: nn.Module) -> None:
        """A norm of any class, or a module whose tensors are all one vector per channel: the norm
        of its input's channel group (its own forward, activation and all, is kept)."""
        x = self.first_input(node)
        sx, so, size = self.tshape(x), self.shape(node), channel_count(mod)
        if so != sx or sx[self.cd(x)] != size:
            self.refuse(
                node,
                f"holds one value per channel for {size} channels but maps a {list(sx)} tensor "
                f"(channels in dimension {self.cd(x)}) to {list(so or ())}",
            )
        self.passthrough(node)
        self.record(node, name, "channelwise", self.layout[x], self.layout[x], size or 0, size or 0)

    def conv1d(self, node: fx.Node, mod: nn.Conv1d) -> None:
        """A one-channel Conv1d sliding along the channels of a pooled vector (ECA attention): its
        weights do not depend on the channel count, the channels pass through."""
        x = self.first_input(node)
        sx, so = self.tshape(x), self.shape(node)
        if mod.in_channels != 1 or mod.out_channels != 1 or so != sx or self.cd(x) != 2:
            self.refuse(node, "is a Conv1d other than one channel sliding along a feature map's channels")
        self.passthrough(node)

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
        if self.no_channels(node):
            return
        if isinstance(t, type) and issubclass(t, tuple):  # a named tuple of outputs (logits, aux logits)
            self.containers[node] = self.arg_nodes(node)
            return
        if t in _BINARY_FNS:
            self.binary(node)
            return
        self.no_own_tensor(node)
        if t is torch.permute:
            self.permute(node, _arg(node, 1, "dims", None))
        elif t is torch.split:
            self.split(node, _arg(node, 1, "split_size_or_sections", None), _arg(node, 2, "dim", 0))
        elif t is operator.getitem and node.args and isinstance(node.args[1], int) and node.args[0] in self.chunks:
            self.take(node)
        elif t is F.pad:
            self.pad(node, _arg(node, 1, "pad", None))
        elif t is torch.chunk:
            self.chunk(node, _arg(node, 1, "chunks", None), _arg(node, 2, "dim", 0))
        elif t is operator.getitem and node.args and node.args[0] in self.chunks:
            self.take(node)
        elif t is torch.transpose and self.shuffle_transpose(node, tuple(node.args[1:3])):
            return
        elif t is torch.transpose:
            self.transpose(node, tuple(node.args[1:3]))
        elif t in _DROPOUT_FNS:
            self.passthrough(node)
            self.rewrites[node] = "dropout"
        elif t in _PASS_FNS:
            self.passthrough(node)
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
            self.index(node)
        elif t is getattr or t is operator.getitem:
            if self.shape(node) is not None:
                self.refuse(node, "indexes a tensor")
        else:
            self.same_shape(node)

    def index(self, node: fx.Node) -> None:
        """``x[:, :, None, None]``, ``x[:, :, 1:, 1:]`` (channels pass) and ``x[:, a:b]`` (a constant
        slice of the channels)."""
        x = cast(fx.Node, node.args[0])
        self.channels_first(node, x)
        idx = node.args[1] if isinstance(node.args[1], tuple) else (node.args[1],)
        full = slice(None, None, None)
        if any(isinstance(i, fx.Node) for i in idx) or not idx or idx[0] != full:
            self.refuse(node, "indexes or slices the batch dimension of a feature map, or by a tensor")
        if len(idx) >= 2 and isinstance(idx[1], slice) and idx[1] != full and all(i == full for i in idx[2:]):
            self.channel_slice(node, x, idx[1])
            return
        if len(idx) < 2 or idx[1] != full:
            self.refuse(node, "indexes the channels of a feature map other than by a constant slice")
        self.same_channels(node)

    def no_own_tensor(self, node: fx.Node) -> None:
        """The model's own tensors meet feature maps only in ``+ - * /`` (a per-channel scale or shift)."""
        own = [a for a in self.arg_nodes(node) if a in self.params and math.prod(self.tshape(a)) > 1]
        if own:
            self.refuse(
                node,
                f"uses the model's own tensor '{self.params[own[0]]}' of shape {list(self.tshape(own[0]))} "
                "(a parameter or buffer used directly in forward) other than as a per-channel scale or shift",
            )

    def same_shape(self, node: fx.Node) -> None:
        """A call the walker does not know. A library's own function that fx keeps whole (registered
        with ``torch.fx.wrap``: torchvision's ``stochastic_depth``) and that maps one feature map to a
        tensor of its shape passes its channels; any other, a torch op included (``torch.roll`` may
        move channels between the parts of a concatenation), is refused by name."""
        t = node.target
        maps = [a for a in self.tensor_args(node) if a in self.layout]
        so = self.shape(node)
        root = (getattr(t, "__module__", None) or "torch").partition(".")[0]
        library = callable(t) and root not in ("torch", "_operator", "builtins", "math")
        if not library or len(maps) != 1 or so is None or so != self.tshape(maps[0]) or maps[0] is not node.args[0]:
            self.refuse(node)
        self.passthrough(node)

    def permute(self, node: fx.Node, dims: Any) -> None:
        x = self.first_input(node)
        n = len(self.tshape(x))
        dims = (
            list(dims[0])
            if isinstance(dims, (list, tuple)) and len(dims) == 1 and isinstance(dims[0], (list, tuple))
            else dims
        )
        if not isinstance(dims, (list, tuple)) or sorted(d % n for d in dims if isinstance(d, int)) != list(range(n)):
            self.refuse(node, "permutes by dimensions that are not constants")
        self.layout[node] = self.layout[x]
        self.cdim[node] = [d % n for d in dims].index(self.cd(x))

    def transpose(self, node: fx.Node, dims: tuple) -> None:
        x = self.first_input(node)
        n = len(self.tshape(x))
        if len(dims) != 2 or not all(isinstance(d, int) for d in dims):
            self.refuse(node, "transposes dimensions that are not constants")
        order = list(range(n))
        a, b = dims[0] % n, dims[1] % n
        order[a], order[b] = order[b], order[a]
        self.permute(node, order)

    def op_call_method(self, node: fx.Node) -> None:
        t = str(node.target)
        if t in _NONTENSOR_METHODS or self.sizes_only(node) or self.no_channels(node):
            return
        if t in _BINARY_METHODS:
            self.binary(node)
            return
        self.no_own_tensor(node)
        if t in _PASS_METHODS and self.shuffle_pass(node):
            return
        if t in _PASS_METHODS:
            self.passthrough(node)
        elif t == "chunk":
            self.chunk(node, _arg(node, 1, "chunks", None), _arg(node, 2, "dim", 0))
        elif t == "split":
            self.split(node, _arg(node, 1, "split_size", None), _arg(node, 2, "dim", 0))
        elif t == "permute":
            self.permute(node, node.args[1:] if len(node.args) > 2 else _arg(node, 1, "dims", None))
        elif t == "transpose" and self.shuffle_transpose(node, tuple(node.args[1:3])):
            return
        elif t == "transpose":
            self.transpose(node, tuple(node.args[1:3]))
        elif t == "flatten":
            self.flatten(node, _arg(node, 1, "start_dim", 0), _arg(node, 2, "end_dim", -1))
        elif t in ("view", "reshape"):
            self.reshape(node)
        elif t in ("unsqueeze", "squeeze"):
            self.same_channels(node)
        elif t in _REDUCE_METHODS:
            self.reduce(node, _arg(node, 1, "dim", None), _arg(node, 2, "keepdim", False))
        else:
            self.same_shape(node)

    def binary(self, node: fx.Node) -> None:
        so = self.shape(node)
        if so is None:
            return  # arithmetic on sizes
        full: list[fx.Node] = []
        own: list[fx.Node] = []
        other: list[fx.Node] = []
        for x in self.tensor_args(node):
            sx = self.tshape(x)  # tensor_args keeps nodes of known shape
            if x in self.params:
                own.append(x)
                continue
            if len(sx) == 0 or math.prod(sx) == 1:
                continue
            if x not in self.layout:
                other.append(x)
                continue
            if len(sx) != len(so):
                self.refuse(node, f"broadcasts a tensor of shape {list(sx)} against {list(so)}")
            c = self.cd(x)
            if sx[c] == 1 and so[c] != 1:
                continue
            full.append(x)
        if not full:
            self.refuse(node, "has no feature-map operand")
        c = self.cd(full[0])
        for x in other:  # noise or a constant: broadcast over the channels, never one value per channel
            sx = self.tshape(x)
            k = c - len(so) + len(sx)  # its dimension that meets the channels
            if len(sx) > len(so) or (k >= 0 and sx[k] != 1):
                self.refuse(node, f"combines the channels with a tensor of shape {list(sx)} that is no feature map")
        for x in full[1:]:
            if self.cd(x) != c:
                self.refuse(node, "combines a channels-last feature map with a channels-first one")
            self.tie(self.layout[full[0]], self.layout[x], self.where(node))
        for p in own:
            self.own_tensor(node, p, so, full[0])
        if len(full) > 1 and node.target in _SUMS:
            self.sums.append((self.scope(node), tuple(t for x in full for t in self.layout[x])))
        self.layout[node] = self.layout[full[0]]
        if c != 1:
            self.cdim[node] = c

    def cat(self, node: fx.Node) -> None:
        parts = _nodes(node.args[0] if node.args else node.kwargs.get("tensors"))
        dim = _arg(node, 1, "dim", 0)
        if parts is None or not all(p in self.layout for p in parts):
            self.refuse(node, "joins tensors of unknown channels")
        for p in parts:
            self.channels_first(node, p)
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
        self.channels_first(node, x)
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
        c = self.cd(x)
        moved = [d for d in range(1, len(so)) if so[d] == sx[c]]
        if so == sx:
            self.layout[node] = self.layout[x]
            self.rewrites[node] = "identity"
            if c != 1:
                self.cdim[node] = c
        elif c == 1 and len(so) == 2 and so[0] == sx[0] and so[1] == math.prod(sx[1:]):
            self.flatten(node, 1, -1)
            self.rewrites[node] = "flatten"
        elif c == 1 and len(sx) == 2 and so[:2] == sx and math.prod(so[2:]) == 1:  # [N, C] -> [N, C, 1, 1] (an SE gate)
            self.layout[node] = self.layout[x]
            self.rewrites[node] = f"expand{len(so) - 2}"
        elif so[0] == sx[0] and math.prod(sx) == math.prod(so) == sx[0] * sx[c] and len(moved) == 1:
            self.layout[node] = self.layout[x]  # a pooled vector viewed with its channels elsewhere ([N, 1, C]: ECA)
            if moved[0] != 1:
                self.cdim[node] = moved[0]
        else:
            self.refuse(
                node,
                f"reshapes {list(sx)} to {list(so)}; only reshapes to [N, features] and views that keep the channels whole are supported",
            )

    def same_channels(self, node: fx.Node) -> None:
        """Ops that only add or drop size-1 spatial dims (or crop them): channels pass through."""
        x = self.first_input(node)
        self.channels_first(node, x)
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
        c = self.cd(x)
        if d is None or 0 in d or c in d:
            self.refuse(node, "reduces over the batch or channel dimension")
        self.layout[node] = self.layout[x]
        c -= 0 if keepdim else sum(k < c for k in d)
        if c != 1:
            self.cdim[node] = c


def _tensor(module: nn.Module | None, target: str) -> torch.Tensor:
    """The tensor at dotted ``target`` under ``module``."""
    obj: Any = module
    for part in target.split("."):
        obj = getattr(obj, part)
    if not isinstance(obj, torch.Tensor):
        raise TypeError(f"{target} is a {type(obj).__name__}, not a tensor")
    return obj


def _resize_args(node: fx.Node, kind: str, parts: list[Layout], w: Callable[[Layout], int]) -> None:
    """A split's sizes or a channel slice's bounds from its parts' new widths."""
    x = node.args[0]
    if kind == "split_size":
        node.args, node.kwargs = (
            (x, w(parts[0])) + tuple(node.args[2:]),
            {k: v for k, v in node.kwargs.items() if k not in ("split_size", "split_size_or_sections")},
        )
    elif kind == "split_sizes":
        node.args, node.kwargs = (
            (x, [w(p) for p in parts]) + tuple(node.args[2:]),
            {k: v for k, v in node.kwargs.items() if k not in ("split_size", "split_size_or_sections")},
        )
    else:
        start, stop = w(parts[0]), w(parts[0]) + w(parts[1])
        idx = cast(tuple, node.args[1])
        node.args = (x, (idx[0], slice(start, stop), *idx[2:]))


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


class _Proxy(fx.Proxy):
    """fx's proxy, whose ``device`` and ``dtype`` are read on the example input (``torch.autocast(
    device_type=x.device.type)`` needs a string, not a traced value)."""

    def __getattr__(self, k: str) -> Any:
        tracer = self.tracer
        if k in ("device", "dtype") and isinstance(tracer, _Tracer) and tracer.example is not None:
            return getattr(tracer.evaluate(self.node), k)
        return super().__getattr__(k)


class _Tracer(fx.Tracer):
    """fx's tracer, with every convolution, linear and channel-wise layer a leaf, subclasses too (a
    masked or binarised convolution, a BatchNorm with its activation, is one layer, its own forward
    kept). Given an example input, a branch on a traced value (``if x.shape[-1] < 7``) is decided
    by running the graph traced so far on that input: the graph is the path that input executes."""

    def __init__(self, example: torch.Tensor | None = None) -> None:
        super().__init__()
        self.example = example
        self._copy: nn.Module | None = None
        self._evaluating = False

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return (
            isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Linear))
            or channel_count(m) is not None
            or super().is_leaf_module(m, module_qualified_name)
        )

    def call_module(self, m: nn.Module, forward: Callable[..., Any], args: tuple, kwargs: dict) -> Any:
        if self._evaluating:  # fx patches Module.__call__ while it traces: run the module itself
            return forward(*args, **kwargs)
        try:
            return super().call_module(m, forward, args, kwargs)
        except Exception as exc:  # the innermost module whose forward could not be followed
            if not hasattr(exc, "_ft_module"):
                exc._ft_module = f"module '{self.path_of_module(m)}' ({type(m).__name__})"  # type: ignore[attr-defined]
            raise

    def proxy(self, node: fx.Node) -> fx.Proxy:
        return _Proxy(node, self)

    def getattr(self, attr: str, attr_val: Any, parameter_proxy_cache: dict[str, Any]) -> Any:
        if self._evaluating:
            return attr_val
        return super().getattr(attr, attr_val, parameter_proxy_cache)

    def to_bool(self, obj: fx.Proxy) -> bool:
        if self.example is None or not _on_sizes(obj.node):
            return super().to_bool(obj)  # a branch on a tensor's values: refused
        return bool(self.evaluate(obj.node))

    def evaluate(self, node: fx.Node) -> Any:
        """The value ``node`` takes on the example input (on a copy of the model: a BatchNorm in
        training mode would otherwise update the user's running statistics)."""
        if self._copy is None:
            self._copy = copy.deepcopy(self.root)
        graph: fx.Graph = fx.Graph()
        env: dict[fx.Node, fx.Node] = {}
        for n in self.graph.nodes:
            env[n] = graph.node_copy(n, lambda a: env[a])
            if n is node:
                break
        graph.output(env[node])
        self._evaluating = True
        try:
            with torch.no_grad():
                return fx.GraphModule(self._copy, graph)(self.example)
        finally:
            self._evaluating = False


_SIZE_QUERIES = {"shape", "ndim", "dtype", "device"}


def _on_sizes(node: fx.Node) -> bool:
    """Whether ``node``'s value follows from tensors' sizes alone (``x.shape[-1] < 7``), not their values."""
    todo, seen = [node], set()
    while todo:
        n = todo.pop()
        if n in seen:
            continue
        seen.add(n)
        if n.op == "call_method" and n.target in ("size", "dim"):
            continue
        if n.op == "call_function" and n.target is getattr and n.args[1] in _SIZE_QUERIES:
            continue
        if n.op in ("placeholder", "call_module", "get_attr"):
            return False
        if n.op == "call_function" and getattr(n.target, "__module__", "") not in ("_operator", "builtins", "math"):
            return False
        todo.extend(a for a in n.all_input_nodes)
    return True


def trace(model: nn.Module, example: torch.Tensor | None = None) -> fx.GraphModule:
    """The model's torch.fx graph module, its branches decided on ``example`` when given;
    UsageError in one line when fx cannot trace it."""
    try:
        graph = _Tracer(example).trace(model)
        return fx.GraphModule(model, graph, class_name=type(model).__name__)
    except Exception as exc:  # control flow on tensors, unsupported Python: say so in one line
        msg = " ".join(str(exc).split())[:300]
        inside = getattr(exc, "_ft_module", f"the forward of {type(model).__name__}")
        raise UsageError(
            f"cannot trace {inside} with torch.fx ({type(exc).__name__}: {msg}); its forward must not "
            "branch on a tensor's values (a branch on sizes is read on the example input)"
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
    (:mod:`.readings`) says which groups share one template layer. Read on the path the training
    forward executes (auxiliary heads included), or the evaluation forward's where the training one
    cannot be followed. A model is rebuilt as a copy of the user's module with new layers put in
    (its own forward runs), checked by running it at other widths in both modes; where that copy
    does not run (sizes written into its forward) and both modes trace alike, as the traced graph
    with those sizes rewritten."""
    example = torch.zeros(2, *input_shape)
    with torch.device("cpu"):
        was_training = model.training
        try:
            _runs(model.eval(), example)
            gm_eval = trace(model, example)
            try:
                gm: fx.GraphModule | None = trace(model.train(), example)
            except UsageError:  # e.g. float() of a tensor in a training-only branch
                gm = None
            if gm is not None:
                _runs(copy.deepcopy(model), example)  # a copy: training mode updates running statistics
        finally:
            model.train(was_training)
        _normalise_dropout(gm_eval)
        if gm is not None:
            _normalise_dropout(gm)
        graph_ok = gm is not None and gm.code == gm_eval.code
        chosen = gm if gm is not None else gm_eval
        _shapes(chosen, input_shape)
        chosen.eval()
    walker = _Walker(chosen)
    walker.run()
    plan = _plan(walker, chosen, tuple(fixed), name, reading, copy.deepcopy(model).eval())
    try:
        _check_own(plan, input_shape)
    except UsageError:
        if not graph_ok:
            raise
        plan.source = None
        _check_own(plan, input_shape)
    return plan


def _runs(model: nn.Module, example: torch.Tensor) -> None:
    """The model runs on ``example`` in its current mode; else a one-line refusal, naming the smallest
    square input that runs where a larger one does (a stem or pool that needs more pixels)."""
    try:
        with torch.no_grad():
            model(example)
        return
    except Exception as exc:
        msg = " ".join(str(exc).split())[:300]
        failure = f"{type(exc).__name__}: {msg}"
    mode = "training" if model.training else "evaluation"
    side = example.shape[-1]
    smallest = _smallest_side(model, example)
    if smallest is not None:
        raise UsageError(
            f"the model needs inputs of at least {smallest} px in {mode} mode (--image-size {smallest}); "
            f"on {side} px it fails ({failure})"
        )
    raise UsageError(f"the model does not run on a {list(example.shape)} input in {mode} mode ({failure})")


def _smallest_side(model: nn.Module, example: torch.Tensor, limit: int = 1024) -> int | None:
    """The smallest square side above ``example``'s at which ``model`` runs (the sides between are
    searched by halving, so a model that runs on a side runs on every larger one), or None."""

    def ok(side: int) -> bool:
        try:
            with torch.no_grad(), contextlib.redirect_stderr(io.StringIO()):
                model(torch.zeros(*example.shape[:-2], side, side))
            return True
        except Exception:
            return False

    low, high = int(example.shape[-1]), int(example.shape[-1]) * 2
    while not ok(high):
        low, high = high, high * 2
        if high > limit:
            return None
    while high - low > 1:
        mid = (low + high) // 2
        low, high = (low, mid) if ok(mid) else (mid, high)
    return high


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
                out = out[0] if isinstance(out, tuple) else out  # logits first, then auxiliary heads'
                if tuple(out.shape) != (2, 10):
                    raise RuntimeError(f"it returns shape {list(out.shape)}")
    except Exception as exc:
        msg = " ".join(str(exc).split())[:200]
        how = "a copy of its module" if plan.source is not None else "its traced graph"
        raise UsageError(
            f"the model, rebuilt as {how} with its layers at other widths, does not run "
            f"({type(exc).__name__}: {msg}); a forward with channel counts written into it and "
            "different paths in training and evaluation is not supported"
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
    direct = {t: tuple((r, m) for r, m in lay) for t, lay in wk.direct.items()}
    resized = {n: (kind, [tuple((r, m) for r, m in p) for p in parts]) for n, (kind, parts) in wk.resized.items()}
    layers = read(
        groups,
        sums,
        cats,
        reading,
        {i: tuple((root_of[r], m) for r, m in lay) for i, lay in derived.items()},
        _follows(wk, root_of),
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
        direct=direct,
        resized=resized,
    )


def _follows(wk: _Walker, root_of: dict[int, int]) -> list[tuple[int, int]]:
    """``(group, source)``: groups an architecture defines by another's width. An expansion: a layer
    on one group that no depthwise convolution takes, whose output a depthwise convolution takes (an
    inverted residual's, a multiple of the block's input; in a MobileNet-v1 chain every group passes
    a depthwise convolution and none is an expansion). A squeeze: a layer on one group whose output comes back, through another
    layer, as that group (squeeze-excitation's reduction, a fraction of what it gates). A channel
    padding: the zeros a PyramidNet shortcut adds follow the channels they pad."""

    def one(layout: Layout) -> int | None:
        return root_of[layout[0][0]] if len(layout) == 1 and layout[0][1] == 1 else None

    made = [(one(rec.ins), one(rec.outs), rec.kind) for rec in wk.records.values()]
    depthwise_in = {i for i, _, kind in made if kind == "dwconv" and i is not None}
    back = {(i, o) for i, o, kind in made if kind in ("conv", "linear")}
    out: list[tuple[int, int]] = []
    for i, o, kind in made:
        if kind not in ("conv", "linear") or i is None or o is None or i == o:
            continue
        if (o in depthwise_in and i not in depthwise_in) or (o, i) in back:
            out.append((o, i))
    return out + [(root_of[p], root_of[x]) for p, x in wk.padded.items()]


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
