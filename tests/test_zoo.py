"""Real third-party networks (pytorchcv's CIFAR and ImageNet models, timm's and torchvision's
classification models) read, templated, built at a quarter width, run forward and backward, and a
few of them trained. They are installed with ``pip install --no-deps pytorchcv timm torchvision``;
without them these tests skip."""

from __future__ import annotations

import importlib
import json

import pytest
import torch
import zoo_imports  # tests/ is on sys.path

from filter_templates.cli import main
from filter_templates.core.errors import UsageError
from filter_templates.export import load_run_model, run_image_size
from filter_templates.method.arch import make_arch
from filter_templates.method.measure import count_params
from filter_templates.method.templates import BUILTIN_TEMPLATES
from filter_templates.models import get_family, resolve_model

CIFAR = {  # model -> pytorchcv module; each as its _cifar10 variant, at 32 px
    "resnet20": "resnet_cifar",
    "resnet164bn": "resnet_cifar",
    "preresnet20": "preresnet_cifar",
    "seresnet20": "seresnet_cifar",
    "sepreresnet20": "sepreresnet_cifar",
    "densenet40_k12": "densenet_cifar",
    "xdensenet40_2_k24_bc": "xdensenet_cifar",
    "wrn16_10": "wrn_cifar",
    "resnext29_32x4d": "resnext_cifar",
    "pyramidnet110_a48": "pyramidnet_cifar",
    "nin": "nin_cifar",
    "ror3_56": "ror_cifar",
    "rir": "rir_cifar",
    "diaresnet20": "diaresnet_cifar",
    "shakeshakeresnet20_2x16d": "shakeshakeresnet_cifar",
    "shakedropresnet20": "shakedropresnet_cifar",
    "resdropresnet20": "resdropresnet_cifar",
    "fractalnet": "fractalnet_cifar",
    "wrn20_10_1bit": "wrn1bit_cifar",
}
IMAGENET = {  # model -> (pytorchcv module, the smallest input its own pooling takes)
    "mobilenetv2_w1": ("mobilenetv2", 224),
    "mobilenetv3_large_w1": ("mobilenetv3", 224),
    "efficientnet_b0": ("efficientnet", 64),
    "shufflenetv2_w1": ("shufflenetv2", 224),
    "mnasnet_b1": ("mnasnet", 224),
    "ghostnet": ("ghostnet", 224),
    "regnetx002": ("regnet", 64),
    "densenet121": ("densenet", 224),
    "squeezenet_v1_1": ("squeezenet", 224),
    "resnet18": ("resnet", 224),
    "mobilenet_w1": ("mobilenet", 224),
    "darknet53": ("darknet53", 224),
    "vgg11": ("vgg", 224),
}
REFUSED = {"fractalnet"}  # its forward takes int() of a traced size: fx cannot trace it
FAST = {
    "resnet20",
    "preresnet20",
    "seresnet20",
    "sepreresnet20",
    "resnext29_32x4d",
    "diaresnet20",
    "shakeshakeresnet20_2x16d",
    "shakedropresnet20",
    "resdropresnet20",
}  # the default suite's share

MODELS = [(f"pytorchcv.models.{m}:{n}_cifar10", 32, n) for n, m in CIFAR.items()] + [
    (f"pytorchcv.models.{m}:{n}", size, n) for n, (m, size) in IMAGENET.items()
]


def _param(path: str, size: int, short: str):
    return pytest.param(path, size, id=short, marks=() if short in FAST or short in REFUSED else pytest.mark.slow)


@pytest.mark.parametrize("path, size", [_param(*m) for m in MODELS if m[2] not in REFUSED])
def test_zoo_model_is_templated_and_every_template_runs(path, size):
    pytest.importorskip("pytorchcv")
    name = resolve_model(path, image_size=size)
    fam = get_family(name, size)
    uniform = make_arch(name, "uniform", 1.0, image_size=size)
    assert abs(sum(uniform.filters) - sum(fam.base_filters)) <= fam.depth  # the reading's total, up to rounding
    for t in [t for t in BUILTIN_TEMPLATES if fam.depth >= 3 or "quadratic" not in t]:
        torch.manual_seed(0)
        model = make_arch(name, t, 0.25, image_size=size).build().train()
        out = model(torch.randn(2, 3, size, size))
        assert out.shape == (2, 10), t
        out.sum().backward()
        assert all(p.grad is None or torch.isfinite(p.grad).all() for p in model.parameters()), t


@pytest.mark.parametrize("path, size", [_param(*m) for m in MODELS if m[2] in REFUSED])
def test_what_stays_refused_says_why_in_one_line(path, size, capsys):
    pytest.importorskip("pytorchcv")
    with pytest.raises(UsageError, match="cannot trace"):
        resolve_model(path, image_size=size)
    assert main(["templates", "--model", path, "--json"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "Traceback" not in err


@pytest.mark.slow
@pytest.mark.parametrize("short", ["resnet20", "seresnet20"])
def test_zoo_model_trains_one_epoch_on_digits_above_chance(short, tmp_path):
    pytest.importorskip("pytorchcv")
    path = f"pytorchcv.models.{CIFAR[short]}:{short}_cifar10"
    assert (
        main(
            [
                "train",
                "--model",
                path,
                "--template",
                "uniform",
                "--width",
                "0.5",
                "--dataset",
                "digits",
                "--epochs",
                "1",
                "--seed",
                "0",
                "--out",
                str(tmp_path / short),
            ]
        )
        == 0
    )
    summary = json.loads((tmp_path / short / "summary.json").read_text())
    assert summary["final_acc"] > 0.2  # ten classes: chance is 0.1


# -- timm and torchvision: the networks users bring (tests/zoo_imports.py lists them) ----------------

ZOO_FAST = {  # the default suite's share: a few seconds each
    "timm.models.mobilenetv3:lcnet_050",
    "timm.models.regnet:regnetx_002",
    "timm.models.convnext:convnext_atto",
    "torchvision.models:mobilenet_v3_small",
    "torchvision.models:squeezenet1_1",
}
ZOO_REFUSED = {  # model -> what its one-line refusal says
    "timm.models.efficientvit_mit:efficientvit_b0": "reshapes",  # attention heads cut from the channels
    "torchvision.models:inception_v3": "at least",  # its auxiliary head needs more than 96 px in training
}


def _zoo_param(path: str):
    return pytest.param(
        path,
        id=path.replace("timm.models.", "timm:").replace("torchvision.models:", "tv:"),
        marks=() if path in ZOO_FAST else pytest.mark.slow,
    )


def _skip_missing(path: str) -> None:
    why = zoo_imports.missing(path)
    if why:
        pytest.skip(why)


def _original(path: str) -> torch.nn.Module:
    module, _, fn = path.partition(":")
    return getattr(zoo_imports.zoo_module(path), fn)(num_classes=10)


@pytest.mark.parametrize("path", [_zoo_param(p) for p in zoo_imports.MODELS if p not in ZOO_REFUSED])
def test_zoo_network_base_is_the_original_and_a_quarter_width_trains(path):
    _skip_missing(path)
    size = zoo_imports.image_size(path)
    name = resolve_model(path, image_size=size)
    base = make_arch(name, "base", 1.0, image_size=size).build()
    original = _original(path)
    # a copy of the user's module, its own forward; its traced graph where that forward has channel
    # counts written into it (GhostNet's slice, Res2Net's split: rewritten in the graph)
    assert type(base) is type(original) or isinstance(base, torch.fx.GraphModule)
    assert count_params(base) == count_params(original)
    torch.manual_seed(0)
    model = make_arch(name, "uniform", 0.25, image_size=size).build().train()
    out = model(torch.randn(2, 3, size, size))
    logits = out[0] if isinstance(out, tuple) else out
    assert logits.shape == (2, 10)
    logits.sum().backward()
    assert all(p.grad is None or torch.isfinite(p.grad).all() for p in model.parameters())


@pytest.mark.slow
@pytest.mark.parametrize("path", sorted(ZOO_REFUSED))
def test_zoo_network_refused_in_one_line_naming_why(path, capsys):
    _skip_missing(path)
    size = zoo_imports.image_size(path)
    assert main(["templates", "--model", path, "--json", "--image-size", str(size)]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert ZOO_REFUSED[path] in err and "Traceback" not in err


def _layers(path: str, size: int = zoo_imports.IMAGE_SIZE, fixed: tuple[str, ...] = ()) -> tuple[int, ...]:
    _skip_missing(path)
    return get_family(resolve_model(path, image_size=size, fixed=fixed), size).base_filters


@pytest.mark.slow
def test_zoo_readings_resnet50_stages_and_densenet_blocks():
    assert _layers("timm.models.resnet:resnet50", fixed=("conv1",)) == (256, 512, 1024, 2048)
    assert len(_layers("torchvision.models:densenet121")) <= 8  # stem, four dense blocks, three transitions


@pytest.mark.slow
def test_zoo_efficientnet_keeps_expansion_and_se_ratios_at_every_template():
    path = "timm.models.efficientnet:efficientnet_b0"
    _skip_missing(path)
    name = resolve_model(path, image_size=64)
    original = _original(path)
    for t in BUILTIN_TEMPLATES:
        model = make_arch(name, t, 1.0, image_size=64).build()
        for (_, ref), (where, block) in zip(_blocks(original), _blocks(model)):
            c_in = block.conv_dw.in_channels if not hasattr(block, "conv_pwl") else block.conv_pw.in_channels
            ref_in = ref.conv_dw.in_channels if not hasattr(ref, "conv_pwl") else ref.conv_pw.in_channels
            ratio = ref.conv_dw.out_channels / ref_in
            assert abs(block.conv_dw.out_channels - ratio * c_in) <= 1, (t, where)
            se = ref.se.conv_reduce.out_channels / ref.conv_dw.out_channels
            assert abs(block.se.conv_reduce.out_channels - se * block.conv_dw.out_channels) <= 1, (t, where)


def _blocks(model: torch.nn.Module) -> list[tuple[str, torch.nn.Module]]:
    return [(f"blocks.{i}.{j}", b) for i, stage in enumerate(model.blocks) for j, b in enumerate(stage)]


def test_zoo_torchvision_imports_without_its_cpp_operators():
    path = "torchvision.models:resnet18"
    _skip_missing(path)
    tv = zoo_imports.zoo_module(path)
    assert tv.resnet18(num_classes=10).eval()(torch.zeros(1, 3, 32, 32)).shape == (1, 10)
    ops = importlib.import_module("torchvision.ops")
    if not importlib.import_module("torchvision.extension")._has_ops():  # nothing is hidden: nms still fails
        with pytest.raises(RuntimeError):
            ops.nms(torch.rand(3, 4), torch.rand(3), 0.5)


def test_a_forward_making_a_cpu_tensor_is_counted_on_a_real_model(capsys):
    pytest.importorskip("pytorchcv")
    path = "pytorchcv.models.xdensenet_cifar:xdensenet40_2_k24_bc_cifar10"
    assert main(["templates", "--model", path, "--json"]) == 0
    assert all(t["flops"] > 0 for t in json.loads(capsys.readouterr().out)["templates"])


@pytest.mark.slow
@pytest.mark.parametrize("path", ["timm.models.efficientnet:efficientnet_b0", "timm.models.convnext:convnext_atto"])
def test_zoo_reduce_finishes_every_template_and_exports_the_winner_to_onnx(path, tmp_path, capsys):
    _skip_missing(path)
    ort = pytest.importorskip("onnxruntime")
    out = tmp_path / "R1"
    argv = ["reduce", "--model", path, "--budget", "params=500K", "--dataset", "digits", "--epochs", "1"]
    assert main([*argv, "--out", str(out)]) == 0
    runs = sorted((out / "runs").iterdir())
    assert len(runs) == len(BUILTIN_TEMPLATES)
    assert all(json.loads((r / "summary.json").read_text())["status"] == "done" for r in runs)
    exported = [r for r in runs if (r / "model.onnx").exists()]
    assert len(exported) == 1
    model, _ = load_run_model(exported[0])
    x = torch.randn(4, 3, run_image_size(exported[0]), run_image_size(exported[0]))
    with torch.no_grad():
        ref = model.eval()(x)
    session = ort.InferenceSession(str(exported[0] / "model.onnx"), providers=["CPUExecutionProvider"])
    got = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
    assert abs(got - ref.numpy()).max() < 1e-4
