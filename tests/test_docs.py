"""The documentation: measured figures come from docs/results/, and the pages speak of the project only.

A figure copied by hand into a page drifts from the file that measured it; a page that narrates how
the project was developed tells a user nothing about using it. Both are checked here.
"""

from __future__ import annotations

import json
import re
import shutil
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

import render_results  # noqa: E402  (benchmarks/ is not a package)
import results_file  # noqa: E402

SCANNED = [REPO / "README.md", REPO / "docs", REPO / "filter_templates", REPO / "benchmarks", REPO / "configs"]
TEXT_SUFFIXES = {".md", ".py", ".toml", ".txt", ".cfg"}
# Words that describe how the project was made, not what it is. API names that contain them are
# allowed: onnxruntime's InferenceSession and its session.intra_op settings, pytest's session scope.
PROCESS = re.compile(r"\b(sessions?|worktrees?)\b", re.I)
ALLOWED = re.compile(r"InferenceSession|scope=.session.|session_options|SessionOptions|session\.intra_op", re.I)
RUN_LABEL = re.compile(r"\brun [A-Q]\b|\bruns [A-Q](?: and [A-Q]|-[A-Q])\b")
COMMIT_ID = re.compile(r"\b(?=[0-9a-f]*[a-f])(?=[0-9a-f]*[0-9])[0-9a-f]{7,12}\b")


def _files(paths: list[Path]) -> list[Path]:
    out = []
    for p in paths:
        if p.is_file():
            out.append(p)
        elif p.is_dir():
            out += [f for f in sorted(p.rglob("*")) if f.suffix in TEXT_SUFFIXES and "__pycache__" not in f.parts]
    return out


def _hits(pattern: re.Pattern, paths: list[Path], allowed: re.Pattern | None = None) -> list[str]:
    hits = []
    for f in _files(paths):
        for n, line in enumerate(f.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
            if pattern.search(line) and not (allowed and allowed.search(line)):
                hits.append(f"{f.relative_to(REPO)}:{n}: {line.strip()[:100]}")
    return hits


def test_no_process_words():
    assert _hits(PROCESS, SCANNED, ALLOWED) == []


def test_no_run_labels_or_commit_ids_in_the_pages():
    pages = [REPO / "README.md", REPO / "docs"]
    assert _hits(RUN_LABEL, pages) == []
    assert _hits(COMMIT_ID, [p for p in _files(pages) if p.suffix == ".md"]) == []


def test_no_spec_references():
    """The specification is not shipped; a page or docstring gives the reason itself."""
    assert _hits(re.compile(r"SPEC"), [REPO / "README.md", REPO / "docs", REPO / "filter_templates"]) == []


def test_readme_is_a_short_manual():
    assert len((REPO / "README.md").read_text(encoding="utf-8").splitlines()) <= 300


def test_results_files_name_machine_torch_and_command():
    results = render_results.load_all()
    assert len(results) >= 3
    for d in results:  # read() already refused a file without these
        assert d["machine"]["cpu"] and d["machine"]["torch"] and d["command"].strip()
        assert isinstance(d["seeds"], list) and d["views"]


def test_rendered_pages_match_the_results_files():
    stale = render_results.stale()
    assert stale == [], f"stale: {[str(p.relative_to(REPO)) for p in stale]}; run python benchmarks/render_results.py"


def test_a_changed_figure_makes_the_pages_stale(tmp_path):
    """The check above can fail: change one number in a copy and the rendered pages no longer match."""
    (tmp_path / "docs").mkdir()
    shutil.copytree(REPO / "docs" / "results", tmp_path / "docs" / "results")
    shutil.copy(REPO / "README.md", tmp_path / "README.md")
    for page, text in render_results.rendered(tmp_path).items():
        page.write_text(text, encoding="utf-8")
    assert render_results.stale(tmp_path) == []
    path = sorted((tmp_path / "docs" / "results").glob("*.json"))[0]
    data = json.loads(path.read_text())
    data["table"]["rows"][0][-1] = "changed"
    path.write_text(json.dumps(data))
    assert tmp_path / "docs" / "measurements.md" in render_results.stale(tmp_path)


def test_results_file_round_trip_and_refusals(tmp_path):
    path = results_file.write(
        tmp_path,
        "demo",
        title="Demo",
        numbers={"x": 1.5},
        seeds=[0, 1],
        views="none",
        table={"columns": ["a", "b"], "rows": [["r", 2]]},
        command="python demo.py",
    )
    data = results_file.read(path)
    assert data["command"] == "python demo.py" and data["seeds"] == [0, 1]
    assert {"cpu", "amx", "gpu", "threads", "torch"} <= set(data["machine"])
    assert "| r | 2 |" in render_results.table(data)
    with pytest.raises(ValueError):
        results_file.write(
            tmp_path,
            "bad",
            title="Bad",
            numbers={},
            seeds=[],
            views="none",
            table={"columns": ["a", "b"], "rows": [["only one"]]},
        )
    del data["command"]
    (tmp_path / "broken.json").write_text(json.dumps(data))
    with pytest.raises(ValueError, match="command"):
        results_file.read(tmp_path / "broken.json")
