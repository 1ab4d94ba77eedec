"""The `templates` command and the CLI's one error path (exit 2, one stderr line, no traceback)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from filter_templates.cli import main

VGG_COUNTS = {
    "uniform": [344] * 16,
    "reverse": [512] * 8 + [256] * 4 + [128, 128, 64, 64],
    "quadratic": [811, 624, 464, 331, 224, 144, 91, 64, 64, 91, 144, 224, 331, 464, 624, 811],
    "negative-quadratic": [64, 176, 272, 352, 416, 464, 496, 512, 512, 496, 464, 416, 352, 272, 176, 64],
}


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_templates_json_vgg19(capsys):
    code, out, err = run(capsys, "templates", "--model", "vgg19", "--json")
    assert code == 0
    doc = json.loads(out)  # exactly one JSON document
    assert doc["model"] == "vgg19" and doc["width"] == 1.0 and doc["classes"] == 10
    by_name = {t["name"]: t for t in doc["templates"]}
    assert list(by_name) == ["base", "reverse", "uniform", "quadratic", "negative-quadratic"]
    assert by_name["base"]["params"] == 20_040_522
    assert 0.75e9 < by_name["base"]["flops"] < 0.85e9
    for name, counts in VGG_COUNTS.items():
        assert by_name[name]["filters"] == counts


def test_templates_table_and_selection(capsys):
    code, out, err = run(
        capsys, "templates", "--model", "vgg19", "--template", "uniform", "--width", "0.5", "--divisor", "8"
    )
    assert code == 0 and err == ""
    assert "uniform" in out and "base" not in out.split("\n", 2)[2]
    assert " 176 176 " in out


def test_templates_explicit_counts_and_classes(capsys):
    code, out, _ = run(
        capsys, "templates", "--model", "vgg19", "--template", ",".join(["32"] * 16), "--classes", "100", "--json"
    )
    assert code == 0
    (row,) = json.loads(out)["templates"]
    assert row["filters"] == [32] * 16


@pytest.mark.parametrize(
    "argv, needle",
    [
        (["templates", "--model", "vgg99"], "unknown model 'vgg99'"),
        (["templates", "--model", "vgg19", "--template", "cubic"], "unknown template 'cubic'"),
        (["templates", "--model", "vgg19", "--width", "0"], "positive finite"),
        (["templates", "--model", "vgg19", "--width", "-2"], "positive finite"),
        (["templates", "--model", "vgg19", "--width", "nan"], "positive finite"),
        (["templates", "--model", "vgg19", "--width", "wide"], "not a number"),
        (["templates", "--model", "vgg19", "--classes", "0"], "positive integer"),
        (["templates", "--model", "vgg19", "--divisor", "x"], "integer"),
        (["templates", "--model", "vgg19", "--template", "1,2,3"], "16 template layers"),
        (["templates"], "--model"),
        (["templates", "--model", "vgg19", "--frobnicate"], "unrecognized arguments"),
        (["frobnicate"], "invalid choice"),
    ],
)
def test_bad_input_is_one_line_exit_2(capsys, argv, needle):
    code, out, err = run(capsys, *argv)
    assert code == 2
    assert out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("filter-templates: error:")
    assert needle in lines[0]


def test_console_script_no_traceback():
    proc = subprocess.run(
        [sys.executable, "-m", "filter_templates", "templates", "--model", "nope"], capture_output=True, text=True
    )
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert proc.stderr.count("\n") == 1
