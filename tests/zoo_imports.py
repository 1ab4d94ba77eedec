"""The timm and torchvision networks the zoo tests and ``benchmarks/zoo_reach.py`` template, and the
one way they import those zoos.

Both zoos are optional and installed ``--no-deps`` (``.ci/run``). PyPI's torchvision wheel is built
against a CUDA torch; beside the CPU-only torch its C++ operators do not load and a plain
``import torchvision`` fails (timm imports torchvision, so timm fails too). Tests import a zoo
through :func:`zoo_module`, which uses the package's own
:func:`filter_templates.models.torchvision_ops.import_module`, the same path ``--model`` takes: it
declares the two operator schemas torchvision registers without checking, and nothing else (see
that module). A zoo that is not installed is reported by :func:`missing`, so tests skip cleanly.
"""

from __future__ import annotations

import importlib.util
from types import ModuleType

from filter_templates.models.torchvision_ops import import_module

TIMM = [
    "resnet:resnet18",
    "resnet:resnet50",
    "resnet:resnext50_32x4d",
    "resnet:seresnet50",
    "efficientnet:efficientnet_b0",
    "mobilenetv3:mobilenetv3_large_100",
    "efficientnet:mobilenetv2_100",
    "regnet:regnetx_002",
    "regnet:regnety_004",
    "convnext:convnext_atto",
    "densenet:densenet121",
    "ghostnet:ghostnet_100",
    "rexnet:rexnet_100",
    "dla:dla34",
    "dpn:dpn68",
    "hrnet:hrnet_w18_small",
    "cspnet:cspresnet50",
    "byobnet:repvgg_a0",
    "byobnet:mobileone_s0",
    "efficientvit_mit:efficientvit_b0",
    "vgg:vgg11",
    "inception_v3:inception_v3",
    "xception_aligned:xception41",
    "efficientnet:fbnetc_100",
    "efficientnet:mnasnet_100",
    "efficientnet:tinynet_a",
    "mobilenetv3:lcnet_050",
    "res2net:res2net50_26w_4s",
    "selecsls:selecsls42b",
    "nfnet:nfnet_l0",
    "nfnet:eca_nfnet_l0",
    "resnetv2:resnetv2_50",
]
TORCHVISION = [
    "resnet18",
    "mobilenet_v3_small",
    "efficientnet_b0",
    "regnet_x_400mf",
    "shufflenet_v2_x0_5",
    "convnext_tiny",
    "densenet121",
    "squeezenet1_1",
    "mnasnet0_5",
    "googlenet",
    "inception_v3",
]
MODELS = [f"timm.models.{m}" for m in TIMM] + [f"torchvision.models:{m}" for m in TORCHVISION]
IMAGE_SIZE = 64  # the side every model is templated at, but inception_v3 (its stem needs 75 px)
INCEPTION_SIZE = 96


def zoo(path: str) -> str:
    """``timm`` or ``torchvision``: the package a model path comes from."""
    return path.partition(".")[0]


def image_size(path: str) -> int:
    return INCEPTION_SIZE if path.endswith(":inception_v3") else IMAGE_SIZE


def missing(path: str) -> str | None:
    """Why the zoo of ``path`` cannot be used here (a skip reason), or None."""
    name = zoo(path)
    needs = [name] + (["torchvision"] if name == "timm" else [])
    absent = [n for n in needs if importlib.util.find_spec(n) is None]
    return f"{' and '.join(absent)} not installed (pip install --no-deps timm torchvision)" if absent else None


def zoo_module(path: str) -> ModuleType:
    """The module a model path names, imported the way ``--model`` imports it."""
    return import_module(path.partition(":")[0])
