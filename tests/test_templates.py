"""The templates are pure arithmetic: exact published values plus properties over random models."""

from __future__ import annotations

import math
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from filter_templates.method import templates as T

VGG19 = [64, 64, 128, 128, 256, 256, 256, 256, 512, 512, 512, 512, 512, 512, 512, 512]

PUBLISHED = {
    "base": VGG19,
    "reverse": VGG19[::-1],
    "uniform": [344] * 16,
    "quadratic": [811, 624, 464, 331, 224, 144, 91, 64, 64, 91, 144, 224, 331, 464, 624, 811],
    "negative-quadratic": [64, 176, 272, 352, 416, 464, 496, 512, 512, 496, 464, 416, 352, 272, 176, 64],
}

bases = st.lists(st.integers(1, 2048), min_size=3, max_size=40)


@pytest.mark.parametrize("name", list(PUBLISHED))
def test_vgg19_published_counts(name):
    assert T.distribute(name, VGG19) == PUBLISHED[name]


def test_templates_module_is_free_of_torch():
    import subprocess

    code = "import sys, filter_templates.method.templates; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_quadratic_coefficients_use_d_over_2_squared():
    # f'(D/2) must equal f_min exactly with (D/2)^2; the misprinted D^2/2 would not give the published values.
    real = T.real_counts("quadratic", VGG19)
    a = (real[0] - 2 * real[1] + real[2]) / 2
    b = real[1] - real[0] - 3 * a
    c = real[0] - a - b
    assert math.isclose(a * 8**2 + b * 8 + c, 64, rel_tol=1e-12)


@settings(max_examples=150, deadline=None)
@given(bases, st.sampled_from(T.BUILTIN_TEMPLATES))
def test_total_kept_at_width_one(base, name):
    out = T.distribute(name, base)
    assert len(out) == len(base)
    if name == "quadratic" and min(T.real_counts(name, base)) < 0.5:
        return  # the floor lifts layers the parabola drove below 1: the total grows by design
    assert abs(sum(out) - sum(base)) <= len(base) / 2 + 1e-9


@settings(max_examples=150, deadline=None)
@given(
    bases, st.sampled_from(T.BUILTIN_TEMPLATES), st.floats(0.001, 4.0), st.integers(1, 16), st.sampled_from([1, 2, 8])
)
def test_every_count_at_least_floor_and_multiple_of_divisor(base, name, width, floor, divisor):
    out = T.distribute(name, base, width, floor=floor, divisor=divisor)
    assert all(c >= floor for c in out)
    assert all(c % divisor == 0 for c in out)


@given(bases)
def test_reverse_twice_is_identity(base):
    assert T.reverse(T.reverse(base)) == [float(c) for c in base]


@given(bases)
def test_uniform_is_constant(base):
    out = T.uniform(base)
    assert max(out) == min(out) == pytest.approx(sum(base) / len(base))


@settings(max_examples=150, deadline=None)
@given(bases)
def test_quadratics_symmetric_with_extreme_in_middle(base):
    for name, extreme in (("quadratic", min), ("negative-quadratic", max)):
        real = T.real_counts(name, base)
        d = len(real)
        for i in range(d):
            assert real[i] == pytest.approx(real[d - 1 - i], rel=1e-9, abs=1e-6)
        middle = real[(d - 1) // 2 : d // 2 + 1]
        assert extreme(real) == pytest.approx(extreme(middle), rel=1e-9, abs=1e-6)
        assert sum(real) == pytest.approx(sum(base), rel=1e-9)
    assert T.real_counts("negative-quadratic", base)[0] == pytest.approx(min(base))


def test_rounding_is_half_to_even_and_floor():
    assert T.scale_count(5, 0.5) == 2  # 2.5 -> 2
    assert T.scale_count(7, 0.5) == 4  # 3.5 -> 4
    assert T.scale_count(3, 0.01) == 1
    assert T.scale_count(3, 0.01, floor=4) == 4
    assert T.scale_count(100, 1.0, divisor=8) == 96
    assert T.scale_count(3, 1.0, divisor=8) == 8
    assert T.scale_count(3, 1.0, floor=9, divisor=8) == 16


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: T.distribute("nope", VGG19), "unknown template 'nope'"),
        (lambda: T.distribute("base", VGG19, 0), "positive finite"),
        (lambda: T.distribute("base", VGG19, -1.0), "positive finite"),
        (lambda: T.distribute("base", VGG19, float("nan")), "positive finite"),
        (lambda: T.distribute("base", VGG19, float("inf")), "positive finite"),
        (lambda: T.distribute("base", []), "empty"),
        (lambda: T.distribute("base", [64, 0, 3]), "positive"),
        (lambda: T.distribute("quadratic", [64, 128]), "at least 3"),
        (lambda: T.distribute("base", VGG19, floor=0), "floor"),
        (lambda: T.distribute("base", VGG19, divisor=0), "divisor"),
        (lambda: T.distribute([1.0, 2.0], VGG19), "gives 2 counts"),
        (lambda: T.distribute("1,2,x", VGG19), "explicit template"),
        (lambda: T.distribute(lambda b: [float("nan")] * len(b), VGG19), "non-finite"),
        (lambda: T.distribute(lambda b: [-1.0] * len(b), VGG19), "non-positive"),
        (lambda: T.distribute(lambda b: 1 / 0, VGG19), "ZeroDivisionError"),
        (lambda: T.distribute("os:nothing_here", VGG19), "cannot load"),
    ],
)
def test_bad_inputs_raise(call, match):
    with pytest.raises(T.TemplateError, match=match):
        call()


def test_register_function_and_list():
    T.register_template("double-last", lambda b: [*b[:-1], 2.0 * b[-1]])
    T.register_template("three", [1, 2, 3])
    try:
        assert "double-last" in T.template_names() and "three" in T.template_names()
        assert T.distribute("double-last", [4, 5, 6]) == [4, 5, 12]
        assert T.distribute("three", [9, 9, 9], 2.0) == [2, 4, 6]
        with pytest.raises(T.TemplateError, match="already registered"):
            T.register_template("three", [1, 2, 3])
        with pytest.raises(T.TemplateError, match="built in"):
            T.register_template("uniform", [1, 2, 3])
        with pytest.raises(T.TemplateError, match="non-positive"):
            T.register_template("bad", [1, 0, 3])
    finally:
        T.unregister_template("double-last")
        T.unregister_template("three")


def test_function_path_and_explicit_list_from_text():
    assert T.distribute("3,4.4,5", [1, 1, 1]) == [3, 4, 5]
    assert T.distribute("filter_templates.method.templates:uniform", [1, 2, 3]) == [2, 2, 2]
