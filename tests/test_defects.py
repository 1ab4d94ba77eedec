"""One test per defect of issue 12: each failed before its fix."""

from __future__ import annotations

import json
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch

from filter_templates import rundir
from filter_templates.cli import main
from filter_templates.data import cache as data_cache
from filter_templates.data.dataset import Dataset
from filter_templates.errors import UsageError


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def tiny_dataset(n: int = 8) -> Dataset:
    rng = np.random.default_rng(0)
    x = rng.integers(0, 255, (n, 32, 32, 3), dtype=np.uint8)
    y = np.arange(n, dtype=np.int64) % 2
    return Dataset("tiny", ("a", "b"), x, y, x.copy(), y.copy(), (0.5, 0.5, 0.5), (0.2, 0.2, 0.2), "test")


def test_cache_meta_missing_a_key_is_a_damaged_entry_not_a_keyerror(tmp_path):
    ds = data_cache.store(tiny_dataset(), "k1", tmp_path)
    entry = tmp_path / data_cache.CACHE_DIRNAME / "tiny-k1"
    assert data_cache.load("tiny", "k1", tmp_path) is not None
    meta = json.loads((entry / "meta.json").read_text())
    del meta["source"]
    (entry / "meta.json").write_text(json.dumps(meta))
    assert data_cache.load("tiny", "k1", tmp_path) is None  # was: KeyError 'source'
    again = data_cache.store(ds, "k1", tmp_path)  # the damaged entry is replaced
    assert again.source == "test" and data_cache.load("tiny", "k1", tmp_path) is not None


def test_export_to_an_unwritable_place_is_one_error_line(tmp_path, capsys):
    from test_export import fake_run

    fake_run(tmp_path / "run")
    code = main(["export", "--run", str(tmp_path / "run"), "--format", "torchscript", "--out", "/proc/m.pt"])
    assert code == 2 and "/proc/m.pt" in one_error_line(capsys)
