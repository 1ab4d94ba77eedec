"""Ops that move channels without making new ones, for the channel-group walker: chunks of the
channel dimension, channel shuffles (``view`` to ``[N, g, C/g, H, W]``, ``transpose``, ``view``
back) and zero-padding of the channel dimension (``F.pad`` with six values).

A mixin of :class:`~.discover._Walker`: it uses the walker's layouts (tuples of ``(group,
multiplier)`` terms), shapes and group rules (``new``, ``tie``, ``alias_to``) and records what a
rebuilt model must rewrite (a padding's widths).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NoReturn, cast

from torch import fx

__all__ = ["MAX_COPIES", "ChannelMoves"]

MAX_COPIES = 64  # a layout term repeated more often than this is a flattened map, never chunked

Layout = tuple[tuple[int, int], ...]


class ChannelMoves:
    """Chunks, shuffles and channel paddings: how the channels they give are made of the groups."""

    # what the walker provides (see discover._Groups and discover._Walker)
    layout: dict
    base: list[int]
    producer: list[str | None]
    width: Callable[[Layout], int]
    new: Callable[[int, str | None], int]
    find: Callable[[int], int]
    tie: Callable[[Layout, Layout, str], None]
    alias_to: Callable[[int, Layout, str], None]
    refuse: Callable[..., NoReturn]
    where: Callable[[fx.Node], str]
    scope: Callable[[fx.Node], str]
    shape: Callable[[Any], Any]
    first_input: Callable[[fx.Node], fx.Node]
    _fmt: Callable[[Layout], str]

    def init_moves(self) -> None:
        self.shuffled: dict[fx.Node, tuple[Layout, int, bool]] = {}  # 5-D view -> (layout, g, transposed)
        self.chunks: dict[fx.Node, list[Layout]] = {}
        self.pads: dict[str, tuple[int | None, int | None]] = {}  # graph node -> raw groups of its front/back pad
        self.resized: dict[str, tuple[str, list[Layout]]] = {}  # graph node -> its channel sizes' layouts
        self.padded: dict[int, int] = {}  # a padding's raw group -> the first raw group of what it pads

    def cut_at(self, layout: Layout, sizes: list[int], node: fx.Node) -> list[Layout]:
        """``layout`` cut into consecutive parts of ``sizes`` channels; a group cut in the middle
        becomes the sum of its pieces (each piece made by the group's own layer, so it scales
        with it)."""
        if sum(sizes) != self.width(layout) or any(m > MAX_COPIES for _, m in layout) or min(sizes) < 1:
            self.refuse(node, f"cuts {self._fmt(layout)} channels into parts of {sizes}")
        parts: list[list[int]] = [[]]
        left = list(sizes)
        room = left.pop(0)
        for r, m in layout:
            for _ in range(m):
                piece = self.find(r)
                while self.base[piece] > room:  # the cut falls inside this group: split it in two
                    owner = self.producer[piece]
                    head, tail = self.new(room, owner), self.new(self.base[piece] - room, owner)
                    self.alias_to(piece, ((head, 1), (tail, 1)), self.where(node))
                    parts[-1].append(head)
                    parts.append([])
                    piece, room = tail, left.pop(0)
                parts[-1].append(piece)
                room -= self.base[piece]
                if room == 0 and left:
                    parts.append([])
                    room = left.pop(0)
        return [_runs(p) for p in parts if p]

    def cut(self, layout: Layout, n: int, node: fx.Node) -> list[Layout]:
        """``layout`` cut into ``n`` parts of equal width, tied part by part (a chunk of the channels:
        rebuilt, the parts stay equal)."""
        total = self.width(layout)
        if total % n:
            self.refuse(node, f"cuts {self._fmt(layout)} channels into {n} equal parts")
        out = self.cut_at(layout, [total // n] * n, node)
        for p in out[1:]:
            self.tie(out[0], p, self.where(node))
        return [tuple((self.find(r), m) for r, m in p) for p in out]

    def split(self, node: fx.Node, sizes: Any, dim: Any) -> None:
        """``torch.split`` of the channels: by a size (equal parts, tied) or by a list of sizes (parts
        in proportion); the sizes are rewritten from the parts' widths in a rebuilt graph."""
        x = self.first_input(node)
        if not isinstance(dim, int) or dim % len(self.shape(x)) != 1:
            self.refuse(node, "splits a tensor along other than its channels")
        layout = self.layout[x]
        total = self.width(layout)
        if isinstance(sizes, int) and sizes > 0 and total % sizes == 0:
            self.chunks[node] = self.cut(layout, total // sizes, node)
            self.resized[node.name] = ("split_size", [self.chunks[node][0]])
        elif isinstance(sizes, (list, tuple)) and all(isinstance(k, int) for k in sizes):
            self.chunks[node] = self.cut_at(layout, list(sizes), node)
            self.resized[node.name] = ("split_sizes", self.chunks[node])
        else:
            self.refuse(node, "splits the channels by sizes that are not constants or do not divide them")

    def channel_slice(self, node: fx.Node, x: fx.Node, sl: slice) -> None:
        """``x[:, a:b]`` with constant bounds: the part's groups (a group cut is the sum of its pieces)."""
        layout, total = self.layout[x], self.width(self.layout[x])
        if sl.step not in (None, 1) or not all(v is None or isinstance(v, int) for v in (sl.start, sl.stop)):
            self.refuse(node, "slices the channels with bounds that are not constants or a step")
        a, b, _ = sl.indices(total)
        if (a, b) == (0, total):  # all of them here; rebuilt, all of the new width
            self.layout[node] = layout
            self.resized[node.name] = ("slice", [(), layout])
            return
        sizes = [k for k in (a, b - a, total - b) if k > 0]
        parts = self.cut_at(layout, sizes, node)
        keep = parts[1] if a > 0 else parts[0]
        self.layout[node] = keep
        self.resized[node.name] = ("slice", [parts[0] if a > 0 else (), keep])

    def chunk(self, node: fx.Node, n: Any, dim: Any) -> None:
        x = self.first_input(node)
        if not isinstance(n, int) or not isinstance(dim, int) or dim % len(self.shape(x)) != 1:
            self.refuse(node, "splits a tensor other than into a constant number of equal chunks of its channels")
        self.chunks[node] = self.cut(self.layout[x], n, node)

    def take(self, node: fx.Node) -> None:
        """``parts[i]`` of a chunk."""
        src, i = node.args
        parts = self.chunks[cast(fx.Node, src)]  # the walker calls take only on a getitem of a chunk
        if not isinstance(i, int) or not -len(parts) <= i < len(parts):
            self.refuse(node, "indexes a chunk by a value that is not a constant")
        self.layout[node] = parts[i]

    def shuffle_view(self, node: fx.Node, x: fx.Node, sx: tuple, so: tuple) -> bool:
        """A view to or from ``[N, g, C/g, H, W]``; False when ``node`` is neither."""
        if x in self.shuffled and len(so) == 4:
            layout, g, flipped = self.shuffled[x]
            if not flipped:
                self.layout[node] = layout
            else:  # channels interleaved: each of the g parts is tied to the first, part by part
                first = self.cut(layout, g, node)[0]
                self.layout[node] = tuple((r, m * g) for r, m in first)
            return True
        if (
            x in self.layout
            and len(sx) == 4
            and len(so) == 5
            and so[0] == sx[0]
            and so[1] * so[2] == sx[1]
            and tuple(so[3:]) == tuple(sx[2:])
        ):
            self.shuffled[node] = (self.layout[x], so[1], False)
            return True
        return False

    def shuffle_transpose(self, node: fx.Node, dims: tuple) -> bool:
        x = node.args[0]
        if not isinstance(x, fx.Node) or x not in self.shuffled or sorted(d % 5 for d in dims) != [1, 2]:
            return False
        layout, g, flipped = self.shuffled[x]
        self.shuffled[node] = (layout, g, not flipped)
        return True

    def shuffle_pass(self, node: fx.Node) -> bool:
        """``contiguous()`` and the like on a shuffled view."""
        x = node.args[0] if node.args else None
        if not isinstance(x, fx.Node) or x not in self.shuffled:
            return False
        self.shuffled[node] = self.shuffled[x]
        return True

    def pad(self, node: fx.Node, pad: Any) -> None:
        """``F.pad`` of a feature map: the channels it adds (front, back) are groups of their own."""
        x = self.first_input(node)
        sx, so = self.shape(x), self.shape(node)
        if so[0] != sx[0] or so[1] == sx[1]:
            if so[:2] != sx[:2]:
                self.refuse(node, f"pads the batch dimension ({list(sx)} -> {list(so)})")
            self.layout[node] = self.layout[x]
            return
        if (
            not isinstance(pad, (list, tuple))
            or len(pad) != 6
            or len(sx) != 4
            or not all(isinstance(p, int) and p >= 0 for p in pad[4:])
        ):
            self.refuse(node, "pads the channel dimension by other than two constant, non-negative amounts")
        label = f"{self.scope(node)}.{node.name}".lstrip(".")
        front, back = (self.new(p, label) if p else None for p in pad[4:])
        self.layout[node] = (
            (((front, 1),) if front is not None else ()) + self.layout[x] + (((back, 1),) if back is not None else ())
        )
        self.pads[node.name] = (front, back)
        for part in (front, back):  # a padding is no layer of its own: it scales with what it pads
            if part is not None and self.layout[x]:
                self.padded[part] = self.layout[x][0][0]


def _runs(raws: list[int]) -> Layout:
    """Consecutive equal groups as one term with a multiplier."""
    out: list[list[int]] = []
    for r in raws:
        if out and out[-1][0] == r:
            out[-1][1] += 1
        else:
            out.append([r, 1])
    return tuple((r, m) for r, m in out)
