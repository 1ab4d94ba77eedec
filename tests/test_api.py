"""The package's front door: every exported name imports, and the Python API works on model objects
(a module, a callable, a model path, a built-in family) the way the commands do."""

from __future__ import annotations

import contextlib
import io
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import filter_templates as ft
from filter_templates.cli import main
from filter_templates.core.errors import UsageError
from filter_templates.method.fit import parse_budget
from filter_templates.sweep.options import EngineOptions
from tests.models_zoo import ResNet18, resnet18_small

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("name", ft.__all__)
def test_every_exported_name_imports(name):
    assert getattr(ft, name) is not None
    assert name in dir(ft)


def test_star_import_and_a_fresh_interpreter():
    """``from filter_templates import *`` in a new process binds every name, and a plain ``import
    filter_templates`` loads no torch (the CLI imports the package before it parses a command)."""
    code = (
        "import sys\nimport filter_templates\nassert 'torch' not in sys.modules, 'torch imported'\n"
        "from filter_templates import *\nimport filter_templates as ft\n"
        "missing = [n for n in ft.__all__ if n not in globals()]\nassert not missing, missing\n"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def test_reduce_stays_the_function_when_its_module_is_imported():
    import filter_templates.reduction as module  # importing a submodule binds its name on the package

    assert ft.reduce is module.reduce and callable(ft.reduce)


def test_unknown_name_is_an_attribute_error():
    with pytest.raises(AttributeError, match="no attribute 'make_arc'"):
        ft.make_arc  # noqa: B018


def test_apply_template_on_a_module_object():
    """A network object at a template and width: a fresh model of its shape that runs at its input
    size, keeping the network's own class count."""
    net = ResNet18(num_classes=7)
    model = ft.apply_template(net, "uniform", 0.5, image_size=64)
    assert isinstance(model, torch.nn.Module) and model is not net
    assert sum(p.numel() for p in model.parameters()) < sum(p.numel() for p in net.parameters())
    with torch.no_grad():
        assert model(torch.randn(2, 3, 64, 64)).shape == (2, 7)
    assert ft.apply_template(net, "uniform", 0.5, image_size=64, classes=3)(torch.randn(1, 3, 64, 64)).shape == (1, 3)


def test_apply_template_takes_every_way_of_naming_a_model():
    """A callable, a model path and a built-in family build what make_arch builds for them."""

    def count(m: torch.nn.Module) -> int:
        return sum(p.numel() for p in m.parameters())

    by_callable = ft.apply_template(resnet18_small, "quadratic", 0.25, divisor=4, floor=8)
    by_path = ft.apply_template("tests.models_zoo:resnet18_small", "quadratic", 0.25, divisor=4, floor=8)
    assert count(by_callable) == count(by_path)
    convs = [m.out_channels for m in by_path.modules() if isinstance(m, torch.nn.Conv2d)]
    assert all(c % 4 == 0 and c >= 8 for c in convs)
    builtin = ft.apply_template("vgg19", "base", 0.25)
    assert count(builtin) == count(ft.make_arch("vgg19", "base", 0.25).build())


def test_apply_template_refuses_bad_input_with_a_usage_error():
    with pytest.raises(UsageError, match="reading"):
        ft.apply_template("vgg19", "base", 0.5, reading="groups")
    with pytest.raises(UsageError, match="unknown model"):
        ft.apply_template("vgg91", "base", 0.5)
    with pytest.raises(UsageError, match="width"):
        ft.apply_template(resnet18_small, "base", -1.0)


def test_fit_budget_is_what_fit_json_prints():
    """One fit per template, each within the budget, and the same fits the command prints."""
    budget = "params=200K"
    fits = ft.fit_budget("vgg19", budget)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(["fit", "--model", "vgg19", "--budget", budget, "--json"]) == 0
    assert fits == json.loads(out.getvalue())["fits"]
    assert [f["template"] for f in fits] == ft.template_names()
    assert all(f["params"] <= parse_budget(budget).value for f in fits)


def test_fit_budget_on_a_module_object():
    fits = ft.fit_budget(ResNet18(), "params=1M", templates=["base", "uniform"], image_size=64)
    assert [f["template"] for f in fits] == ["base", "uniform"]
    assert all(0 < f["params"] <= 1_000_000 for f in fits)


def test_a_zoo_network():
    """A network from a model zoo (pytorchcv's ResNet-18 with adaptive pooling): templated at 64 px,
    it runs a [2, 3, 64, 64] batch, and every template fits a 1M-parameter budget."""
    resneta = pytest.importorskip("pytorchcv.models.resneta", reason="pytorchcv is not installed")
    net = resneta.resneta18(num_classes=10)
    model = ft.apply_template(net, "uniform", 0.5, image_size=64)
    with torch.no_grad():
        assert model(torch.randn(2, 3, 64, 64)).shape == (2, 10)
    fits = ft.fit_budget(net, "params=1M", image_size=64)
    assert [f["template"] for f in fits] == ft.template_names()
    assert all(f["params"] <= 1_000_000 for f in fits)


def test_reduce_refuses_an_object_it_would_train_in_other_processes(tmp_path):
    request = ft.ReduceRequest(
        ResNet18(), "params=100K", "digits", out=tmp_path / "r", engine=EngineOptions(jobs=2), report=False
    )
    with pytest.raises(UsageError, match="in this process"):
        ft.reduce(request)
    assert not (tmp_path / "r" / "results.sqlite").exists()
