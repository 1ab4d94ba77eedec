"""Muon for BatchNorm-fed convolutions, SGD for the rest (filter_templates.training.muon)."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from filter_templates.core.errors import UsageError
from filter_templates.method.arch import make_arch
from filter_templates.training import muon
from filter_templates.training.config import TrainConfig
from filter_templates.training.recipe import OptimizerSettings, make_optimizer


@pytest.mark.parametrize("shape", [(16, 27), (64, 16), (128, 1152)])
def test_orthogonalize_gives_singular_values_near_one(shape):
    g = torch.randn(*shape, generator=torch.Generator().manual_seed(0))
    g[:, 0] *= 50  # badly conditioned on purpose: plain normalisation would leave one direction dominant
    x = muon.orthogonalize(g)
    s = torch.linalg.svdvals(x)
    assert x.shape == g.shape and s.min() > 0.5 and s.max() < 1.3


def _conv_bn_relu() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1, groups=8),
        nn.BatchNorm2d(8),  # depthwise: SGD
        nn.Conv2d(8, 4, 1),
        nn.ReLU(),  # no BatchNorm after it: its scale matters, SGD
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(4, 3),
    )


def test_only_ordinary_convolutions_that_feed_a_batchnorm_take_muon():
    model = _conv_bn_relu()
    assert [id(p) for p in muon.muon_parameters(model)] == [id(model[0].weight)]
    vgg = make_arch("vgg19", "base", 0.1, 10).build()
    assert len(muon.muon_parameters(vgg)) == 16  # every conv of VGG-19 feeds a BatchNorm
    mobile = make_arch("mobilenet", "base", 0.1, 10).build()
    chosen = {id(p) for p in muon.muon_parameters(mobile)}
    for m in mobile.modules():
        if isinstance(m, nn.Conv2d):
            assert (id(m.weight) in chosen) == (m.groups == 1)


class _Untraceable(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv, self.bn = nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)

    def forward(self, x):
        if x.sum() > 0:  # data-dependent control flow: torch.fx cannot trace it
            x = -x
        return self.bn(self.conv(x))


def test_untraceable_model_is_refused_with_one_clear_error():
    with pytest.raises(UsageError, match="optimizer 'muon' needs a model torch.fx can trace"):
        muon.muon_parameters(_Untraceable())
    make_optimizer(_Untraceable(), OptimizerSettings(0.1, 0.9, 1e-4, True, False))  # plain SGD needs no tracing


def test_other_parameters_step_exactly_as_torch_sgd():
    torch.manual_seed(0)
    a = nn.Linear(5, 3)
    b = copy.deepcopy(a)
    kw = dict(lr=0.1, momentum=0.9, weight_decay=1e-3, nesterov=True)
    ours, ref = muon.Muon(a.parameters(), **kw), torch.optim.SGD(b.parameters(), **kw)
    for _ in range(4):
        x = torch.randn(7, 5)
        for model, opt in ((a, ours), (b, ref)):
            opt.zero_grad()
            model(x).square().sum().backward()
            opt.step()
    for p, q in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(p, q, rtol=0, atol=1e-7)


def test_muon_step_sets_the_weight_scale_and_moves_it_by_about_lr():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 16, 3), nn.BatchNorm2d(16), nn.Flatten(), nn.LazyLinear(2))
    model(torch.randn(2, 3, 8, 8))
    lr = 0.01
    opt = make_optimizer(model, OptimizerSettings(0.1, 0.9, 0.0, True, False, "muon", lr))
    assert [g["muon"] for g in opt.param_groups][-1] and opt.param_groups[0]["lr"] == 0.1  # SGD's lr shows first
    w = model[0].weight
    F.cross_entropy(model(torch.randn(4, 3, 8, 8)), torch.tensor([0, 1, 0, 1])).backward()
    before = w.detach().clone()
    opt.step()
    normalised = before * (16**0.5 / before.norm())
    step = (w.detach() - normalised).flatten(1)  # (16, 27): a semi-orthogonal matrix times lr
    assert step.norm() == pytest.approx(lr * 16**0.5, rel=0.35)
    assert torch.linalg.svdvals(step / lr).max() < 1.3


def test_optimizer_fields_are_validated():
    arch = make_arch("vgg19", "uniform", 0.05, 10)
    with pytest.raises(UsageError, match="'optimizer' must be one of sgd, muon"):
        TrainConfig(arch=arch, optimizer="adam")
    with pytest.raises(UsageError, match="muon_lr"):
        TrainConfig(arch=arch, optimizer="muon", muon_lr=0)
    assert TrainConfig(arch=arch, optimizer="muon", muon_lr=1).muon_lr == 1.0


# ---- records written before the optimizer fields existed ---------------------------------------


def _config(**kw) -> TrainConfig:
    kw.setdefault("optimizer", "sgd")  # whatever the recipe's default is
    return TrainConfig(
        arch=make_arch("vgg19", "uniform", 0.05, 10),
        dataset="digits",
        limit_train=128,
        limit_test=64,
        batch_size=32,
        epochs=2,
        precision="fp32",
        **kw,
    )


def _older(d: dict) -> dict:
    return {k: v for k, v in d.items() if k not in ("optimizer", "muon_lr")}


def test_sgd_points_keep_the_key_they_had_before_the_optimizer_fields():
    from filter_templates.sweep.store import point_key

    sgd, mu = _config().to_dict(), _config(optimizer="muon").to_dict()
    assert point_key(sgd) == point_key(_older(sgd))  # an older store's finished points still match
    assert point_key({**sgd, "muon_lr": 0.5}) == point_key(sgd)  # no Muon step: its lr changes nothing
    assert point_key(mu) != point_key(sgd) and point_key({**mu, "muon_lr": 0.5}) != point_key(mu)


def test_whole_older_record_reads_as_sgd_whatever_the_recipe_says(monkeypatch):
    from filter_templates.training import config

    older = _older(_config().to_dict())
    monkeypatch.setitem(config.RECIPES["fast"], "optimizer", "muon")
    assert TrainConfig.from_dict(older).optimizer == "sgd"  # the run it describes took SGD steps
    assert TrainConfig.from_dict({"arch": older["arch"]}).optimizer == "muon"  # a partial one: the recipe's


def test_checkpoint_from_before_the_optimizer_fields_resumes_under_sgd_only(tmp_path):
    from filter_templates.core import rundir
    from filter_templates.training.loop import train

    class Stop(Exception):
        pass

    def stop(row):
        raise Stop

    out = tmp_path / "run"
    with pytest.raises(Stop):
        train(_config(), out, on_epoch=stop)
    state = rundir.load_checkpoint(out / "checkpoint.pt")
    state["config"] = _older(state["config"])
    torch.save(state, out / "checkpoint.pt")
    with pytest.raises(UsageError, match=r"optimizer \(checkpoint None, now 'muon'\)"):
        train(_config(optimizer="muon"), out, resume=True)
    assert train(_config(), out, resume=True)["status"] == "done"
