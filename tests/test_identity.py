"""A run's identity by structure: the config's concerns, the fields each declares, and the store
keys and checkpoint views of configs written before (pinned in fixtures/store_keys.json by the code
that wrote them)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

import pytest

from filter_templates.method.arch import make_arch
from filter_templates.sweep.records import canonical_json, point_key
from filter_templates.training.config import (
    CONCERNS,
    EXECUTION_KEYS,
    FIELDS,
    RESULT_KEYS,
    VALUE_BEFORE,
    ExecutionSettings,
    TrainConfig,
    experiment,
    names,
)
from filter_templates.training.loop import _resume_view

PINNED = json.loads((Path(__file__).parent / "fixtures" / "store_keys.json").read_text())["records"]


def test_the_concerns_are_the_whole_config_and_execution_is_no_part_of_identity():
    assert FIELDS == tuple(f.name for f in dataclasses.fields(TrainConfig))  # each field in one concern, in order
    assert len(set(FIELDS)) == len(FIELDS)
    assert EXECUTION_KEYS == names(ExecutionSettings) and set(RESULT_KEYS) == set(FIELDS) - set(EXECUTION_KEYS)
    assert {"world_size", "sync_bn", "stop_at", "device", "log", "data_dir"} <= set(EXECUTION_KEYS)
    assert set(VALUE_BEFORE) <= set(RESULT_KEYS)
    assert [c.__name__ for c in CONCERNS] == [
        "ArchitectureSettings",
        "DataSettings",
        "RecipeSettings",
        "PruningSettings",
        "ExecutionSettings",
    ]


def test_a_field_declared_in_execution_never_changes_the_key():
    cfg = TrainConfig(arch=make_arch("vgg19", "uniform", 0.05, 10), epochs=1)
    moved = dataclasses.replace(cfg, device="cpu", threads=3, stop_at=1, world_size=2, data_dir="/elsewhere")
    assert point_key(moved.to_dict()) == point_key(cfg.to_dict())
    assert point_key(dataclasses.replace(cfg, seed=1).to_dict()) != point_key(cfg.to_dict())


@pytest.mark.parametrize("rec", PINNED, ids=[r["name"] for r in PINNED])
def test_store_keys_and_checkpoint_views_of_existing_configs_are_unchanged(rec):
    stored = rec["config"]
    assert point_key(stored)[0] == rec["key"]  # the store's key of the record as it lies on disk
    loaded = TrainConfig.from_dict(stored).to_dict()  # read back (an older record gains its added fields)
    assert point_key(loaded)[0] == rec["key"]
    assert hashlib.sha256(canonical_json(_resume_view(loaded)).encode()).hexdigest() == rec["resume_view"]
    assert experiment(loaded) == experiment(stored)
