"""Table 2 of the study against our models: parameter counts per family and template, from the
equations (default) and as published, beside the paper's figure."""

from __future__ import annotations

from typing import Any, Sequence

from filter_templates.method import published
from filter_templates.method.arch import make_arch
from filter_templates.method.measure import arch_params
from filter_templates.method.templates import BUILTIN_TEMPLATES

__all__ = ["TOLERANCE", "compare_published", "markdown_table"]

TOLERANCE = 0.1e6  # the paper prints millions to one decimal


def compare_published(families: Sequence[str] | None = None, classes: int = 10) -> list[dict[str, Any]]:
    """One row per (study family, built-in template): our count, the as-published count, the paper's."""
    rows = []
    for family in families or published.study_families():
        for template in BUILTIN_TEMPLATES:
            ours = make_arch(family, template, 1.0, classes)
            pub = make_arch(family, template, 1.0, classes, as_published=True)
            paper = published.PUBLISHED_PARAMS[family][template] * 1e6
            rows.append(
                {
                    "model": family,
                    "template": template,
                    "params": arch_params(ours),
                    "filters": list(ours.filters),
                    "params_as_published": arch_params(pub),
                    "filters_as_published": list(pub.filters),
                    "paper_params": paper,
                    "match": abs(arch_params(ours) - paper) <= TOLERANCE,
                    "match_as_published": abs(arch_params(pub) - paper) <= TOLERANCE,
                    "unreproduced": (family, template) in published.UNREPRODUCED,
                }
            )
    return rows


def _cell(params: int, match: bool) -> str:
    return f"{params / 1e6:.2f}" + ("" if match else " ✗")


def markdown_table(rows: list[dict[str, Any]]) -> str:
    """The 4x5 table of the README: ours / as published / paper, in millions of parameters."""
    families = list(dict.fromkeys(r["model"] for r in rows))
    lines = ["| template | " + " | ".join(families) + " |", "|---|" + "---:|" * len(families)]
    for template in dict.fromkeys(r["template"] for r in rows):
        cells = []
        for family in families:
            r = next(x for x in rows if x["model"] == family and x["template"] == template)
            mark = " †" if r["unreproduced"] else ""
            cells.append(
                f"{_cell(r['params'], r['match'])} / {_cell(r['params_as_published'], r['match_as_published'])}"
                f" / {r['paper_params'] / 1e6:.1f}{mark}"
            )
        lines.append(f"| {template} | " + " | ".join(cells) + " |")
    ours = sum(r["match"] for r in rows)
    pub = sum(r["match_as_published"] for r in rows)
    lines += [
        "",
        f"Millions of parameters, 10 classes: ours (equations) / as published (`--as-published`) / the "
        f"paper's Table 2. ✗: more than 0.1M from the paper. Equations: {ours}/{len(rows)} cells match; "
        f"as published: {pub}/{len(rows)}. †: no configuration in the study's code gives the published "
        f"count.",
    ]
    return "\n".join(lines)
