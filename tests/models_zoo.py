"""Plain networks for the generic (any CNN) path: importable as ``tests.models_zoo:<name>`` from the
repository root, e.g. ``filter-templates templates --model tests.models_zoo:resnet18``."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from filter_templates.method.arch import make_arch


# -- ResNet-18 style: basic blocks, projection shortcuts ------------------------------------------
class BasicBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.shortcut = nn.Sequential()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out += self.shortcut(x)
        return F.relu(out)


class ResNet18(nn.Module):
    def __init__(self, num_classes: int = 10, widths: tuple[int, ...] = (64, 128, 256, 512)) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, widths[0], 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        layers, c = [], widths[0]
        for i, w in enumerate(widths):
            layers.append(nn.Sequential(BasicBlock(c, w, 1 if i == 0 else 2), BasicBlock(w, w)))
            c = w
        self.layer1, self.layer2, self.layer3, self.layer4 = layers
        self.linear = nn.Linear(c, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        out = F.adaptive_avg_pool2d(out, 1)
        return self.linear(out.view(out.size(0), -1))


def resnet18(num_classes: int = 10) -> nn.Module:
    return ResNet18(num_classes)


def resnet18_small(num_classes: int = 10) -> nn.Module:
    """ResNet-18 at a quarter of the widths: the same groups, quick to train in tests."""
    return ResNet18(num_classes, (16, 32, 64, 128))


# -- Inception-style concatenation ------------------------------------------------------------------
class Inception(nn.Module):
    def __init__(self, c_in: int, b1: int, b3r: int, b3: int, bp: int) -> None:
        super().__init__()
        self.b1 = nn.Sequential(nn.Conv2d(c_in, b1, 1), nn.BatchNorm2d(b1), nn.ReLU(True))
        self.b3 = nn.Sequential(
            nn.Conv2d(c_in, b3r, 1),
            nn.BatchNorm2d(b3r),
            nn.ReLU(True),
            nn.Conv2d(b3r, b3, 3, padding=1),
            nn.BatchNorm2d(b3),
            nn.ReLU(True),
        )
        self.bp = nn.Sequential(nn.MaxPool2d(3, 1, 1), nn.Conv2d(c_in, bp, 1), nn.BatchNorm2d(bp), nn.ReLU(True))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.b1(x), self.b3(x), self.bp(x)], 1)


class InceptionNet(nn.Module):
    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 32, 3, padding=1, bias=False), nn.BatchNorm2d(32), nn.ReLU(True))
        self.a = Inception(32, 16, 16, 32, 16)  # 64 out
        self.pool = nn.MaxPool2d(2)
        self.b = Inception(64, 32, 32, 48, 16)  # 96 out
        self.mix = nn.BatchNorm2d(96)  # a norm over the concatenation: sees the sum
        self.fc = nn.Linear(96, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.b(self.pool(self.a(self.stem(x))))
        x = F.relu(self.mix(x))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


def inception(num_classes: int = 10) -> nn.Module:
    return InceptionNet(num_classes)


# -- depthwise-separable --------------------------------------------------------------------------
def depthwise(num_classes: int = 10) -> nn.Module:
    def block(c_in: int, c_out: int, stride: int) -> nn.Sequential:
        return nn.Sequential(
            nn.Conv2d(c_in, c_in, 3, stride, 1, groups=c_in, bias=False),
            nn.BatchNorm2d(c_in),
            nn.ReLU6(inplace=True),
            nn.Conv2d(c_in, c_out, 1, bias=False),
            nn.BatchNorm2d(c_out),
            nn.ReLU6(inplace=True),
        )

    return nn.Sequential(
        nn.Conv2d(3, 16, 3, 1, 1, bias=False),
        nn.BatchNorm2d(16),
        nn.ReLU6(inplace=True),
        block(16, 32, 2),
        block(32, 64, 2),
        block(64, 64, 1),
        block(64, 128, 2),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Dropout(0.2),
        nn.Linear(128, num_classes),
    )


# -- classifier after flatten of a 2x2 map ----------------------------------------------------------
class Flat2x2(nn.Module):
    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(3, 16, 3, padding=1)
        self.c2 = nn.Conv2d(16, 32, 3, padding=1)
        self.c3 = nn.Conv2d(32, 64, 3, padding=1)
        self.fc1 = nn.Linear(64 * 2 * 2, 100)
        self.fc2 = nn.Linear(100, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(F.relu(self.c1(x)), 4)  # 8x8
        x = F.max_pool2d(F.relu(self.c2(x)), 2)  # 4x4
        x = F.max_pool2d(F.relu(self.c3(x)), 2)  # 2x2
        x = x.view(-1, 64 * 2 * 2)  # a hard-coded size: rewritten to flatten(x, 1) in templated models
        x = F.dropout(F.relu(self.fc1(x)), 0.5, self.training)
        return self.fc2(x)


def flat2x2(num_classes: int = 10) -> nn.Module:
    return Flat2x2(num_classes)


# -- the built-in families' base models, as plain modules (oracles) --------------------------------
def vgg19(num_classes: int = 10) -> nn.Module:
    from filter_templates.models import get_family

    fam = get_family("vgg19")
    return fam.build(fam.base_filters, num_classes=num_classes)


class _DWBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_in, 3, stride, 1, groups=c_in, bias=False)
        self.bn1 = nn.BatchNorm2d(c_in)
        self.conv2 = nn.Conv2d(c_in, c_out, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x))))))


class MobileNetV1(nn.Module):
    """MobileNet v1 (CIFAR) at its base widths, written independently of the built-in family: conv
    stem 32, 13 depthwise-separable blocks 64 .. 1024 1024 (stride 2 at blocks 2, 4, 6, 12)."""

    CFG = (64, 128, 128, 256, 256, 512, 512, 512, 512, 512, 512, 1024, 1024)

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 32, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(32)
        blocks, c = [], 32
        for i, w in enumerate(self.CFG):
            blocks.append(_DWBlock(c, w, 2 if i in (1, 3, 5, 11) else 1))
            c = w
        self.layers = nn.Sequential(*blocks)
        self.linear = nn.Linear(c, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.layers(F.relu(self.bn1(self.conv1(x))))
        return self.linear(torch.flatten(F.adaptive_avg_pool2d(y, 1), 1))


def mobilenet(num_classes: int = 10) -> nn.Module:
    return MobileNetV1(num_classes)


# -- refusals -------------------------------------------------------------------------------------
class Rolled(nn.Module):
    """Shifts channels with torch.roll: an op the discovery cannot reason about."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 16, 3, padding=1)
        self.fc = nn.Linear(16, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.roll(self.conv(x), 1, dims=1)
        return self.fc(x.mean((2, 3)))


def rolled(num_classes: int = 10) -> nn.Module:
    return Rolled(num_classes)


# -- the study's own families, read as user networks ------------------------------------------------
def resnet50_study(num_classes: int = 10) -> nn.Module:
    return make_arch("resnet50", "base", classes=num_classes).build()


def googlenet_study(num_classes: int = 10) -> nn.Module:
    return make_arch("googlenet-proportional", "base", classes=num_classes).build()


def mobilenet_study(num_classes: int = 10) -> nn.Module:
    return make_arch("mobilenet", "base", classes=num_classes).build()
