"""Real third-party networks (pytorchcv's CIFAR and ImageNet models) read, templated, built at a
quarter width, run forward and backward, and two of them trained. pytorchcv is installed with
``pip install --no-deps pytorchcv``; without it these tests skip."""

from __future__ import annotations

import json

import pytest
import torch

from filter_templates.cli import main
from filter_templates.core.errors import UsageError
from filter_templates.method.arch import make_arch
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
