"""How a user's network is read into template layers: ``groups`` (every free channel group) and
``modules`` (one template layer per stage or multi-branch module, the paper's reading)."""

from __future__ import annotations

import pytest

from filter_templates.models import generic

# The groups reading's base counts, pinned: every free channel group is one template layer.
GROUPS_PINNED = {
    "tests.models_zoo:resnet18": (64, 64, 64, 128, 128, 128, 256, 256, 256, 512, 512, 512),
    "tests.models_zoo:inception": (32, 16, 16, 32, 16, 32, 32, 48, 16),
    "tests.models_zoo:mobilenet_study": (32, 64, 128, 128, 256, 256, 512, 512, 512, 512, 512, 512, 1024, 1024),
    "tests.models_zoo:resnet50_study": (64, 64, 64, 256, 64, 64, 64, 64, 128, 128, 512, 128, 128, 128, 128, 128,
                                        128, 256, 256, 1024, 256, 256, 256, 256, 256, 256, 256, 256, 256, 256, 512,
                                        512, 2048, 512, 512, 512, 512),
}


@pytest.mark.parametrize("path", sorted(GROUPS_PINNED))
def test_groups_reading_keeps_its_counts(path):
    fam = generic.generic_family(generic.load_model(path))
    assert fam.base_filters == GROUPS_PINNED[path]
