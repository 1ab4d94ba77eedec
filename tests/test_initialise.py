"""The fast recipe's initialisations: patch whitening of the input convolution, identity elsewhere."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from filter_templates.cli import main
from filter_templates.data import load_data
from filter_templates.method.arch import make_arch
from filter_templates.training import initialise
from filter_templates.training.config import TrainConfig, experiment
from filter_templates.training.loop import _initialise, train


def _correlated_images(n: int = 64, c: int = 3, size: int = 12) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, c, size, size, generator=g)
    x = F.avg_pool2d(x, 3, stride=1, padding=1)  # neighbouring pixels correlate, as in photographs
    return x + 0.5 * x.mean(1, keepdim=True)  # and so do the channels


def test_whitened_filters_decorrelate_the_patches_they_were_measured_on():
    x = _correlated_images()
    conv = nn.Conv2d(3, 54, 3)  # 27-long patches: 27 pairs fill all 54 filters
    eigenvalues = initialise.whiten(conv, x.split(16))
    assert eigenvalues.shape == (27,) and bool((eigenvalues[:-1] >= eigenvalues[1:]).all())
    y = F.conv2d(x, conv.weight, conv.bias)[:, :27]  # the "+" half
    flat = y.permute(0, 2, 3, 1).reshape(-1, 27).double()
    cov = flat.T @ flat / len(flat)
    shrink = eigenvalues.double() / (eigenvalues.double() + initialise.WHITEN_EPS)
    assert torch.allclose(cov, torch.diag(shrink), atol=2e-3)
    assert torch.equal(conv.weight[27:], -conv.weight[:27]) and bool((conv.bias == 0).all())


def test_whitening_keeps_the_leading_pairs_when_filters_are_few_and_leaves_extra_filters_alone():
    x = _correlated_images()
    few = nn.Conv2d(3, 5, 3)
    initialise.whiten(few, [x])
    assert torch.equal(few.weight[3:5], -few.weight[0:2])  # 3 pairs, the last one's "-" half cut off
    many = nn.Conv2d(3, 10, 1)  # 3-long patches: 6 filters whitened, 4 kept
    before = many.weight.detach().clone()
    initialise.whiten(many, [x])
    assert torch.equal(many.weight[6:], before[6:]) and not torch.equal(many.weight[:6], before[:6])
    with pytest.raises(ValueError, match="one group"):
        initialise.whiten(nn.Conv2d(4, 4, 3, groups=2), [torch.zeros(1, 4, 5, 5)])


def test_input_convolution_is_the_one_that_reads_the_input_and_moves_no_statistics():
    model = make_arch("vgg19", "uniform", 0.1, 10).build().train()
    x = torch.randn(2, 3, 32, 32)
    stats = [b.clone() for b in model.buffers()]
    assert initialise.input_convolution(model, x) is model.features[0]
    assert model.training and all(torch.equal(a, b) for a, b in zip(stats, model.buffers()))

    class Scaled(nn.Module):  # transforms its input before any convolution sees it
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.conv(x * 2)

    assert initialise.input_convolution(Scaled(), x) is None


def test_a_model_without_an_input_convolution_is_left_as_built_with_a_note(capsys):
    class Scaled(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.conv(x * 2)

    model = Scaled()
    before = model.conv.weight.detach().clone()
    _initialise(model, _digits_config(whiten_init=True, identity_init=False), load_data("digits", limit_train=64))
    assert torch.equal(model.conv.weight, before)
    assert "whiten_init: no one-group convolution reads the model's input directly" in capsys.readouterr().err


def test_identity_start_adds_the_input_to_what_a_convolution_made_where_it_can():
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.Conv2d(8, 8, 3, padding=1),
        nn.Conv2d(8, 16, 1),
        nn.Conv2d(16, 8, 3, padding=1),  # fewer outputs: left
        nn.Conv2d(8, 8, 3, padding=1, groups=8),
        nn.Conv2d(8, 8, 2),
    )  # depthwise, even: left
    before = [m.weight.detach().clone() for m in model]
    assert initialise.identity(model, skip=model[0]) == 2
    assert torch.equal(model[0].weight, before[0])
    x = torch.randn(2, 8, 6, 6)
    own = F.conv2d(x, before[1], model[1].bias, padding=1)
    assert torch.allclose(model[1](x), own + x, atol=1e-5)  # the identity on top of the model's own filters
    own = F.conv2d(x, before[2], model[2].bias)
    assert torch.allclose(model[2](x)[:, :8], own[:, :8] + x, atol=1e-5)
    assert torch.equal(model[2].weight[8:], before[2][8:])  # the filters beyond in_channels keep their start
    assert all(torch.equal(model[i].weight, before[i]) for i in (3, 4, 5))


def _digits_sample(n: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    from filter_templates.data.augment import Loader, LoaderOptions

    ds = load_data("digits", limit_train=n)
    return next(
        iter(
            Loader(
                ds.train_x,
                ds.train_y,
                n,
                train=False,
                mean=ds.mean,
                std=ds.std,
                options=LoaderOptions(channels_last=False),
            )
        )
    )


def test_whitening_gives_no_filter_to_directions_grey_images_lack():
    """The digits are grey images stored as RGB: 9 of a 3x3 patch's 27 directions carry variance.
    A whitened filter on one of the other 18 answers only with rounding, in fp32 and far more in
    bf16, and the BatchNorm after it would make that rounding a channel of its own."""
    x, _ = _digits_sample()
    conv = nn.Conv2d(3, 64, 3, padding=1)
    before = conv.weight.detach().clone()
    eigenvalues = initialise.whiten(conv, [x])
    assert len(eigenvalues) <= 9 and bool((eigenvalues >= initialise.WHITEN_FLOOR * eigenvalues[0]).all())
    n = 2 * len(eigenvalues)
    assert torch.equal(conv.weight[n:], before[n:])  # the rest keep the model's start
    with torch.no_grad():
        fp32 = conv(x)[:, :n]
        with torch.autocast("cpu", dtype=torch.bfloat16):
            bf16 = conv(x)[:, :n].float()
    signal = fp32.std(dim=(0, 2, 3))
    noise = (bf16 - fp32).std(dim=(0, 2, 3))
    assert bool((signal > 0.3).all())  # every whitened filter sees the images
    assert bool((noise < 0.5 * signal).all())  # and bf16 rounding does not drown it


def test_the_fast_starts_keep_the_gradient_of_a_deep_plain_net_in_scale_on_digits():
    """VGG-19 with both starts on the digits: one backward pass. With convolutions that were only
    the identity, each channel ran alone through 15 ReLU(BatchNorm(.)) and the gradient of the
    second convolution came out 3e4 times its weights."""
    x, y = _digits_sample()
    model = make_arch("vgg19", "uniform", 0.1, 10).build()
    _initialise(model, _digits_config(whiten_init=True, identity_init=True), load_data("digits"))
    model.train()
    F.cross_entropy(model(x), y).backward()
    ratios = [(m.weight.grad.norm() / m.weight.norm()).item() for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert max(ratios) < 5, [f"{r:.2g}" for r in ratios]


def _digits_config(**kw) -> TrainConfig:
    kw = {"epochs": 1, **kw}
    return TrainConfig(
        arch=make_arch("vgg19", "uniform", 0.05, 10),
        dataset="digits",
        limit_train=128,
        limit_test=64,
        batch_size=32,
        precision="fp32",
        memory_format="contiguous",
        **kw,
    )


def test_the_initialisation_draws_no_random_numbers_and_changes_only_convolutions():
    ds = load_data("digits", limit_train=128, limit_test=64)
    torch.manual_seed(0)
    plain = _digits_config().arch.build()
    torch.manual_seed(0)
    model = _digits_config().arch.build()
    rng = torch.get_rng_state()
    _initialise(model, _digits_config(whiten_init=True, identity_init=True), ds)
    assert torch.equal(torch.get_rng_state(), rng)  # the data order and later draws do not depend on it
    changed = {
        name for (name, a), (_, b) in zip(model.named_parameters(), plain.named_parameters()) if not torch.equal(a, b)
    }
    assert "features.0.weight" in changed and "features.3.weight" in changed
    assert all(
        name.startswith("features.") and isinstance(model.get_submodule(name.rsplit(".", 1)[0]), nn.Conv2d)
        for name in changed
    )
    torch.manual_seed(0)
    untouched = _digits_config().arch.build()
    _initialise(untouched, _digits_config(whiten_init=False, identity_init=False), ds)
    assert all(torch.equal(a, b) for a, b in zip(untouched.parameters(), plain.parameters()))


def test_the_fields_reach_config_json_and_the_experiment_identity(tmp_path, capsys, monkeypatch):
    calls = []
    for name in ("whiten", "identity"):
        real = getattr(initialise, name)
        monkeypatch.setattr(
            initialise, name, lambda *a, _real=real, _name=name, **k: calls.append(_name) or _real(*a, **k)
        )
    from filter_templates.training.config import RECIPES

    paper = _digits_config(recipe="paper")
    assert (paper.whiten_init, paper.identity_init) == (False, False)  # the study's start
    fast = _digits_config(whiten_init=True, identity_init=True)
    assert [getattr(_digits_config(), k) for k in ("whiten_init", "identity_init")] == [
        RECIPES["fast"][k] for k in ("whiten_init", "identity_init")
    ]
    off = _digits_config(whiten_init=False, identity_init=False).to_dict()
    older = {k: v for k, v in off.items() if k not in ("whiten_init", "identity_init")}
    assert experiment(off) == experiment(older)  # runs from before the fields keep their sweep key and checkpoint
    assert experiment(fast.to_dict()) != experiment(off)
    assert TrainConfig.from_dict(older).whiten_init is False  # a whole older record: the start it had
    with pytest.raises(Exception, match="whiten_init"):
        _digits_config(whiten_init="yes")
    common = [
        "train",
        "--model",
        "vgg19",
        "--template",
        "uniform",
        "--width",
        "0.05",
        "--epochs",
        "1",
        "--limit-train",
        "64",
        "--limit-test",
        "32",
        "--batch-size",
        "32",
        "--threads",
        "1",
        "--json",
    ]
    assert main([*common, "--no-whiten-init", "--identity-init", "--out", str(tmp_path / "a")]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert (doc["config"]["whiten_init"], doc["config"]["identity_init"]) == (False, True)
    assert calls == ["identity"]  # train() applied what the config says, once
    assert json.loads((tmp_path / "a" / "config.json").read_text())["whiten_init"] is False


def test_a_resumed_run_with_the_initialisation_continues_bit_for_bit(tmp_path):
    class Stop(Exception):
        pass

    def stop(row):
        raise Stop

    config = _digits_config(epochs=2)
    whole = train(config, tmp_path / "whole")
    with pytest.raises(Stop):
        train(config, tmp_path / "cut", on_epoch=stop)
    resumed = train(config, tmp_path / "cut", resume=True)
    assert resumed["final_acc"] == whole["final_acc"]
    a = torch.load(tmp_path / "whole" / "model.pt", weights_only=True)
    b = torch.load(tmp_path / "cut" / "model.pt", weights_only=True)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_the_identity_start_keeps_out_of_residual_networks_and_untraceable_ones(capsys):
    ds = load_data("digits", limit_train=64)
    assert initialise.has_residual_sum(make_arch("vgg19", "base", 0.05, 10).build()) is False
    assert initialise.has_residual_sum(make_arch("mobilenet", "base", 0.05, 10).build()) is False
    resnet = make_arch("resnet50", "base", 0.05, 10).build()
    assert initialise.has_residual_sum(resnet) is True
    before = {k: v.clone() for k, v in resnet.state_dict().items()}
    _initialise(resnet, _digits_config(whiten_init=False, identity_init=True), ds)
    assert all(torch.equal(v, before[k]) for k, v in resnet.state_dict().items())  # its shortcut is the identity path

    class Untraceable(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b = nn.Conv2d(3, 4, 3, padding=1), nn.Conv2d(4, 4, 3, padding=1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = self.a(x)
            return self.b(y) if y.sum() > 0 else y  # data-dependent control flow: fx cannot trace it

    model = Untraceable()
    before_b = model.b.weight.detach().clone()
    assert initialise.has_residual_sum(model) is None
    _initialise(model, _digits_config(whiten_init=False, identity_init=True), ds)
    assert torch.equal(model.b.weight, before_b)
    assert "identity_init: torch.fx cannot trace the model" in capsys.readouterr().err
