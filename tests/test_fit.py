"""Budget fitting (SPEC section 5) and the ``fit`` command."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from filter_templates.cli import main
from filter_templates.core.errors import UsageError
from filter_templates.method import fit as FIT
from filter_templates.method import measure as M
from filter_templates.method.arch import Arch, ArchOptions, make_arch
from filter_templates.method.fit import Budget, FitRequest, fit, parse_budget
from filter_templates.method.templates import template_names


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


# --------------------------------------------------------------------------------------------
# Budgets
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, key, value",
    [
        ("params=5e6", "params", 5e6),
        ("params=1M", "params", 1e6),
        ("PARAMS = 1.5k", "params", 1500),
        ("flops=100M", "flops", 1e8),
        ("flops=2G", "flops", 2e9),
        ("memory=512M", "memory", 512e6),
        ("memory=512MB", "memory", 512e6),
        ("memory=2GiB", "memory", 2 * 1024**3),
        ("memory=64Ki", "memory", 64 * 1024),
        ("memory=1000000", "memory", 1e6),
        ("latency=20ms", "latency", 0.02),
        ("latency=0.5", "latency", 0.5),
        ("latency=2s", "latency", 2.0),
        ("latency=250us", "latency", 250e-6),
    ],
)
def test_parse_budget(text, key, value):
    b = parse_budget(text)
    assert b.key == key and b.value == pytest.approx(value, rel=1e-12)


@pytest.mark.parametrize(
    "text, needle",
    [
        ("params", "KEY=VALUE"),
        ("params=1=2", "KEY=VALUE"),
        ("size=5M", "unknown budget key 'size'"),
        ("params=abc", "malformed budget value"),
        ("params=5MiB", "malformed budget value"),  # binary suffixes are for bytes only
        ("params=5ms", "malformed budget value"),
        ("latency=20M", "malformed budget value"),
        ("memory=3x", "malformed budget value"),
        ("params=", "malformed budget value"),
        ("params=-5", "positive"),
        ("params=0", "positive"),
        ("latency=inf", "malformed"),
        ("flops=1e400", "positive finite"),
    ],
)
def test_parse_budget_rejects(text, needle):
    with pytest.raises(UsageError, match=needle):
        parse_budget(text)


@given(
    st.floats(min_value=1e-3, max_value=1e6, allow_nan=False), st.sampled_from(["", "K", "M", "G", "Ki", "Mi", "Gi"])
)
def test_parse_memory_suffixes(number, suffix):
    scale = {"": 1, "K": 1e3, "M": 1e6, "G": 1e9, "Ki": 1024, "Mi": 1024**2, "Gi": 1024**3}[suffix]
    assert parse_budget(f"memory={number!r}{suffix}B").value == pytest.approx(number * scale, rel=1e-12)


def test_budget_to_dict_and_str():
    assert Budget("params", 1e6).to_dict() == {"key": "params", "value": 1000000}
    assert isinstance(Budget("params", 1e6).to_dict()["value"], int)
    assert Budget("latency", 0.02).to_dict() == {"key": "latency", "value": 0.02}
    assert str(parse_budget("params=1M")) == "params=1M"
    assert str(parse_budget("memory=512MiB")) == "memory=512 MiB" and str(parse_budget("flops=20M")) == "flops=20M"


# --------------------------------------------------------------------------------------------
# Done-when: every template within 97-100% of params and FLOPs budgets
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "family, budget",
    [
        ("vgg19", "params=1M"),
        ("mobilenet", "params=1M"),
        ("resnet50", "params=1M"),
        ("googlenet", "params=1M"),
        ("vgg19", "flops=100M"),
        ("mobilenet", "flops=20M"),
        ("resnet50", "flops=300M"),
        ("googlenet", "flops=300M"),
    ],
)
def test_fit_cli_hits_97_to_100_percent(capsys, family, budget):
    code, out, err = run(capsys, "fit", "--model", family, "--budget", budget, "--json")
    assert code == 0 and err == ""
    doc = json.loads(out)
    key, value = doc["budget"]["key"], doc["budget"]["value"]
    assert doc["model"] == family and doc["budget"] == parse_budget(budget).to_dict()
    assert [f["template"] for f in doc["fits"]] == template_names()
    for f in doc["fits"]:
        assert 0.97 * value <= f[key] <= value, f
        arch = make_arch(family, f["template"], f["width"])
        assert list(arch.filters) == f["filters"]
        assert M.arch_params(arch) == f["params"] and M.arch_flops(arch) == f["flops"]
        assert not f["capped"]


@pytest.mark.parametrize("key", ["params", "flops"])
def test_fit_is_the_largest_width_up_to_1e4(key):
    budget = Budget(key, 2e6 if key == "params" else 150e6)
    shape = {"params": M.arch_params, "flops": M.arch_flops}[key]
    for r in fit(FitRequest("vgg19", budget)):
        assert shape(r.arch) <= budget.value
        assert shape(make_arch("vgg19", r.template, r.width * (1 + 1e-4))) > budget.value, r.template
        assert r.resources == {"params": M.arch_params(r.arch), "flops": M.arch_flops(r.arch)}


def test_fit_options_pass_through():
    options = ArchOptions(divisor=8, floor=16)
    (r,) = fit(FitRequest("mobilenet", "params=300K", ["uniform"], classes=100, options=options))
    assert r.arch.classes == 100 and r.arch.divisor == 8 and r.arch.floor == 16
    assert all(f % 8 == 0 and f >= 16 for f in r.arch.filters)
    assert r.resources["params"] == M.count_params(r.arch.build()) <= 300_000


def test_non_monotone_resnet_finds_the_width_above_the_dip():
    # ResNet's projection shortcuts come and go where rounding makes neighbouring blocks equal:
    # the cost can dip just above the first boundary. Nothing above the answer may fit.
    budget = 22_000  # bisection alone stops at width 0.0258 (20,196 params); 0.02698 fits too
    (r,) = fit(FitRequest("resnet50-blocks", Budget("params", budget), ["negative-quadratic"]))
    assert r.width > 0.0269
    assert r.resources["params"] <= budget
    widths = r.width * np.linspace(1 + 1e-4, 1.1, 60)
    fitting = [
        w for w in widths if M.arch_params(make_arch("resnet50-blocks", "negative-quadratic", float(w))) <= budget
    ]
    assert fitting == []


def test_memory_budget_uses_the_exact_account():
    budget = Budget("memory", 40e6)
    for r in fit(FitRequest("vgg19", budget, ["base", "quadratic"], batch_size=16)):
        assert r.resources["train_memory_bytes"] <= budget.value
        assert r.resources["train_memory_method"] == "cpu-account"
        bigger = make_arch("vgg19", r.template, r.width * (1 + 1e-4))
        assert M.train_memory_bytes(M.meta_model(bigger), 16) > budget.value


def test_latency_budget_with_tolerance(monkeypatch):
    # Deterministic stand-in for the clock: latency proportional to parameters (see tests/test_runtimes.py).
    from tests.test_runtimes import fake_clock

    fake_clock(monkeypatch)
    budget = Budget("latency", 0.0005)  # 0.5 ms = 500K parameters on the fake clock
    results = fit(FitRequest("mobilenet", budget, ["base", "uniform"], latency_tolerance=0.05))
    for r in results:
        lat = r.resources["latency"]
        assert lat["median_s"] <= budget.value * 0.95 < r.resources["next_step"]["median_s"]
        assert lat["runtime"] == "torch" and lat["batch"] == 1 and lat["device"] == "cpu"
        assert lat["margin"] == pytest.approx(1 - lat["median_s"] / budget.value)
        assert r.probes <= 12  # predicted from FLOPs, not bisected


def test_fit_result_to_dict_and_unreachable_message():
    (r,) = fit(FitRequest("vgg19", "params=500K", ["base"]))
    d = r.to_dict()
    assert list(d) == ["template", "width", "filters", "params", "flops", "capped"]
    smallest = M.arch_params(make_arch("vgg19", "base", 1e-6))
    with pytest.raises(UsageError, match=f"smallest reachable vgg19 model.*{smallest:,} parameters"):
        fit(FitRequest("vgg19", Budget("params", smallest - 1)))
    (r,) = fit(FitRequest("vgg19", Budget("params", smallest), ["reverse"]))  # exactly the smallest is reachable
    assert r.resources["params"] == smallest


def test_search_on_a_synthetic_step_function():
    # cost = sum(round(w * c)) over a few "layers": monotone, steps where any count changes
    counts = [3.3, 7.1, 12.9]
    cost = lambda w: float(sum(max(1, round(w * c)) for c in counts))  # noqa: E731
    width, capped, note = FIT._search(cost, 40.0, 64.0, 1e-4, measured=False)
    assert cost(width) <= 40 < cost(width * (1 + 1e-4)) and not capped
    width, capped, note = FIT._search(cost, 1e9, 64.0, 1e-4, measured=False)
    assert width == 64.0 and capped and "64" in note


# --------------------------------------------------------------------------------------------
# The command
# --------------------------------------------------------------------------------------------


def test_fit_table_output(capsys):
    code, out, err = run(
        capsys, "fit", "--model", "vgg19", "--budget", "params=1M", "--template", "base", "--template", "uniform"
    )
    assert code == 0 and err == ""
    lines = out.splitlines()
    assert "params <= 1M" in lines[0]
    assert lines[1].split()[:4] == ["template", "width", "params", "MFLOPs"]  # the smallest model's prefix
    assert lines[2].startswith("base") and lines[3].startswith("uniform") and "%" in lines[2]


def test_fit_prints_flops_and_memory_in_the_budgets_units(capsys):
    """flops=20M: MFLOPs near 20, not 0.020 GFLOPs; memory=512MiB: the budget in MiB over MiB columns."""
    code, out, _ = run(capsys, "fit", "--model", "vgg19", "--budget", "flops=20M", "--template", "base")
    lines = out.splitlines()
    assert code == 0 and lines[0].endswith("budget flops <= 20M")
    head, row = lines[1].split(), lines[2].split()
    assert head[3] == "MFLOPs" and 19.0 < float(row[3]) <= 20.0
    code, out, _ = run(capsys, "fit", "--model", "vgg19", "--budget", "memory=512MiB", "--template", "base")
    lines = out.splitlines()
    assert code == 0 and lines[0].endswith("budget memory <= 512 MiB")
    head, row = lines[1].split(), lines[2].split()
    assert head[4:6] == ["train", "MiB"] and 490 < float(row[4]) <= 512  # the column in the budget's unit


def test_fit_save_writes_train_configs(capsys, tmp_path):
    code, out, err = run(
        capsys,
        "fit",
        "--model",
        "mobilenet",
        "--budget",
        "params=500K",
        "--template",
        "base",
        "--template",
        "8,16,16,32,32,64,64,64,64,64,64,128,128",
        "--save",
        str(tmp_path / "cfg"),
        "--json",
    )
    assert code == 0
    doc = json.loads(out)
    files = sorted((tmp_path / "cfg").iterdir())
    assert len(files) == 2 and sorted(f["config"] for f in doc["fits"]) == [str(p) for p in files]
    for f in doc["fits"]:
        saved = json.loads(open(f["config"]).read())
        arch = Arch.from_dict(saved["arch"])
        assert f["config"].endswith(f"-w{f['width']:g}.json") and "mobilenet-" in f["config"]
        assert list(arch.filters) == f["filters"] and arch.width == f["width"]
        assert M.arch_params(arch) == f["params"] <= 500_000
        assert saved["fit"]["budget"] == {"key": "params", "value": 500000}
        assert saved["fit"]["resources"]["params"] == f["params"]
    assert any("8_16_16" in str(p) for p in files)  # commas are not kept in file names


def test_fit_budget_beyond_max_width_warns(capsys):
    code, out, err = run(
        capsys, "fit", "--model", "vgg19", "--budget", "params=1e15", "--template", "base", "--max-width", "4", "--json"
    )
    assert code == 0
    (f,) = json.loads(out)["fits"]
    assert f["width"] == 4 and f["capped"]
    assert err.count("\n") == 1 and "warning" in err and "width 4" in err


@pytest.mark.parametrize(
    "argv, needle",
    [
        (["--budget", "params=100"], "smallest reachable vgg19 model"),
        (["--budget", "size=1M"], "unknown budget key"),
        (["--budget", "params=lots"], "malformed budget value"),
        (["--budget", "latency=5parsecs"], "malformed budget value"),
        (["--budget", "params"], "KEY=VALUE"),
        (["--budget", "params=1M", "--template", "cubic"], "unknown template 'cubic'"),
        (["--budget", "params=1M", "--device", "tpu"], "unknown device"),
        (["--budget", "params=1M", "--latency-tolerance", "1.5"], "fraction"),
        (["--budget", "params=1M", "--batch-size", "0"], "positive integer"),
        (["--budget", "params=1M", "--max-width", "-1"], "positive"),
        (["--budget", "params=1M", "--threads", "0"], "positive integer"),
        ([], "--budget"),
    ],
)
def test_fit_bad_input_is_one_line_exit_2(capsys, argv, needle):
    code, out, err = run(capsys, "fit", "--model", "vgg19", *argv)
    assert code == 2 and out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("filter-templates: error:"), err
    assert needle in lines[0]


@pytest.mark.parametrize("command", ["fit", "templates"])
def test_help_states_units_and_tolerance(capsys, command):
    with pytest.raises(SystemExit) as exc:
        main([command, "--help"])
    assert exc.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    if command == "fit":
        assert "1000-based" in text and "1024-based" in text and "ms" in text
        assert "budget*(1-FRAC)" in text and "3%" in text
    else:
        assert "--measure" in text


def test_fit_unknown_model(capsys):
    code, out, err = run(capsys, "fit", "--model", "alexnet", "--budget", "params=1M")
    assert code == 2 and "unknown model 'alexnet'" in err and err.count("\n") == 1


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is available here")
def test_fit_cuda_without_gpu(capsys):
    code, out, err = run(capsys, "fit", "--model", "vgg19", "--budget", "memory=1G", "--device", "cuda")
    assert code == 2 and "CUDA is not available" in err and err.count("\n") == 1


def test_huge_budget_stops_below_the_filter_limit_instead_of_failing():
    from filter_templates.models import MAX_FILTERS

    (res,) = fit(FitRequest("googlenet", "params=1T", ["quadratic"]))  # its end modules hit the limit near w=58
    assert res.capped and max(res.arch.filters) <= MAX_FILTERS
