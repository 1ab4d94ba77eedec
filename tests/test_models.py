"""The four model families: exact reference sizes, every template x width builds and runs, and the
block rules of SPEC 2.8 (GoogLeNet rescaling, MobileNet depthwise groups, ResNet projections).

Speed: a real forward pass of all 160 family x template x width models at 2x3x32x32 costs about
1.8 TFLOP (ResNet-50 with the reverse or quadratic template at width 1.6 alone is ~0.16 TFLOP), i.e.
20-40 s on a shared 2-core box. So by default every one of the 160 is built and run on a 2x3x32x32
batch, for real on the CPU at widths up to 0.5 and on PyTorch's ``meta`` device above (the same
constructor and forward code with exact shape checks, but no arithmetic); a real CPU forward also
runs on a subset that covers every family x template and every family x width; the full real grid
is the ``slow`` test ``test_every_width_real_forward``.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
from hypothesis import given, settings
from hypothesis import strategies as st

from filter_templates.core.errors import UsageError
from filter_templates.method.arch import make_arch
from filter_templates.method.measure import count_flops, count_params
from filter_templates.method.templates import BUILTIN_TEMPLATES, scale_count
from filter_templates.models import family_names, get_family
from filter_templates.models import googlenet as G
from filter_templates.models import mobilenet as M
from filter_templates.models import resnet as R

STUDY = ["vgg19", "resnet50", "googlenet", "mobilenet"]
VARIANT = {"resnet50": "resnet50-blocks", "googlenet": "googlenet-proportional", "mobilenet": "mobilenet-blocks"}
FAMILIES = [
    "vgg19",
    "resnet50",
    "resnet50-blocks",
    "googlenet",
    "googlenet-proportional",
    "mobilenet",
    "mobilenet-blocks",
]
WIDTHS = (0.05, 0.1, 0.25, 0.5, 0.8, 1.0, 1.3, 1.6)


def _both(d: dict) -> dict:
    """A study family's base model is also its variant's."""
    return {**d, **{VARIANT[k]: v for k, v in d.items() if k in VARIANT}}


# SPEC section 3: parameters at base template, w = 1, 10 classes; forward FLOPs per image.
PARAMS_10 = _both({"vgg19": 20_040_522, "resnet50": 23_520_842, "googlenet": 6_166_250, "mobilenet": 3_217_226})
CLASSIFIER_IN = _both({"vgg19": 512, "resnet50": 2048, "googlenet": 1024, "mobilenet": 1024})
SPEC_FLOPS = _both({"vgg19": 0.80e9, "resnet50": 2.60e9, "googlenet": 3.04e9, "mobilenet": 0.093e9})
BASE_FILTERS = {
    "vgg19": (64, 64, 128, 128, 256, 256, 256, 256, 512, 512, 512, 512, 512, 512, 512, 512),
    "resnet50": (64, 128, 256, 512),
    "resnet50-blocks": (64,) * 3 + (128,) * 4 + (256,) * 6 + (512,) * 3,
    "googlenet": tuple(x / 6 for x in (368, 640, 624, 648, 664, 704, 1024, 1024, 1264)),  # mean branch widths
    "googlenet-proportional": (256, 480, 512, 512, 512, 528, 832, 832, 1024),
    "mobilenet": (32, 64, 128, 128, 256, 256, 512, 512, 512, 512, 512, 512, 1024),
    "mobilenet-blocks": (64, 128, 128, 256, 256, 512, 512, 512, 512, 512, 512, 1024, 1024),
}

# Real CPU forwards: per family, every width once and every template at least once; the costly
# templates (reverse, quadratic) get the middle widths so the subset stays a few seconds.
REAL_SUBSET = list(
    zip(
        (1.6, 1.3, 1.0, 0.8, 0.5, 0.25, 0.1, 0.05),
        ("base", "negative-quadratic", "uniform", "reverse", "quadratic", "base", "negative-quadratic", "uniform"),
    )
)


def meta_build(family: str, filters, classes: int = 10, **kw) -> nn.Module:
    with torch.device("meta"):
        return get_family(family).build(filters, num_classes=classes, **kw)


def meta_forward(model: nn.Module) -> torch.Size:
    with torch.no_grad():
        return model(torch.empty(2, 3, 32, 32, device="meta")).shape


# --------------------------------------------------------------------------------------------
# Registry and reference sizes
# --------------------------------------------------------------------------------------------


def test_registry_order_and_base_filters():
    assert family_names() == FAMILIES
    for name in FAMILIES:
        fam = get_family(name)
        assert fam.base_filters == BASE_FILTERS[name]
        assert len(fam.layer_names) == fam.depth == len(set(fam.layer_names))


@pytest.mark.parametrize("family", FAMILIES)
def test_base_model_params_and_flops(family):
    model = make_arch(family).build()  # real CPU model, real initialisation
    assert count_params(model) == PARAMS_10[family]
    flops = count_flops(model)
    assert abs(flops - SPEC_FLOPS[family]) <= 0.05 * SPEC_FLOPS[family], flops


@pytest.mark.parametrize("family", FAMILIES)
def test_base_params_100_classes(family):
    expected = PARAMS_10[family] + 90 * (CLASSIFIER_IN[family] + 1)
    with torch.device("meta"):
        assert count_params(make_arch(family, classes=100).build()) == expected


@pytest.mark.parametrize("family", FAMILIES)
def test_wrong_filter_counts_are_refused(family):
    fam = get_family(family)
    with pytest.raises(UsageError, match="template layers"):
        fam.build(list(fam.base_filters) + [8])
    with pytest.raises(UsageError, match="template layers"):
        fam.build(list(fam.base_filters)[:-1])
    with pytest.raises(UsageError, match=">= 1"):
        fam.build([0] + list(fam.base_filters)[1:])


# --------------------------------------------------------------------------------------------
# Every family x template x width
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("template", BUILTIN_TEMPLATES)
@pytest.mark.parametrize("family", FAMILIES)
def test_every_width_builds_and_maps_a_batch(family, template):
    """All 8 widths. Widths up to 0.5 are built and run for real on the CPU (cheap); the wider
    ones on the meta device (same builder and forward code, exact shape checks, no arithmetic)."""
    x = torch.randn(2, 3, 32, 32)
    params = []
    with torch.no_grad():
        for width in WIDTHS:
            arch = make_arch(family, template, width, 10)
            if width <= 0.5:
                model = arch.build()
                y = model(x)
                assert torch.isfinite(y).all(), width
            else:
                with torch.device("meta"):
                    model = arch.build().eval()
                    y = model(x.to("meta"))
            assert y.shape == (2, 10), width
            params.append(count_params(model))
    # Integer rounding is monotone, so a wider model never has fewer parameters (SPEC 5 relies on it).
    assert params == sorted(params)


def test_meta_forward_does_check_channels():
    """The meta-device check above can fail: a channel mismatch raises as on CPU."""
    with torch.device("meta"):
        model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.Conv2d(7, 4, 3))
    with pytest.raises(RuntimeError):
        meta_forward(model)


@pytest.mark.parametrize("family", FAMILIES)
def test_real_forward_covers_every_template_and_width(family):
    assert {t for _, t in REAL_SUBSET} == set(BUILTIN_TEMPLATES) and {w for w, _ in REAL_SUBSET} == set(WIDTHS)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        for i, (width, template) in enumerate(REAL_SUBSET):
            classes = (10, 100)[i % 2]
            y = make_arch(family, template, width, classes).build()(x)
            assert y.shape == (2, classes) and torch.isfinite(y).all(), (width, template)


@pytest.mark.slow
@pytest.mark.parametrize("template", BUILTIN_TEMPLATES)
@pytest.mark.parametrize("family", FAMILIES)
def test_every_width_real_forward(family, template):
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        for width in WIDTHS:
            y = make_arch(family, template, width, 10).build()(x)
            assert y.shape == (2, 10), width


@settings(max_examples=20, deadline=None)
@given(data=st.data(), family=st.sampled_from(FAMILIES), stem=st.sampled_from([0.01, 0.5, 1.0, 2.0]))
def test_any_counts_from_one_up_build(data, family, stem):
    fam = get_family(family)
    filters = data.draw(st.lists(st.integers(1, 48), min_size=fam.depth, max_size=fam.depth))
    model = fam.build(filters, num_classes=7, stem_width=stem)
    with torch.no_grad():
        assert model(torch.randn(2, 3, 32, 32)).shape == (2, 7)


@pytest.mark.parametrize("family", FAMILIES)
def test_smallest_model_runs_for_real(family):
    model = get_family(family).build([1] * get_family(family).depth, num_classes=3, stem_width=0.001)
    with torch.no_grad():
        assert model(torch.randn(2, 3, 32, 32)).shape == (2, 3)


# --------------------------------------------------------------------------------------------
# Stems (non-template layers)
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "family, stem, attr",
    [
        ("resnet50-blocks", 64, "conv1"),
        ("googlenet-proportional", 192, "pre_layers.0"),
        ("mobilenet-blocks", 32, "conv1"),
    ],
)
@pytest.mark.parametrize("width, divisor", [(1.0, 1), (0.5, 1), (0.05, 1), (1.3, 1), (0.05, 8), (0.3, 8)])
def test_stem_scaled_like_template_layers(family, stem, attr, width, divisor):
    model = meta_build(family, get_family(family).base_filters, stem_width=width, divisor=divisor)
    conv = model.get_submodule(attr)
    assert conv.out_channels == scale_count(stem, width, divisor=divisor)
    assert conv.out_channels % divisor == 0


# --------------------------------------------------------------------------------------------
# GoogLeNet: inner widths scaled by f'_l / f_l
# --------------------------------------------------------------------------------------------


def inception_modules(model: nn.Module) -> list[G.Inception]:
    return [m for m in model.modules() if isinstance(m, G.Inception)]


def conv_widths(m: G.Inception) -> G.Widths:
    """Read the widths back from the conv weights, not from the module's own record."""
    return G.Widths(
        m.b1[0].out_channels,
        m.b2[0].out_channels,
        m.b2[3].out_channels,
        m.b3[0].out_channels,
        m.b3[3].out_channels,
        m.b4[1].out_channels,
    )


def test_googlenet_base_is_the_original():
    modules = inception_modules(meta_build("googlenet-proportional", G.BASE))
    assert [conv_widths(m) for m in modules] == list(G.MODULES)
    assert G.MODULES[0] == (64, 96, 128, 16, 32, 32) and G.MODULES[-1] == (384, 192, 384, 48, 128, 128)
    ins = [m.b1[0].in_channels for m in modules]
    assert ins == [192, 256, 480, 512, 512, 512, 528, 832, 832]
    assert all(m.b3[3].out_channels == m.b3[6].in_channels == m.b3[6].out_channels for m in modules)


def test_googlenet_half_ratio_halves_every_inner_width():
    filters = [f // 2 for f in G.BASE]
    modules = inception_modules(meta_build("googlenet-proportional", filters))
    for base, m in zip(G.MODULES, modules):
        halved = G.Widths(*(scale_count(w, 0.5) for w in base))
        assert conv_widths(m) == halved
    assert conv_widths(modules[0]) == (32, 48, 64, 8, 16, 16)
    assert conv_widths(modules[3]) == (80, 56, 112, 12, 32, 32)  # b4: 24 -> 12


def test_googlenet_realised_output_feeds_the_next_module():
    filters = list(G.BASE)
    filters[0] = 100  # ratio 100/256: 64->25, 96->38 (37.5, half to even), 128->50, 16->6, 32->12 (12.5), 32->12
    model = meta_build("googlenet-proportional", filters)
    a3, b3 = inception_modules(model)[:2]
    assert conv_widths(a3) == (25, 38, 50, 6, 12, 12)
    assert a3.out_channels == model.outputs[0] == 99  # not 100: rounding of the four branches
    assert b3.b1[0].in_channels == b3.b2[0].in_channels == b3.b3[0].in_channels == b3.b4[1].in_channels == 99
    assert meta_forward(model) == (2, 10)


@pytest.mark.parametrize("family", ["googlenet", "googlenet-proportional"])
def test_googlenet_divisor_applies_to_inner_widths(family):
    arch = make_arch(family, "quadratic", 0.37, divisor=8)
    with torch.device("meta"):
        model = arch.build()
    for m in inception_modules(model):
        assert all(w % 8 == 0 and w >= 8 for w in conv_widths(m))
    assert model.get_submodule("pre_layers.0").out_channels % 8 == 0


# --------------------------------------------------------------------------------------------
# MobileNet: depthwise groups follow the previous block's width
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("family", ["mobilenet", "mobilenet-blocks"])
@pytest.mark.parametrize("template", ["base", "quadratic"])
def test_mobilenet_depthwise_groups(family, template):
    arch = make_arch(family, template, 0.8)
    with torch.device("meta"):
        model = arch.build()
    blocks = [m for m in model.modules() if isinstance(m, M.Block)]
    assert len(blocks) == 13
    c_in = model.conv1.out_channels
    outputs = arch.widths[1:] if family == "mobilenet" else arch.filters
    for i, (b, c) in enumerate(zip(blocks, outputs)):
        dw, pw = b.conv1, b.conv2
        assert dw.groups == dw.in_channels == dw.out_channels == c_in
        assert dw.weight.shape == (c_in, 1, 3, 3) and dw.kernel_size == (3, 3)
        assert dw.stride == ((2, 2) if i in (1, 3, 5, 11) else (1, 1))
        assert pw.groups == 1 and pw.kernel_size == (1, 1) and pw.out_channels == c
        c_in = c
    assert model.linear.in_features == outputs[-1]


# --------------------------------------------------------------------------------------------
# ResNet: projection shortcuts exactly where widths differ or the block downsamples
# --------------------------------------------------------------------------------------------


def projections(model: nn.Module) -> list[int]:
    blocks = [m for m in model.modules() if isinstance(m, R.Bottleneck)]
    assert len(blocks) == 16
    for b in blocks:  # the rule, checked on every block
        c_in, c_out, stride = b.conv1.in_channels, b.conv3.out_channels, b.conv2.stride
        assert isinstance(b.shortcut, nn.Identity) == (stride == (1, 1) and c_in == c_out)
        assert c_out == 4 * b.conv1.out_channels
    return [i for i, b in enumerate(blocks) if not isinstance(b.shortcut, nn.Identity)]


def test_resnet_projections_base_and_uniform():
    assert projections(meta_build("resnet50-blocks", R.BASE)) == [0, 3, 7, 13]
    # uniform: 236 planes everywhere -> only the first block (stem 64 -> 944) and the three strides
    with torch.device("meta"):
        uniform = make_arch("resnet50", "uniform").build()
    assert projections(uniform) == [0, 3, 7, 13]


def test_resnet_projections_wherever_widths_change():
    filters = [64, 64, 32, 128, 128, 128, 100, 256, 256, 256, 256, 256, 300, 512, 512, 512]
    assert projections(meta_build("resnet50-blocks", filters)) == [0, 2, 3, 6, 7, 12, 13]
    # a stem already 4x the first block's planes needs no projection at block 0
    assert projections(meta_build("resnet50-blocks", [16] * 16, stem_width=1.0)) == [3, 7, 13]
    assert projections(meta_build("resnet50-blocks", [8] * 16, stem_width=1.0)) == [0, 3, 7, 13]
    assert projections(meta_build("resnet50-blocks", [8] * 16, stem_width=0.5)) == [3, 7, 13]


@settings(max_examples=20, deadline=None)
@given(st.lists(st.integers(1, 48), min_size=16, max_size=16), st.sampled_from([0.1, 0.25, 1.0]))
def test_resnet_projection_rule_any_counts(filters, stem):
    model = get_family("resnet50-blocks").build(filters, stem_width=stem)
    projections(model)
    with torch.no_grad():
        assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_floor_reaches_stems_and_googlenet_inner_widths():
    """`--floor` is part of the one rounding rule, so non-template layers obey it too."""
    from filter_templates.method.arch import make_arch

    for family in FAMILIES[1:]:
        model = make_arch(family, "uniform", 0.001, floor=4).build()
        convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
        assert min(c.out_channels for c in convs) >= 4, family
        assert convs[0].out_channels == 4, family  # the stem: round(0.001 * base) lifted to the floor
