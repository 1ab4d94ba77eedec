"""Every Python block of the README and docs/ runs as written.

A page's blocks run in order in one fresh interpreter (a later block may use an earlier one's
names), in an empty folder, with the repository importable. A block that cannot run in the default
suite says so in an HTML comment on the line before its fence, which a reader of the rendered page
does not see:

* ``<!-- docs-test: slow -->``: it trains; it runs in the slow suite (``-m slow``);
* ``<!-- docs-test: skip REASON -->``: it needs what no test has (a dataset on disk, hours);
  only its imports run, so a moved name still fails, and the skip is reported with REASON;
* ``<!-- docs-test: needs MODULE -->``: it runs where MODULE is installed, and is skipped
  (saying so) where it is not.
"""

from __future__ import annotations

import ast
import importlib.util
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PAGES = [REPO / "README.md", *sorted((REPO / "docs").rglob("*.md"))]
FENCE = re.compile(r"^```python\s*$")
MARK = re.compile(r"^<!--\s*docs-test:\s*(?P<kind>slow|skip|needs)\b\s*(?P<arg>.*?)\s*-->\s*$")


@dataclass
class Block:
    page: Path
    line: int  # of the opening fence
    code: str
    kind: str = ""  # "", slow, skip or needs
    arg: str = ""

    @property
    def where(self) -> str:
        return f"{self.page.relative_to(REPO)}:{self.line}"


def blocks(page: Path) -> list[Block]:
    """The page's ```python blocks, each with the mark on the line above its fence (if any)."""
    lines = page.read_text(encoding="utf-8").splitlines()
    out, i = [], 0
    while i < len(lines):
        if FENCE.match(lines[i]):
            end = next(j for j in range(i + 1, len(lines)) if lines[j].startswith("```"))
            mark = MARK.match(lines[i - 1]) if i else None
            block = Block(page, i + 1, "\n".join(lines[i + 1 : end]) + "\n")
            if mark:
                block.kind, block.arg = mark["kind"], mark["arg"]
            out.append(block)
            i = end
        i += 1
    return out


def imports_of(code: str) -> str:
    """The block's top-level import statements alone."""
    tree = ast.parse(code)
    return "\n".join(ast.unparse(n) for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom))) + "\n"


def run_page(blocks: list[Block], tmp_path: Path) -> None:
    """The blocks as one script, in order, in ``tmp_path``; a failure names the block's line."""
    script = []
    for b in blocks:
        code = imports_of(b.code) if b.kind == "skip" else b.code
        script.append(f"print({b.where!r}, file=__import__('sys').stderr)\n{code}")
    path = tmp_path / "page.py"
    path.write_text("\n".join(script))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    done = subprocess.run([sys.executable, str(path)], cwd=tmp_path, env=env, capture_output=True, text=True)
    started = [line for line in done.stderr.splitlines() if line.endswith(tuple(b.where for b in blocks))]
    assert done.returncode == 0, f"{started[-1] if started else blocks[0].where} failed:\n{done.stderr[-3000:]}"


ALL = [b for page in PAGES for b in blocks(page)]
PAGES_WITH_CODE = sorted({b.page for b in ALL})


def _runnable(page: Path, slow: bool) -> list[Block]:
    """The page's blocks this run executes: the default suite's, or (``slow``) up to the last slow one."""
    out = []
    for b in (b for b in ALL if b.page == page):
        if b.kind == "needs" and importlib.util.find_spec(b.arg) is None:
            continue
        if b.kind == "slow" and not slow:
            break  # a later block may use what it made
        out.append(b)
    return out


@pytest.mark.parametrize("page", PAGES_WITH_CODE, ids=lambda p: str(p.relative_to(REPO)))
def test_page_code_runs(page, tmp_path):
    run_page(_runnable(page, slow=False), tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize(
    "page", sorted({b.page for b in ALL if b.kind == "slow"}), ids=lambda p: str(p.relative_to(REPO))
)
def test_page_code_runs_with_training(page, tmp_path):
    run_page(_runnable(page, slow=True), tmp_path)


SKIPPED = [b for b in ALL if b.kind == "skip" or (b.kind == "needs" and importlib.util.find_spec(b.arg) is None)]


@pytest.mark.parametrize("block", SKIPPED, ids=lambda b: b.where)
def test_blocks_that_cannot_run_here(block):
    """Each block the default suite does not run, reported as a skip with its reason."""
    reason = block.arg if block.kind == "skip" else f"needs {block.arg}, which is not installed"
    pytest.skip(f"{block.where}: {reason}")


def test_marks_are_understood():
    """A mark that names no kind, or a skip without a reason, is a mistake in the page."""
    for page in PAGES:
        for n, line in enumerate(page.read_text(encoding="utf-8").splitlines(), 1):
            if "docs-test" in line:
                mark = MARK.match(line)
                assert mark and (mark["kind"] == "slow" or mark["arg"]), f"{page.relative_to(REPO)}:{n}: {line}"
    assert any(b.page.name == "README.md" for b in ALL) and any(b.page.name == "api.md" for b in ALL)
