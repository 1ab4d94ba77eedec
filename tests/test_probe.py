"""probe writes ONNX models, a manifest and a standalone script; the script's table fits budgets by
interpolation over widths; a table of another model is refused in one line."""

from __future__ import annotations

import ast
import json
import re
import subprocess
import sys

import pytest

from filter_templates.cli import main
from filter_templates.core.errors import UsageError
from filter_templates.method import deploy_timing, latency_table
from filter_templates.method.arch import make_arch
from filter_templates.method.deploy_timing import MANIFEST, TABLE, TABLE_FORMAT
from filter_templates.method.fit import LATENCY_TOLERANCE
from filter_templates.method.latency_fit import step_of, width_of
from filter_templates.method.latency_table import REFINE_MARGIN, SCRIPT, read_table, refined_widths

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


def _stair(probed, tmp_path, widths, latencies):
    """A table of ``widths`` (this model's base template) with made-up latencies."""
    doc = json.loads((probed / MANIFEST).read_text())
    doc.update(format=TABLE_FORMAT, runtime="onnxruntime", version="1", threads=1, batch=1, rounds=3, machine="x")
    doc["entries"] = [
        {"template": "base", "width": w, "filters": list(make_arch("vgg19", "base", w).filters), "median_s": m}
        | {"spread_s": 1e-6}
        for w, m in zip(widths, latencies)
    ]
    path = tmp_path / "coarse.json"
    path.write_text(json.dumps(doc))
    return path


def test_refined_widths_are_every_grid_step_between_the_probed_widths_around_a_budget(probed, tmp_path):
    table = read_table(_stair(probed, tmp_path, [0.02, 0.04, 0.08], [2e-3, 4e-3, 8e-3]))
    widths = refined_widths(table, "base", [3e-3])
    m = REFINE_MARGIN  # steps beyond the bracket on either side
    assert widths[m] <= 0.02 < widths[m + 1] and widths[-2 - m] < 0.04 <= widths[-1 - m]
    assert all(b / a == pytest.approx(1.05, rel=1e-4) for a, b in zip(widths, widths[1:]))
    both = refined_widths(table, "base", [3e-3, 5e-3])  # two budgets: the union of their brackets
    assert set(widths) < set(both) and max(both) >= 0.08
    for limit, message in [(1e-3, "smallest base model probed .* takes 2 ms"), (9e-3, "widest base model .* wider")]:
        with pytest.raises(UsageError, match=message):
            refined_widths(table, "base", [limit])


def test_probe_refine_writes_the_steps_a_stair_hides(probed, tmp_path, capsys, monkeypatch):
    # what is probed is under test here; exporting is the fixture's (test_probe_writes_one_model...)
    monkeypatch.setattr(latency_table, "onnx_bytes", lambda model, size: b"onnx")
    coarse = _stair(probed, tmp_path, [0.02, 0.0205], [1e-3, 2e-3])  # a stair between two close widths
    out = tmp_path / "fine"
    args = ["probe", "--model", "vgg19", "--template", "base", "--refine", str(coarse), "--budget", "latency=1.5ms"]
    assert main([*args, "--out", str(out), "--json"]) == 0
    widths = [e["width"] for e in json.loads(capsys.readouterr().out)["entries"]]
    assert widths == refined_widths(read_table(coarse), "base", [1.5e-3 * (1 - LATENCY_TOLERANCE)])
    assert len(widths) >= 2 + 2 * latency_table.REFINE_MARGIN and all(
        (out / e["file"]).stat().st_size > 0 for e in json.loads((out / MANIFEST).read_text())["entries"]
    )
    bad = [
        (["--refine", str(coarse)], "--refine and --budget go together"),
        (["--refine", str(coarse), "--budget", "params=1M"], "--refine refines latency budgets"),
        (["--refine", str(coarse), "--budget", "latency=1.5ms", "--widths", "0.1"], "exclude each other"),
        (["--refine", str(out / MANIFEST), "--budget", "latency=1.5ms"], "--refine .*not a latency table"),
        (["--refine", str(coarse), "--budget", "latency=0.5ms"], "smallest base model probed"),
    ]
    for extra, message in bad:
        target = tmp_path / "never"
        code = main(["probe", "--model", "vgg19", "--template", "base", *extra, "--out", str(target)])
        err = capsys.readouterr().err.strip()
        assert code == 2 and len(err.splitlines()) == 1 and re.search(message, err), err
        assert not target.exists()


def test_a_table_fit_takes_the_widest_step_within_the_limit_where_latency_is_not_monotone(probed, tmp_path):
    # kernels picked by channel count: the third width is faster than the second
    k = step_of(0.02)
    widths = [width_of(k + i) for i in range(4)]
    table = read_table(_stair(probed, tmp_path, widths, [1.0e-3, 2.5e-3, 1.2e-3, 3.0e-3]))
    width, median, _, capped = table.fit("base", 2e-3, 1.0)
    assert width == widths[2] and median == pytest.approx(1.2e-3) and not capped
    assert refined_widths(table, "base", [2e-3])[0] <= widths[2]  # the bracket is around the widest that fits


def test_onnxruntime_threads_do_not_spin_between_calls_when_there_are_several(monkeypatch):
    seen = {}

    class Options:
        def add_session_config_entry(self, key, value):
            seen[key] = value

    class Session:
        def __init__(self, model, options, providers):
            pass

        def get_inputs(self):
            return [type("I", (), {"name": "input"})]

    fake = type("ort", (), {"SessionOptions": Options, "InferenceSession": Session})
    monkeypatch.setattr(deploy_timing, "_import", lambda runtime: fake)
    deploy_timing.open_model("onnxruntime", b"", (1, 3, 8, 8), 1)
    assert seen == {}  # one thread: no pool to spin
    deploy_timing.open_model("onnxruntime", b"", (1, 3, 8, 8), 2)
    assert seen == {"session.intra_op.allow_spinning": "0"}
