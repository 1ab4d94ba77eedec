"""What real zoos do, each on a small network written for it: grouped convolutions, channel chunks
and shuffles, channel padding, forwards that branch on ``self.training``, convolution subclasses,
``zeros_like``; and what stays refused, in one line naming the op."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from filter_templates.core.errors import UsageError
from filter_templates.method.arch import make_arch
from filter_templates.method.templates import BUILTIN_TEMPLATES
from filter_templates.models import get_family, resolve_model


def _name(cls: type) -> str:
    return f"tests.test_reach:{cls.__name__}"


def _every_template_runs(name: str, width: float = 0.6) -> list[nn.Module]:
    fam = get_family(name)
    models = []
    for t in [t for t in BUILTIN_TEMPLATES if fam.depth >= 3 or "quadratic" not in t]:
        model = make_arch(name, t, width).build().train()
        model(torch.randn(2, 3, 32, 32)).sum().backward()
        models.append(model)
    return models


class Grouped(nn.Module):
    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, padding=1)
        self.g = nn.Conv2d(16, 32, 3, padding=1, groups=4)
        self.fc = nn.Linear(32, num_classes)

    def forward(self, x):
        return self.fc(F.relu(self.g(F.relu(self.stem(x)))).mean((2, 3)))


def test_grouped_convolution_keeps_its_groups_and_widths_divide_by_them():
    name = resolve_model(Grouped, name=_name(Grouped))
    for model in _every_template_runs(name, 0.3):
        assert model.g.groups == 4 and model.g.in_channels % 4 == 0 and model.g.out_channels % 4 == 0


class Shuffled(nn.Module):
    """ShuffleNetV2's unit: two branches concatenated, shuffled, split in half again."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, padding=1)
        self.left, self.right = nn.Conv2d(16, 8, 1), nn.Conv2d(16, 8, 1)
        self.branch = nn.Conv2d(8, 8, 3, padding=1)
        self.fc = nn.Linear(16, num_classes)

    def forward(self, x):
        x = torch.cat([self.left(self.stem(x)), self.right(self.stem(x))], 1)
        n, c, h, w = x.size()
        x = x.view(n, 2, c // 2, h, w).transpose(1, 2).contiguous().view(n, c, h, w)
        a, b = torch.chunk(x, 2, dim=1)
        x = torch.cat([a, F.relu(self.branch(b))], 1)
        return self.fc(x.mean((2, 3)))


def test_channel_shuffle_and_chunks_tie_the_parts_they_mix():
    name = resolve_model(Shuffled, name=_name(Shuffled), reading="groups")
    fam = get_family(name)
    assert fam.base_filters == (16, 8, 8)  # the shuffle ties both branches into one width
    for model in _every_template_runs(name):
        assert model.left.out_channels == model.right.out_channels == model.branch.in_channels


class Padded(nn.Module):
    """PyramidNet's shortcut: the identity zero-padded in channels to the block's wider output."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.body = nn.Conv2d(8, 12, 3, padding=1)
        self.fc = nn.Linear(12, num_classes)

    def forward(self, x):
        x = self.stem(x)
        return self.fc((self.body(x) + F.pad(x, (0, 0, 0, 0, 0, 4))).mean((2, 3)))


def test_channel_padding_is_a_part_of_the_sum():
    name = resolve_model(Padded, name=_name(Padded), reading="groups")
    assert get_family(name).base_filters == (8, 4)  # the stream and its padding; the body is their sum
    for model in _every_template_runs(name):
        assert (
            model.body.out_channels
            == model.stem.out_channels + model.graph.find_nodes(op="call_function", target=F.pad)[0].args[1][5]
        )


class _Twice(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return x * 2

    @staticmethod
    def backward(ctx, g):
        return g * 2


class Block(nn.Module):
    """Stochastic depth with a custom autograd function: only in training, as zoos write it."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(8, 16, 1), nn.ReLU(), nn.Conv2d(16, 8, 1))

    def forward(self, x):
        y = self.body(x)
        if self.training:
            keep = float(torch.rand(1) > 0.5)
            y = _Twice.apply(y) * keep
        return x + y


class DropPath(nn.Module):
    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.block = Block()
        self.fc = nn.Linear(8, num_classes)

    def forward(self, x):
        return self.fc(self.block(self.stem(x)).mean((2, 3)))


def test_training_branch_runs_as_written_in_a_copy_of_the_users_module():
    name = resolve_model(DropPath, name=_name(DropPath))
    fam = get_family(name)
    assert fam.base_filters == (8,)  # one stage: the stream with the block's inner 2x expansion
    for t in ("base", "uniform"):
        model = make_arch(name, t, 3.0).build()
        assert type(model) is DropPath  # the user's class, its forward and autograd function
        assert model.block.body[0].out_channels == 2 * model.stem.out_channels == 48
        model.train()(torch.randn(2, 3, 16, 16)).sum().backward()
        assert model.eval()(torch.randn(2, 3, 16, 16)).shape == (2, 10)


class HardCoded(DropPath):
    def forward(self, x):
        y = self.block(self.stem(x))
        if self.training:
            y = y * 2
        return self.fc(y.mean((2, 3)).view(-1, 8))


def test_training_branch_with_sizes_written_in_is_refused_in_one_line():
    with pytest.raises(UsageError, match="other widths, does not run.*training and evaluation") as info:
        resolve_model(HardCoded, name=_name(HardCoded))
    assert "\n" not in str(info.value)


class MaskedConv(nn.Conv2d):
    """A convolution subclass using its own weight in F.conv2d (weight standardisation, masks)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, scale: float = 0.5, **kwargs) -> None:
        super().__init__(in_channels, out_channels, kernel_size, **kwargs)
        self.scale = scale

    def forward(self, x):
        w = self.weight - self.weight.mean((1, 2, 3), keepdim=True)
        return F.conv2d(x, w * self.scale, self.bias, self.stride, self.padding)


class OwnConv(nn.Module):
    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.a = MaskedConv(3, 8, 3, padding=1)
        self.b = MaskedConv(8, 16, 3, padding=1, scale=2.0)
        self.fc = nn.Linear(32, num_classes)

    def forward(self, x):
        x = self.b(F.relu(self.a(x)))
        shortcut = torch.cat([x[:, :, :, :], torch.zeros_like(x)], 1)  # the 1-bit WRN's zero shortcut
        return self.fc(shortcut.mean((2, 3)))


def test_conv_subclass_is_rebuilt_as_its_own_class():
    name = resolve_model(OwnConv, name=_name(OwnConv))
    for model in _every_template_runs(name):
        assert type(model.b) is MaskedConv and model.b.scale == 2.0 and model.b.padding == (1, 1)
        assert model.fc.in_features == 2 * model.b.out_channels  # zeros_like: as wide as its input


class RandomColumns(Grouped):
    def forward(self, x):
        n = int(x.size(0) * 0.5)  # FractalNet: a Python int of a traced size
        return self.fc(self.g(self.stem(x))[:n].mean((2, 3)))


def test_what_fx_cannot_trace_stays_refused_in_one_line():
    with pytest.raises(UsageError, match="cannot trace") as info:
        resolve_model(RandomColumns, name=_name(RandomColumns))
    assert "\n" not in str(info.value)
