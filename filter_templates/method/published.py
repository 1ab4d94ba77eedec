"""The study's own configurations and its published parameter counts.

Literal data from the study's training code (repository ``izquierdocr/distributed-training-apex-pytorch``,
``models/*.py``, method ``_set_filters``) and its Table 2. ``--as-published`` builds these lists, scaled by
the study's rounding ``max(1, int(w * f))``; every other cell of the tool follows the equations of
``templates.py``. Kept torch-free: it is data.

Where the study's code ships a list that its equations do not give, the list here is the
one whose parameter count matches the published table:

- vgg19 quadratic: ends pinned at the base maximum (512), total kept; the equations give 811 ... 811.
- resnet50 uniform: 200 per stage; the equations give 240.
- mobilenet uniform and negative-quadratic: the study's earlier configurations (kept in comments in its
  file), 14 values covering the stem and all 13 blocks, the last block included.
"""

from __future__ import annotations

from typing import Optional, Sequence

__all__ = ["STUDY", "PUBLISHED_PARAMS", "UNREPRODUCED", "study_families", "study_config"]

_VGG_BASE = (64, 64, 128, 128, 256, 256, 256, 256, 512, 512, 512, 512, 512, 512, 512, 512)

# GoogLeNet rows: the six branch widths (1x1, 3x3-reduce, 3x3, 5x5-reduce, 5x5, pool projection) of the
# nine modules a3 b3 a4 b4 c4 d4 e4 a5 b5; the study's row also starts with the module's input width,
# of which only the first (the stem) is used once its code chains the modules.
_G_BASE = (
    (64, 96, 128, 16, 32, 32),
    (128, 128, 192, 32, 96, 64),
    (192, 96, 208, 16, 48, 64),
    (160, 112, 224, 24, 64, 64),
    (128, 128, 256, 24, 64, 64),
    (112, 144, 288, 32, 64, 64),
    (256, 160, 320, 32, 128, 128),
    (256, 160, 320, 32, 128, 128),
    (384, 192, 384, 48, 128, 128),
)


def _googlenet(stem: int, rows: Sequence[Sequence[int]]) -> tuple[int, ...]:
    return (stem, *(w for row in rows for w in row))


def _even(values: Sequence[int]) -> tuple[tuple[int, ...], ...]:
    return tuple((v,) * 6 for v in values)


# family -> template -> the study's widths at w = 1. vgg19 and resnet50: one value per template layer.
# mobilenet: stem + 13 blocks (its cfg). googlenet: stem + 9 x 6 branch widths.
STUDY: dict[str, dict[str, tuple[int, ...]]] = {
    "vgg19": {
        "base": _VGG_BASE,
        "reverse": tuple(reversed(_VGG_BASE)),
        "uniform": (344,) * 16,
        "quadratic": (512, 445, 387, 339, 301, 272, 253, 243, 243, 253, 272, 301, 339, 387, 445, 512),
        "negative-quadratic": (64, 176, 272, 352, 416, 464, 496, 512, 512, 496, 464, 416, 352, 272, 176, 64),
    },
    "resnet50": {
        "base": (64, 128, 256, 512),
        "reverse": (512, 256, 128, 64),
        "uniform": (200, 200, 200, 200),
        "quadratic": (416, 64, 64, 416),
        "negative-quadratic": (64, 416, 416, 64),
    },
    "googlenet": {
        "base": _googlenet(192, _G_BASE),
        "reverse": _googlenet(832, tuple(reversed(_G_BASE))),
        "uniform": _googlenet(128, _even((128,) * 9)),
        "quadratic": _googlenet(227, _even((227, 154, 101, 69, 59, 69, 101, 154, 227))),
        "negative-quadratic": _googlenet(61, _even((61, 112, 148, 170, 177, 170, 148, 112, 61))),
    },
    "mobilenet": {
        "base": (32, 64, 128, 128, 256, 256, 512, 512, 512, 512, 512, 512, 1024, 1024),
        "reverse": (1024, 512, 512, 512, 512, 512, 512, 256, 256, 128, 128, 64, 32, 1024),
        "uniform": (467,) * 14,
        "quadratic": (941, 661, 432, 254, 127, 51, 26, 51, 127, 254, 432, 661, 941, 1024),
        "negative-quadratic": (32, 218, 376, 505, 605, 720, 735, 720, 677, 605, 505, 376, 218, 32),
    },
}

# Table 2 of the study: parameters in millions, CIFAR-10 (10 classes).
PUBLISHED_PARAMS: dict[str, dict[str, float]] = {
    "vgg19": {"base": 20.0, "reverse": 20.0, "uniform": 16.0, "quadratic": 15.8, "negative-quadratic": 20.0},
    "resnet50": {"base": 23.5, "reverse": 23.1, "uniform": 12.9, "quadratic": 19.0, "negative-quadratic": 33.0},
    "googlenet": {"base": 6.2, "reverse": 6.7, "uniform": 6.9, "quadratic": 7.2, "negative-quadratic": 3.2},
    "mobilenet": {"base": 3.2, "reverse": 2.2, "uniform": 2.9, "quadratic": 3.2, "negative-quadratic": 3.6},
}

# Published cells that no configuration in the study's code gives (checked against every list in its files).
UNREPRODUCED: frozenset[tuple[str, str]] = frozenset({("googlenet", "uniform"), ("googlenet", "negative-quadratic")})


def study_families() -> list[str]:
    return list(STUDY)


def study_config(family: str, template: str) -> Optional[tuple[int, ...]]:
    """The study's widths for one cell at ``w = 1``, or ``None`` when the study has no such model."""
    return STUDY.get(family, {}).get(template)
