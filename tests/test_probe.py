"""probe writes ONNX models, a manifest and a standalone script; the script's table fits budgets by
monotone interpolation over widths; a table of another model is refused in one line."""

from __future__ import annotations

import ast
import json
import re
import subprocess
import sys

import pytest

from filter_templates.cli import main
from filter_templates.method import deploy_timing
from filter_templates.method.arch import make_arch
from filter_templates.method.deploy_timing import MANIFEST, TABLE, TABLE_FORMAT
from filter_templates.method.latency_fit import step_of, width_of
from filter_templates.method.latency_table import SCRIPT

pytest.importorskip("onnxscript")

WIDTHS = ["0.02", "0.04"]


@pytest.fixture(scope="module")
def probed(tmp_path_factory):
    out = tmp_path_factory.mktemp("probe") / "p"
    assert main(["probe", "--model", "vgg19", "--template", "base", "--widths", *WIDTHS, "--out", str(out)]) == 0
    return out


def test_probe_writes_one_model_per_entry_a_manifest_and_the_script(probed):
    manifest = json.loads((probed / MANIFEST).read_text())
    assert manifest["model"] == "vgg19" and manifest["image_size"] == 32
    assert [(e["template"], e["width"]) for e in manifest["entries"]] == [("base", 0.02), ("base", 0.04)]
    for e in manifest["entries"]:
        assert (probed / e["file"]).stat().st_size > 0
        assert e["filters"] == list(make_arch("vgg19", e["template"], e["width"]).filters)
    assert (probed / SCRIPT).read_text() == open(deploy_timing.__file__).read()


def test_the_script_needs_only_the_runtime_and_numpy():
    tree = ast.parse(open(deploy_timing.__file__).read())
    names = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    names |= {n.module.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    assert names - set(sys.stdlib_module_names) == {"numpy", "onnxruntime", "openvino"}


def test_the_script_writes_a_table_on_the_target(probed, tmp_path):
    pytest.importorskip("onnxruntime")
    out = tmp_path / "t.json"
    args = [sys.executable, "-I", str(probed / SCRIPT), "--runtime", "onnxruntime", "--rounds", "2", "--out", str(out)]
    subprocess.run(args, check=True, capture_output=True, cwd=tmp_path)
    table = json.loads(out.read_text())
    assert table["format"] == TABLE_FORMAT and table["runtime"] == "onnxruntime" and table["threads"] == 1
    assert all(e["median_s"] > 0 and e["spread_s"] >= 0 for e in table["entries"])


def _table(probed, tmp_path, latency_of):
    """The probe's manifest with a made-up latency per entry, as the script would write it."""
    doc = json.loads((probed / MANIFEST).read_text())
    doc.update(format=TABLE_FORMAT, runtime="onnxruntime", version="1", threads=1, batch=1, rounds=3, machine="x")
    for e in doc["entries"]:
        e["median_s"], e["spread_s"] = latency_of(e), 1e-6
    path = tmp_path / TABLE
    path.write_text(json.dumps(doc))
    return path


def test_fit_interpolates_the_table_over_widths(probed, tmp_path, capsys):
    path = _table(probed, tmp_path, lambda e: e["width"] * 0.1)  # 2 ms at 0.02, 4 ms at 0.04
    assert (
        main(
            [
                "fit",
                "--model",
                "vgg19",
                "--template",
                "base",
                "--budget",
                "latency=3ms",
                "--latency-table",
                str(path),
                "--latency-tolerance",
                "0",
                "--json",
            ]
        )
        == 0
    )
    (d,) = json.loads(capsys.readouterr().out)["fits"]
    assert d["width"] == width_of(step_of(0.03))  # log-log interpolation of a line through the origin: exact
    assert (
        d["latency"]["median_s"] <= 3e-3 and d["latency"]["interpolated"] and d["latency"]["runtime"] == "onnxruntime"
    )


def test_table_refusals_are_one_line_and_write_nothing(probed, tmp_path, capsys):
    path = _table(probed, tmp_path, lambda e: e["width"] * 0.1)
    save = tmp_path / "fits"
    cases = [
        (
            ["--model", "mobilenet", "--budget", "latency=3ms"],
            "a table of vgg19, 10 classes, divisor 1, 32 px, not of mobilenet",
        ),
        (["--model", "vgg19", "--classes", "100", "--budget", "latency=3ms"], "not of vgg19, 100 classes"),
        (["--model", "vgg19", "--template", "reverse", "--budget", "latency=3ms"], "no entries for template reverse"),
        (["--model", "vgg19", "--template", "base", "--budget", "latency=1ms"], "smallest base model .* takes 2 ms"),
    ]
    for args, message in cases:
        code = main(["fit", *args, "--latency-table", str(path), "--save", str(save)])
        err = capsys.readouterr().err.strip()
        assert code == 2 and len(err.splitlines()) == 1, err
        assert re.search(message, err), err
        assert not save.exists()
    code = main(["fit", "--model", "vgg19", "--budget", "latency=3ms", "--latency-table", str(probed / MANIFEST)])
    assert code == 2 and "not a latency table" in capsys.readouterr().err


def test_probe_refuses_a_folder_with_files(probed, capsys):
    assert main(["probe", "--model", "vgg19", "--widths", "0.02", "--out", str(probed)]) == 2
    assert "not empty" in capsys.readouterr().err
