"""Render the measured figures from ``docs/results/*.json`` into the pages that cite them.

Every measured figure of the README and ``docs/`` lives in one results file, written by the
benchmark that measured it (:mod:`results_file`). This script is the only writer of the pages'
copies of those figures:

- ``docs/measurements.md`` is generated whole: one section per results file (what was measured,
  the table, the machine, threads, torch, date, seeds, views and the exact command);
- any page (the README, ``docs/*.md``) may hold a block between ``<!-- results:NAME -->`` and
  ``<!-- /results:NAME -->``; the block is replaced by that file's table and a one-line source.

``--check`` writes nothing and exits 1 when a page differs from what the files give
(``tests/test_docs.py`` runs it), so a page cannot drift from its measurements.

    python benchmarks/render_results.py [--check]
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path
from typing import Any

from results_file import read

REPO = Path(__file__).resolve().parents[1]
BLOCK = re.compile(r"(<!-- results:(?P<name>[\w.-]+) -->\n)(?P<body>.*?)(<!-- /results:(?P=name) -->)", re.S)

INTRO = """# Measurements

Every measured figure this project cites, one section per results file in
[`docs/results/`](results/). Each file was written by the command shown under its table (the
benchmark's `--write docs/results/`), and names the machine, threads, torch version and date.
This page is generated from those files by `python benchmarks/render_results.py`; do not edit it
by hand (`tests/test_docs.py` fails when it is stale).

Timings depend on the machine and on what else ran on it: the 1-minute load average at the moment
the file was written is shown with each, so a reading taken beside other jobs can be told apart.
Accuracies are as many seeds as listed; with one seed, differences within a few standard errors
of the test set are not established. How latency is measured in each runtime, why at batch 1 and
what noise does to it: [latency.md](latency.md).
"""


def load_all(repo: Path = REPO) -> list[dict[str, Any]]:
    """Every results file of ``repo/docs/results``, in name order."""
    return [read(p) for p in sorted((repo / "docs" / "results").glob("*.json"))]


def cell(value: Any) -> str:
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:,.0f}" if abs(value) >= 1000 else f"{value:.2f}"
    return str(value).replace("|", "\\|")


def table(data: dict[str, Any]) -> str:
    t = data.get("table")
    if not t:
        return ""
    cols = t["columns"]
    numeric = [all(isinstance(r[i], (int, float)) or r[i] is None for r in t["rows"]) for i in range(len(cols))]
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---:" if n else "---" for n in numeric) + "|"]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in t["rows"]]
    return "\n".join(lines) + "\n"


def machine_words(data: dict[str, Any]) -> str:
    m = data["machine"]
    gpu = f"GPU {m['gpu']}" if m["gpu"] else "no GPU"
    load = m.get("load_average_1min")
    loaded = f", load average {load:g}" if load is not None else ""
    return (
        f"{m['cpu']} ({m['cpus']} CPUs, AMX {'yes' if m['amx'] else 'no'}), {gpu}, {m['threads']} threads, "
        f"torch {m['torch']}, Python {m['python']}{loaded}"
    )


def seeds_words(data: dict[str, Any]) -> str:
    seeds = data["seeds"]
    if not seeds:
        return "no seeds (nothing random is measured)"
    return f"{len(seeds)} seed{'s' if len(seeds) > 1 else ''} ({', '.join(map(str, seeds))})"


def section(data: dict[str, Any]) -> str:
    parts = [f"## {data['title']}\n"]
    if data.get("note"):
        parts.append(data["note"] + "\n")
    if data.get("table"):
        parts.append(table(data))
    parts.append(
        f"- Machine: {machine_words(data)}; written {data['date']}.\n"
        f"- Seeds: {seeds_words(data)}. Views: {data['views']}.\n"
        f"- Command: `{data['command']}`\n"
        f"- File: [`docs/results/{data['name']}.json`](results/{data['name']}.json)\n"
    )
    return "\n".join(parts)


def measurements_page(results: list[dict[str, Any]]) -> str:
    return INTRO + "".join("\n" + section(d) for d in results)


def block(data: dict[str, Any], top_level: bool) -> str:
    """A page's short copy of one results file: its table and where it comes from."""
    base = "docs/" if top_level else ""
    m = data["machine"]
    where = f"{m['cpu']}, {'GPU ' + m['gpu'] if m['gpu'] else 'no GPU'}, torch {m['torch']}"
    return (
        table(data) + f"\n{seeds_words(data).capitalize()}; {where}; {data['date'][:10]}. "
        f"Source: [`docs/results/{data['name']}.json`]({base}results/{data['name']}.json), "
        f"details on [measurements.md]({base}measurements.md).\n"
    )


def render_page(text: str, where: str, by_name: dict[str, dict[str, Any]], top_level: bool) -> str:
    def replace(m: re.Match) -> str:
        name = m.group("name")
        if name not in by_name:
            raise SystemExit(f"{where}: no results file docs/results/{name}.json")
        return m.group(1) + block(by_name[name], top_level) + m.group(4)

    return BLOCK.sub(replace, text)


def rendered(repo: Path = REPO) -> dict[Path, str]:
    """What every generated page of ``repo`` should hold now (only pages that have generated parts)."""
    results = load_all(repo)
    by_name = {d["name"]: d for d in results}
    measurements = repo / "docs" / "measurements.md"
    out = {measurements: measurements_page(results)}
    for page in [repo / "README.md", *sorted((repo / "docs").glob("*.md"))]:
        if page == measurements or not page.exists():
            continue
        text = page.read_text(encoding="utf-8")
        if BLOCK.search(text):
            out[page] = render_page(text, str(page.relative_to(repo)), by_name, page.parent == repo)
    return out


def stale(repo: Path = REPO) -> list[Path]:
    """The pages of ``repo`` whose text differs from what its results files give."""
    return [p for p, text in rendered(repo).items() if not p.exists() or p.read_text(encoding="utf-8") != text]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="write nothing; exit 1 if a page is stale")
    args = ap.parse_args(argv)
    if args.check:
        bad = stale()
        for p in bad:
            print(f"stale: {p.relative_to(REPO)} (run python benchmarks/render_results.py)", file=sys.stderr)
        return 1 if bad else 0
    for page, text in rendered().items():
        if not page.exists() or page.read_text(encoding="utf-8") != text:
            page.write_text(text, encoding="utf-8")
            print(f"rendered {page.relative_to(REPO)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
