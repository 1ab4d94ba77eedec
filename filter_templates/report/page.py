"""The report's index page, as Markdown (``index.md``) and HTML (``index.html``) from one list of blocks.

The report builds its page once, as headings, paragraphs, tables and figures (:data:`Block`), and
both files are renderings of that list: they cannot disagree on a number or a figure. The HTML is
one self-contained file (styles inline) that links the figures' PNG files beside it, so it opens
in any browser from the report folder.
"""

from __future__ import annotations

import html
import re
from dataclasses import dataclass
from typing import Sequence, Union

from filter_templates.report.tables import Table, render

__all__ = ["Heading", "Text", "TableBlock", "Figure", "Block", "markdown", "to_html"]


@dataclass(frozen=True)
class Heading:
    text: str
    level: int = 2


@dataclass(frozen=True)
class Text:
    """A paragraph; ``code`` in backticks is the only markup."""

    text: str


@dataclass(frozen=True)
class TableBlock:
    """A table and the stem of its files under ``tables/`` (Markdown, CSV, LaTeX)."""

    table: Table
    stem: str


@dataclass(frozen=True)
class Figure:
    """A figure's stem under ``figures/`` (PNG and SVG) and its alternative text."""

    stem: str
    alt: str


Block = Union[Heading, Text, TableBlock, Figure]


def _files(stem: str) -> list[tuple[str, str]]:
    return [("Markdown", f"tables/{stem}.md"), ("CSV", f"tables/{stem}.csv"), ("LaTeX", f"tables/{stem}.tex")]


def markdown(blocks: Sequence[Block]) -> str:
    """``index.md``."""
    out: list[str] = []
    for b in blocks:
        if isinstance(b, Heading):
            out += ["#" * b.level + " " + b.text, ""]
        elif isinstance(b, Text):
            out += [b.text, ""]
        elif isinstance(b, TableBlock):
            links = " · ".join(f"[{name}]({path})" for name, path in _files(b.stem))
            out += [render(b.table)["md"], f"Files: {links}", ""]
        else:
            out += [f"![{b.alt}](figures/{b.stem}.png)", "", f"[SVG](figures/{b.stem}.svg)", ""]
    return "\n".join(out).rstrip("\n") + "\n"


def _inline(text: str) -> str:
    """Escaped text with `code` spans."""
    parts = re.split(r"`([^`]*)`", text)
    return "".join(f"<code>{html.escape(p)}</code>" if i % 2 else html.escape(p) for i, p in enumerate(parts))


def _table(t: Table) -> list[str]:
    align = t.align or "l" * len(t.header)
    out = [f"<h3>{_inline(t.title)}</h3>", "<table>", "<thead><tr>"]
    out += [f'<th class="{"r" if a == "r" else "l"}">{_inline(h)}</th>' for h, a in zip(t.header, align)]
    out += ["</tr></thead>", "<tbody>"]
    for i, row in enumerate(t.rows):
        cells = []
        for j, (v, a) in enumerate(zip(row, align)):
            inner = f"<strong>{_inline(v)}</strong>" if (i, j) in t.bold else _inline(v)
            cells.append(f'<td class="{"r" if a == "r" else "l"}">{inner}</td>')
        out.append("<tr>" + "".join(cells) + "</tr>")
    out += ["</tbody>", "</table>"]
    out += [f'<p class="note">{_inline(n)}</p>' for n in t.notes if n]
    return out


_STYLE = """
body { font-family: system-ui, sans-serif; max-width: 1200px; margin: 2em auto; padding: 0 1em; color: #222; }
table { border-collapse: collapse; margin: 0.5em 0; font-size: 0.9em; }
th, td { border-bottom: 1px solid #ddd; padding: 0.25em 0.6em; }
th { border-bottom: 2px solid #888; }
td.r, th.r { text-align: right; font-variant-numeric: tabular-nums; }
td.l, th.l { text-align: left; }
p.note { font-size: 0.85em; color: #555; margin: 0.2em 0; }
figure { margin: 1em 0; }
figure img { max-width: 100%; }
code { background: #f4f4f4; padding: 0 0.2em; }
"""


def to_html(blocks: Sequence[Block], title: str) -> str:
    """``index.html``: the same blocks, one self-contained page."""
    out = [
        "<!DOCTYPE html>",
        '<html lang="en">',
        "<head>",
        '<meta charset="utf-8">',
        f"<title>{html.escape(title)}</title>",
        f"<style>{_STYLE}</style>",
        "</head>",
        "<body>",
    ]
    for b in blocks:
        if isinstance(b, Heading):
            out.append(f"<h{b.level}>{_inline(b.text)}</h{b.level}>")
        elif isinstance(b, Text):
            out.append(f"<p>{_inline(b.text)}</p>")
        elif isinstance(b, TableBlock):
            out += _table(b.table)
            links = " · ".join(f'<a href="{html.escape(p)}">{n}</a>' for n, p in _files(b.stem))
            out.append(f'<p class="note">Files: {links}</p>')
        else:
            png, svg = f"figures/{b.stem}.png", f"figures/{b.stem}.svg"
            out.append(
                f'<figure><img src="{png}" alt="{html.escape(b.alt)}">'
                f'<figcaption><a href="{svg}">SVG</a></figcaption></figure>'
            )
    out += ["</body>", "</html>"]
    return "\n".join(out) + "\n"
