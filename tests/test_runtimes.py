"""Latency in a runtime: settings refused in one line, alternating timing, records that say how they
were taken, and the latency fit's search (on a fake clock, and for real in tiny models)."""

from __future__ import annotations

import json
import math

import pytest
import torch

from filter_templates.cli import main
from filter_templates.core.errors import UsageError
from filter_templates.method import deploy_timing, latency_fit
from filter_templates.method import runtimes as R
from filter_templates.method.arch import make_arch
from filter_templates.method.fit import Budget, FitRequest, fit
from filter_templates.method.measure import count_params

RECORD_KEYS = {"runtime", "version", "threads", "batch", "device", "median_s", "spread_s", "rounds", "load"}
QUICK = dict(rounds=3, block_s=0.002)


def fake_clock(monkeypatch, per_param: float = 1e-9, spread: float = 0.0) -> None:
    """Replace opening and timing models with a clock proportional to parameters: fits become exact."""

    def fake_open(self, model, image_size):
        return lambda n=count_params(model): n

    def fake_time(runtime, calls, rounds=None):
        return [R.Timing(c() * per_param, spread, rounds or runtime.setting.rounds) for c in calls]

    monkeypatch.setattr(R.TorchRuntime, "open", fake_open)
    monkeypatch.setattr(latency_fit, "time_models", fake_time)


def test_unknown_runtime_and_bad_numbers_are_one_line():
    with pytest.raises(UsageError, match="unknown runtime 'tensorrt'; choose from torch, onnxruntime, openvino"):
        R.LatencySetting("tensorrt").checked()
    with pytest.raises(UsageError, match="latency batch"):
        R.LatencySetting("torch", batch=0).checked()
    assert R.LatencySetting().checked().threads == torch.get_num_threads()


def test_a_runtime_not_installed_names_its_extra(monkeypatch):
    def missing(name):
        raise deploy_timing.MissingRuntime(name)

    monkeypatch.setattr(deploy_timing, "runtime_version", missing)
    with pytest.raises(
        UsageError, match=r"--runtime openvino needs the openvino extra: pip install 'filter-templates\[openvino\]'"
    ):
        R.LatencySetting("openvino").checked()


def test_cli_refuses_unknown_runtime(capsys, tmp_path):
    code = main(
        ["fit", "--model", "vgg19", "--budget", "latency=1ms", "--runtime", "tvm", "--save", str(tmp_path / "x")]
    )
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1 and "unknown runtime 'tvm'" in err
    assert not (tmp_path / "x").exists()


def test_alternating_timing_orders_a_slow_and_a_fast_call():
    x = torch.randn(64, 64)
    slow = lambda: [x @ x for _ in range(20)]  # noqa: E731
    fast = lambda: x @ x  # noqa: E731
    (s_med, s_spread), (f_med, f_spread) = deploy_timing.time_alternating([slow, fast], rounds=3, block_s=0.002)
    assert s_med > 3 * f_med > 0 and s_spread >= 0 and f_spread >= 0


def _tiny():
    return make_arch("vgg19", "base", 0.03, 10).build().eval()


@pytest.mark.parametrize("runtime", R.RUNTIMES)
def test_each_runtime_times_a_model_and_records_how(runtime):
    if runtime != "torch":
        pytest.importorskip(runtime)
        pytest.importorskip("onnxscript")
    rt = R.open_runtime(R.LatencySetting(runtime, batch=2, threads=1, **QUICK))
    (t,) = R.time_models(rt, [rt.open(_tiny(), 32)])
    rec = rt.record(t)
    assert RECORD_KEYS <= set(rec) and rec["runtime"] == runtime and rec["batch"] == 2 and rec["threads"] == 1
    assert rec["version"] and 0 < rec["median_s"] < 1 and rec["rounds"] == 3


def test_every_grid_width_is_its_own_step():
    assert all(latency_fit.step_of(latency_fit.width_of(k)) == k for k in range(-120, 20))


def test_separable():
    a, b = R.Timing(1e-3, 1e-4, 5), R.Timing(1.05e-3, 1e-4, 5)
    assert not R.separable(a, b) and R.separable(a, R.Timing(2e-3, 1e-4, 5))


def test_within_one_step_accepts_neighbours_closer_than_the_spread():
    # An idle 2-core EPYC in onnxruntime: VGG-19 negative-quadratic at 0.157 and 0.164, 0.0254 ms
    # apart with a 0.037 ms spread, against a limit of 0.97 ms: either neighbour is close, but the
    # answer cannot move by more than one step.
    chosen, above = R.Timing(0.9645e-3, 0.037e-3, 9), R.Timing(0.9899e-3, 0.037e-3, 9)
    assert not R.separable(chosen, above) and latency_fit.within_one_step(chosen, above, 0.97e-3)
    wide = R.Timing(0.9645e-3, 0.2e-3, 9)  # noise that could hide the steps on either side
    assert not latency_fit.within_one_step(wide, above, 0.97e-3)
    assert not latency_fit.within_one_step(chosen, R.Timing(0.9899e-3, 0.2e-3, 9), 0.97e-3)


def test_latency_search_lands_on_the_boundary_step(monkeypatch):
    fake_clock(monkeypatch)
    budget = 2e-3  # 2M parameters
    (r,) = fit(FitRequest("vgg19", Budget("latency", budget), ["reverse"], latency_tolerance=0.0))
    chosen, nxt = r.resources["latency"]["median_s"], r.resources["next_step"]["median_s"]
    assert chosen <= budget < nxt
    assert r.resources["next_step"]["width"] == pytest.approx(r.width * latency_fit.WIDTH_STEP, rel=1e-4)
    assert math.isclose(latency_fit.width_of(latency_fit.step_of(r.width)), r.width, rel_tol=1e-6)


def test_fit_refuses_when_the_spread_hides_the_step(monkeypatch):
    fake_clock(monkeypatch, spread=1.0)  # a spread far wider than any step
    with pytest.raises(
        UsageError, match="cannot place the width within one step from noise.*timing spread is 1e\\+03 ms"
    ):
        fit(FitRequest("vgg19", Budget("latency", 2e-3), ["base"]))


def test_fit_refuses_when_its_choice_is_over_the_budget_timed_again(monkeypatch):
    fake_clock(monkeypatch, spread=1e-4)
    fake_time = latency_fit.time_models

    def slower_later(runtime, calls, rounds=None):  # the search times one model at a time, the check two
        return [
            R.Timing(t.median_s * (2 if len(calls) > 1 else 1), t.spread_s, t.rounds)
            for t in fake_time(runtime, calls, rounds)
        ]

    monkeypatch.setattr(latency_fit, "time_models", slower_later)
    with pytest.raises(latency_fit.NoisyTiming, match=r"when timed again \(timing spread 0.1 ms\), over 2 ms"):
        fit(FitRequest("vgg19", Budget("latency", 2e-3), ["base"]))


def test_fit_answers_when_neighbouring_steps_are_closer_than_the_spread(monkeypatch):
    # a step adds about 0.2 ms at 2 ms; a 0.25 ms spread hides one step, not two
    fake_clock(monkeypatch, spread=0.25e-3)
    (r,) = fit(FitRequest("vgg19", Budget("latency", 2e-3), ["base"]))
    step = r.resources["next_step"]["median_s"] - r.resources["latency"]["median_s"]
    assert 0 < step < 0.25e-3 and r.resources["latency"]["median_s"] <= 2e-3 * 0.97


def test_budget_below_the_smallest_model_names_its_latency(monkeypatch):
    fake_clock(monkeypatch)
    smallest = count_params(make_arch("vgg19", "base", 1e-6).build()) * 1e-9
    with pytest.raises(UsageError, match=f"cannot be met.*takes {smallest * 1e3:.4g} ms"):
        fit(FitRequest("vgg19", Budget("latency", smallest / 2), ["base"]))


@pytest.mark.parametrize("runtime", ["onnxruntime", pytest.param("openvino", marks=pytest.mark.slow)])
def test_fit_in_a_runtime_for_real(runtime, capsys):
    pytest.importorskip(runtime)
    pytest.importorskip("onnxscript")
    args = ["fit", "--model", "vgg19", "--template", "base", "--budget", "latency=50ms", "--runtime", runtime]
    args += ["--threads", "1", "--latency-rounds", "3", "--max-width", "0.03", "--json"]
    assert main(args) == 0
    (d,) = json.loads(capsys.readouterr().out)["fits"]
    assert d["capped"] and d["width"] <= 0.03  # a tiny model is far under 50 ms: the cap answers
    assert d["latency"]["runtime"] == runtime and d["latency"]["threads"] == 1 and d["latency"]["batch"] == 1


def test_templates_measure_shows_the_divisor_staircase(capsys):
    args = [
        "templates",
        "--model",
        "vgg19",
        "--width",
        "0.03",
        "--template",
        "base",
        "--measure",
        "--divisors",
        "1",
        "8",
    ]
    assert main([*args, "--latency-rounds", "2", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)["templates"]
    assert [(r["name"], r["divisor"]) for r in rows] == [("base", 1), ("base", 8)]
    assert all(f % 8 == 0 for f in rows[1]["filters"]) and all(r["latency"]["median_s"] > 0 for r in rows)
    assert main(["templates", "--model", "vgg19", "--divisors", "1", "8"]) == 2
    assert "add --measure" in capsys.readouterr().err


def test_a_latency_budget_point_carries_its_runtime_record(monkeypatch):
    from filter_templates.report.budgets import BudgetCell
    from filter_templates.sweep.grid import SweepSpec, known_classes, plan_grid

    fake_clock(monkeypatch)
    spec = SweepSpec(["vgg19"], ["base"], [], ["digits"], budgets=["latency=2ms"], latency=R.LatencySetting(rounds=2))
    (point,) = plan_grid(spec, classes_of=known_classes).budget_points
    rec = point.fit["latency"]
    assert rec["runtime"] == "torch" and rec["batch"] == 1 and rec["median_s"] <= 2e-3
    assert point.ident["latency"] == {"runtime": "torch", "batch": 1, "threads": None}
    cell = BudgetCell("digits", "vgg19", "latency", 2e-3, "base", points=[{"fit": point.fit, "run": None}])
    assert cell.resource("latency_batch_s") == rec["median_s"]  # the runtime's, not the training device's


def test_a_noisy_machine_stops_a_sweep_instead_of_marking_budgets_unreachable(monkeypatch):
    from filter_templates.sweep.grid import SweepSpec, known_classes, plan_grid

    fake_clock(monkeypatch, spread=1.0)
    spec = SweepSpec(["vgg19"], ["base"], [], ["digits"], budgets=["latency=2ms"], latency=R.LatencySetting(rounds=2))
    with pytest.raises(latency_fit.NoisyTiming, match="timing spread is"):
        plan_grid(spec, classes_of=known_classes)


def test_the_search_looks_past_the_first_miss_for_a_wider_model_that_fits(monkeypatch):
    # a runtime that runs one wider model faster (its channel counts suit the kernels)
    fake_clock(monkeypatch)
    request = FitRequest("vgg19", Budget("latency", 2e-3), ["base"], latency_tolerance=0.0)
    (plain,) = fit(request)
    k = latency_fit.step_of(plain.width)
    dip = count_params(make_arch("vgg19", "base", latency_fit.width_of(k + 2)).build())
    fake_time = latency_fit.time_models

    def with_dip(runtime, calls, rounds=None):
        return [R.Timing(0.0, 0.0, 1) if c() == dip else t for c, t in zip(calls, fake_time(runtime, calls, rounds))]

    monkeypatch.setattr(latency_fit, "time_models", with_dip)
    (r,) = fit(request)
    assert latency_fit.step_of(r.width) == k + 2 and r.resources["next_step"]["median_s"] > 2e-3


def test_a_slow_smallest_model_does_not_end_the_search(monkeypatch):
    # OpenVINO runs one-filter layers slower than a few filters: latency is not monotone at the bottom
    fake_clock(monkeypatch)
    fake_time = latency_fit.time_models

    def slow_floor(runtime, calls, rounds=None):
        return [
            R.Timing(t.median_s + (1.0 if t.median_s < 2e-5 else 0.0), 0.0, t.rounds)
            for t in fake_time(runtime, calls, rounds)
        ]

    monkeypatch.setattr(latency_fit, "time_models", slow_floor)
    (r,) = fit(FitRequest("vgg19", Budget("latency", 2e-3), ["base"], latency_tolerance=0.0))
    assert r.resources["latency"]["median_s"] <= 2e-3 < r.resources["next_step"]["median_s"]
