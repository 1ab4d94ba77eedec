"""How a user's network is read into template layers: ``groups`` (every free channel group) and
``modules`` (one template layer per stage or multi-branch module, the paper's reading)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from filter_templates.cli import main
from filter_templates.method.arch import make_arch
from filter_templates.method.templates import BUILTIN_TEMPLATES
from filter_templates.models import generic, get_family, resolve_model

# The groups reading's base counts, pinned: every free channel group is one template layer.
GROUPS_PINNED = {
    "tests.models_zoo:resnet18": (64, 64, 64, 128, 128, 128, 256, 256, 256, 512, 512, 512),
    "tests.models_zoo:inception": (32, 16, 16, 32, 16, 32, 32, 48, 16),
    "tests.models_zoo:mobilenet_study": (32, 64, 128, 128, 256, 256, 512, 512, 512, 512, 512, 512, 1024, 1024),
    "tests.models_zoo:resnet50_study": (
        64,
        64,
        64,
        256,
        64,
        64,
        64,
        64,
        128,
        128,
        512,
        128,
        128,
        128,
        128,
        128,
        128,
        256,
        256,
        1024,
        256,
        256,
        256,
        256,
        256,
        256,
        256,
        256,
        256,
        256,
        512,
        512,
        2048,
        512,
        512,
        512,
        512,
    ),
}


@pytest.mark.parametrize("path", sorted(GROUPS_PINNED))
def test_groups_reading_keeps_its_counts(path):
    fam = generic.generic_family(generic.load_model(path, reading="groups"))
    assert fam.base_filters == GROUPS_PINNED[path]


def _convs(model: nn.Module) -> dict[str, nn.Conv2d]:
    return {n: m for n, m in model.named_modules() if isinstance(m, nn.Conv2d)}


def test_modules_reading_of_the_study_resnet50_is_its_four_stages():
    name = resolve_model("tests.models_zoo:resnet50_study", fixed=["conv1"])
    fam = get_family(name)
    assert fam.base_filters == (256, 512, 1024, 2048) and fam.depth == get_family("resnet50").depth
    for t in BUILTIN_TEMPLATES:
        mine, ref = make_arch(name, t, 0.5), make_arch("resnet50", t, 0.5)
        assert all(abs(f / 4 - p) <= 1 for f, p in zip(mine.filters, ref.filters)), t
        with torch.device("meta"):
            convs = _convs(mine.build())
        for stage, f in zip((0, 3, 7, 13), mine.filters):  # a stage's first block: planes = output / 4
            assert convs[f"layers.{stage}.conv3"].out_channels == f, t
            assert convs[f"layers.{stage}.conv1"].out_channels == round(f / 4), t
    uniform = make_arch(name, "uniform", 1.0)
    assert sum(uniform.filters) == pytest.approx(sum(fam.base_filters), abs=len(fam.base_filters))


def test_modules_reading_of_the_study_googlenet_is_its_nine_modules():
    name = resolve_model("tests.models_zoo:googlenet_study", fixed=["pre_layers"])
    fam = get_family(name)
    assert fam.base_filters == get_family("googlenet-proportional").base_filters
    for t in BUILTIN_TEMPLATES:
        mine, ref = make_arch(name, t, 1.0), make_arch("googlenet-proportional", t, 1.0)
        with torch.device("meta"):
            model = mine.build()
        outs = [
            sum(model.get_submodule(f"features.{i}.{b}").out_channels for b in ("b1.0", "b2.3", "b3.3", "b4.1"))
            for i in (0, 1, 3, 4, 5, 6, 7, 9, 10)
        ]
        assert all(abs(o - f) <= 2 for o, f in zip(outs, ref.filters)), (t, outs, ref.filters)


def test_fix_of_a_stream_keeps_its_stage_whole_and_groups_reading_is_finer():
    groups = get_family(resolve_model("tests.models_zoo:resnet18", reading="groups"))
    modules = get_family(resolve_model("tests.models_zoo:resnet18"))
    assert modules.base_filters == (64, 128, 256, 512)  # the stem adds into stage 1: one width
    assert set(modules.layer_modules[1]) == {m for g in groups.layer_modules[3:6] for m in g}


def test_se_squeeze_keeps_its_reduction_under_the_modules_reading():
    pytest.importorskip("pytorchcv")
    name = resolve_model("pytorchcv.models.seresnet_cifar:seresnet20_cifar10")
    fam = get_family(name)
    assert fam.depth == 3 and fam.base_filters == (16, 32, 64)
    for t in BUILTIN_TEMPLATES:
        arch = make_arch(name, t, 1.0)
        with torch.device("meta"):
            convs = _convs(arch.build())
        for stage, f in enumerate(arch.filters, start=1):
            squeeze = convs[f"features.stage{stage}.unit2.se.conv1"].out_channels
            assert abs(squeeze - f / 16) <= 1, (t, stage, f, squeeze)


@pytest.mark.parametrize(
    "argv",
    [
        ["templates", "--model", "tests.models_zoo:resnet18", "--reading", "blocks"],
        ["templates", "--model", "tests.models_zoo:resnet18", "--fix", "nowhere"],
        ["templates", "--model", "tests.models_zoo:rolled"],
        ["templates", "--model", "resnet50", "--reading", "groups"],
    ],
)
def test_bad_reading_input_is_one_line_and_exit_2(argv, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err and "\n" not in err and "Traceback" not in err
    assert not list(tmp_path.iterdir())
