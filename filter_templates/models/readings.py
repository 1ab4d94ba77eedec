"""Which channel groups of a discovered network share one template count: its *reading*.

``groups``: every free channel group is a template layer of its own (each inner convolution, each
residual stream, each SE squeeze).

``modules`` (the paper's "blocks as single layers"): a residual stream (a group tied by additions)
together with every group made inside the units that add into it is one template layer, a stage;
a module whose output concatenates branches made inside it is one template layer with its inner
groups; a dense block (a module that concatenates its input with several parts made inside it, the
stream it grows) is one template layer counted by the channels it adds; a unit of a stage list that
adds into no stream (a stage's single block) is one template layer with the groups made inside it,
counted by its last (output) group; any other free group is its own. The pieces of one layer's
output cut apart (a split, a slice) stay in that layer. A layer's count is its output width (the stream's, or the
module's concatenated output); every group inside it scales in proportion, so expansions,
bottlenecks, SE reductions and branch ratios keep their ratios.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from filter_templates.core.errors import UsageError

__all__ = ["DEFAULT_READING", "READINGS", "Layer", "check_reading", "read"]

READINGS = ("modules", "groups")
DEFAULT_READING = "modules"

Sums = Sequence[tuple[str, tuple[int, ...]]]  # (scope of an addition, the groups it ties)
Cats = Sequence[tuple[str, tuple[tuple[int, int], ...]]]  # (scope of a concatenation, its (group, multiplier) parts)


@dataclass(frozen=True)
class Layer:
    """One template layer: its base count, a label, and the groups (indices) that scale with it."""

    base: int
    name: str
    members: tuple[int, ...]


def check_reading(reading: str) -> str:
    """``reading`` if it is one; a UsageError naming the choices otherwise."""
    if reading not in READINGS:
        raise UsageError(f"unknown reading {reading!r}; choose from: {', '.join(READINGS)}")
    return reading


def read(
    groups: Sequence,
    sums: Sums,
    cats: Cats,
    reading: str,
    derived: Mapping[int, Sequence[tuple[int, int]]] = {},
    follows: Sequence[tuple[int, int]] = (),
) -> list[Layer]:
    """The template layers of ``groups`` (the :class:`~.discover.Group` list) under ``reading``;
    ``derived``: groups whose width is the sum of others' (a stream made by a concatenation);
    ``follows``: ``(group, source)`` pairs where a group is defined by its source's width, so it
    scales with the source's layer in the ``modules`` reading (an inverted residual's expansion of
    its input, a squeeze-excitation's reduction of what it gates)."""
    if check_reading(reading) == "groups":
        return [Layer(groups[i].base, _label(groups[i]), (i,)) for i in groups_free(groups)]
    free_all = groups_free(groups)
    followers = {g for g, a in follows if g in free_all and a in free_all}
    free = [i for i in free_all if i not in followers]
    parent = {i: i for i in free_all}

    def find(i: int) -> int:
        while parent[i] != i:
            i = parent[i]
        return i

    def union(a: int, b: int) -> None:
        ra, rb = find(a), find(b)
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)

    anchors: list[tuple[int, int, int, str, int]] = []  # (priority, -width, order, label, member): first wins
    for stream, scopes in _streams(sums).items():
        scopes = _writers(groups[stream], scopes)
        parts = [
            g
            for g, _ in derived.get(stream, ())  # a stream its units make by a concatenation
            if g in parent and groups[g].modules and any(_inside(groups[g], u) for u in scopes)
        ]
        if stream not in parent and not parts:
            continue
        head = stream if stream in parent else parts[0]
        for g in free:
            if g in parts or any(_inside(groups[g], u) for u in scopes):
                union(head, g)
        anchors.append((0, -groups[stream].base, stream, _common(scopes) or _label(groups[stream]), head))
    for scope, joined in cats:
        inner = [g for g in free if _inside(groups[g], scope)]
        made = [(g, m) for g, m in joined if _inside(groups[g], scope)]
        dense = len(made) >= 2 and len(made) == len(joined) - 1  # a dense block: its input and what it grew
        if not scope or len(joined) < 2 or not inner or (len(made) != len(joined) and not dense):
            continue
        for g in inner:
            union(inner[0], g)
        anchors.append((1, -sum(m * groups[g].base for g, m in made), inner[0], scope, inner[0]))
    _units(groups, free, sums, find, union, anchors)
    by_producers: dict[tuple[str, ...], int] = {}
    for g in free:  # the pieces of one layer's output
        if groups[g].producers:
            union(by_producers.setdefault(groups[g].producers, g), g)
    for g, a in follows:
        if g in followers and a in parent:
            union(a, g)
    free = free_all
    chosen: dict[int, tuple[int, str]] = {}
    for _, width, _, label, member in sorted(anchors, key=lambda a: a[:3]):  # a stage's widest stream
        root = find(member)
        if root not in chosen:
            chosen[root] = (-width, label)
    layers: dict[int, list[int]] = {}
    for i in free:
        layers.setdefault(find(i), []).append(i)
    out = []
    for root, members in layers.items():
        base, label = chosen.get(root, (groups[root].base, _label(groups[root])))
        out.append(Layer(base, label, tuple(members)))
    return out


def groups_free(groups: Sequence) -> list[int]:
    return [i for i, g in enumerate(groups) if g.role == "free"]


def _units(groups: Sequence, free: list[int], sums: Sums, find, union, anchors: list) -> None:
    """A stage list's units that add into no stream (a stage of one block): each is one template
    layer, its last group (the unit's output) counting, the groups made inside it in proportion. The
    units are the modules at the depth, and under the same grandparent, as those that add."""
    patterns = set()
    for scope, _ in sums:
        parts = scope.split(".")
        if len(parts) >= 3:
            patterns.add((".".join(parts[:-2]), len(parts)))
    if not patterns:
        return
    alone = [g for g in free if find(g) == g and not any(find(h) == g for h in free if h != g)]
    by_unit: dict[str, list[int]] = {}
    for g in alone:
        for p in groups[g].producers[:1]:
            parts = p.split(".")
            for top, depth in patterns:
                if len(parts) > depth and ".".join(parts[: len(top.split("."))]) == top:
                    by_unit.setdefault(".".join(parts[:depth]), []).append(g)
    for unit, members in by_unit.items():
        if len(members) < 2:
            continue
        out = max(members)  # groups are in execution order: the unit's last is its output
        for g in members:
            union(out, g)
        anchors.append((2, -groups[out].base, out, unit, out))


def _streams(sums: Sums) -> dict[int, list[str]]:
    """Each group tied by an addition, with the scopes (modules) the additions happen in, in order."""
    out: dict[int, list[str]] = {}
    for scope, tied in sums:
        for g in dict.fromkeys(tied):
            scopes = out.setdefault(g, [])
            if scope and scope not in scopes:
                scopes.append(scope)
    return dict(sorted(out.items()))


def _writers(stream, scopes: list[str]) -> list[str]:
    """The units that write to a stream: those that add into it, and their siblings whose layers make
    it (a stage's first unit, which changes the width and adds nothing)."""
    known = {(s.rpartition(".")[0], s.count(".")) for s in scopes if s}
    out = list(scopes)
    for p in stream.producers:
        for parent, depth in known:
            unit = ".".join(p.split(".")[: depth + 1])
            if unit.rpartition(".")[0] == parent and unit != p and unit not in out:
                out.append(unit)
    return sorted(out, key=_natural)


def _natural(name: str) -> list:
    return [(0, int(t), "") if t.isdigit() else (1, 0, t) for t in re.split(r"(\d+)", name)]


def _inside(group, scope: str) -> bool:
    """Whether a layer inside module ``scope`` (never the whole network) makes ``group``."""
    return bool(scope) and any(p.startswith(scope + ".") for p in group.producers)


def _common(scopes: Sequence[str]) -> str:
    """The deepest module holding every scope (``features.stage1`` of its units; ``layers.0-2`` for
    numbered units of one list), else the first."""
    parents = {s.rpartition(".")[0] for s in scopes}
    ends = [s.rpartition(".")[2] for s in scopes]
    if len(scopes) > 1 and len(parents) == 1 and all(e.isdigit() for e in ends):
        return f"{parents.pop()}.{ends[0]}-{ends[-1]}".lstrip(".")
    parts = [s.split(".") for s in scopes]
    common: list[str] = []
    for level in zip(*parts):
        if len(set(level)) != 1:
            break
        common.append(level[0])
    return ".".join(common) if len(scopes) > 1 and common else scopes[0] if scopes else ""


def _label(group) -> str:
    return group.producers[0] if group.producers else group.modules[0] if group.modules else "?"
