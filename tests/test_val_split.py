"""The validation split: stratified, disjoint from what trains, the same images for every candidate
and seed of a dataset, recorded by every run; bad values are one line."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from filter_templates.cli import main
from filter_templates.core.errors import UsageError
from filter_templates.data import data_facts, load_data, load_data_for, split
from filter_templates.method.arch import make_arch
from filter_templates.sweep.grid import known_classes, load_config, plan_grid
from filter_templates.sweep.store import point_key
from filter_templates.training.config import TrainConfig
from filter_templates.training.loop import train

TINY = dict(
    dataset="digits",
    limit_train=160,
    limit_test=64,
    batch_size=32,
    epochs=1,
    precision="fp32",
    memory_format="contiguous",
)


@pytest.fixture
def quick_resources(monkeypatch):
    """The training tests here are about the split: skip each run's latency timing and memory account."""
    from filter_templates.method import measure

    real = measure.resources
    monkeypatch.setattr(
        measure,
        "resources",
        lambda arch, batch_size=64, device="cpu", **kw: real(arch, batch_size, device, memory=False, latency=False),
    )


def digits():
    return load_data("digits")


# ---- the split itself ----------------------------------------------------------------------------


def test_split_is_stratified_and_disjoint_from_training():
    ds = digits()
    held = split.holdout(ds, 0.1)
    n = len(ds.train_y)
    assert len(held.val_y) == round(0.1 * n) and len(held.train_y) + len(held.val_y) == n
    train_idx, val_idx = split.indices(ds.train_y, len(held.val_y), ds.name)
    assert not set(train_idx) & set(val_idx) and len(train_idx) + len(val_idx) == n
    # every class gives its share, to within one image
    share = np.bincount(ds.train_y, minlength=10) * len(val_idx) / n
    assert np.all(np.abs(np.bincount(held.val_y, minlength=10) - share) < 1)
    # the held-out images are training images, and none of them is left in the training split
    assert np.array_equal(held.val_x, ds.train_x[val_idx]) and np.array_equal(held.train_x, ds.train_x[train_idx])
    # nothing else changes: same test split, same normalisation
    assert held.test_x is ds.test_x and (held.mean, held.std) == (ds.mean, ds.std)


def test_split_depends_on_the_dataset_and_split_seed_only():
    ds = digits()
    a = split.indices(ds.train_y, 100, ds.name)[1]
    assert np.array_equal(a, split.indices(ds.train_y.copy(), 100, ds.name)[1])  # a fresh read: the same
    assert not np.array_equal(a, split.indices(ds.train_y, 100, ds.name, seed=split.SPLIT_SEED + 1)[1])
    assert not np.array_equal(a, split.indices(ds.train_y, 100, "another")[1])


def test_count_fraction_and_default_sizes():
    assert split.size(0, 1000) == 0 and split.size(250, 1000) == 250 and split.size(0.1, 1437) == 144
    assert split.default(1437) == 0.1 and split.default(50_000) == 0.1 and split.default(60_000) == 5000
    assert split.size(split.default(50_000), 50_000) == 5000
    assert split.parse("5000") == 5000 and isinstance(split.parse("5000"), int)
    assert split.parse("0.25") == 0.25 and split.parse("0") == 0


@pytest.mark.parametrize(
    "value, words",
    [
        (-1, "must be a count of images"),
        (1.0, "must be a count of images"),
        (1.5, "must be a count of images"),
        (True, "must be a count of images"),
        ("10", "must be a count of images"),
        (float("nan"), "must be a count"),
        (1437, "leaving none to train on"),
        (5000, "leaving none to train on"),
        (0.0001, "holds out no image"),
    ],
)
def test_bad_values_are_usage_errors(value, words):
    with pytest.raises(UsageError, match=words):
        split.size(value, len(digits().train_y))


def test_a_dataset_with_its_own_validation_set_keeps_it():
    ds = digits()
    own = dataclasses.replace(ds, val_x=ds.test_x[:50], val_y=ds.test_y[:50])
    assert split.holdout(own, 0.1) is own and split.holdout(own, 500) is own  # nothing held out of train
    assert split.holdout(own, 0) is own  # its own validation set costs the training split nothing
    assert split.describe(own, own, 0.1)["source"] == "the dataset's own"


# ---- runs record it --------------------------------------------------------------------------------


def test_runs_record_val_acc_on_the_same_images_for_every_seed_and_template(tmp_path, quick_resources):
    summaries = []
    for template, seed in (("uniform", 0), ("reverse", 1)):
        cfg = TrainConfig(arch=make_arch("vgg19", template, 0.05, 10), seed=seed, val_split=0.2, **TINY)
        summaries.append(train(cfg, tmp_path / f"{template}{seed}"))
        rows = [json.loads(x) for x in (tmp_path / f"{template}{seed}" / "metrics.jsonl").read_text().splitlines()]
        assert all(0 <= r["val_acc"] <= 1 for r in rows)
        assert summaries[-1]["val_acc"] == rows[-1]["val_acc"]
    a, b = (s["val"] for s in summaries)
    assert a == b and a["images"] == 32 and a["source"] == "held out of the training split"
    # without a split: no val_acc anywhere
    plain = train(TrainConfig(arch=make_arch("vgg19", "uniform", 0.05, 10), **TINY), tmp_path / "plain")
    assert plain["val_acc"] is None and plain["val"] is None and "val_acc" not in plain["metrics"][-1]


def test_a_record_from_before_the_field_loads_with_its_old_identity():
    cfg = TrainConfig(arch=make_arch("vgg19", "uniform", 0.05, 10), **TINY)
    old = cfg.to_dict()
    del old["val_split"]
    assert TrainConfig.from_dict(old).val_split == 0
    assert point_key(old) == point_key(cfg.to_dict())  # the store's key of an older run is unchanged
    split_cfg = dataclasses.replace(cfg, val_split=0.1)
    assert point_key(split_cfg.to_dict()) != point_key(cfg.to_dict())  # a split is another experiment


def test_the_data_facts_size_the_validation_split():
    cfg = TrainConfig(arch=make_arch("vgg19", "uniform", 0.05, 10), val_split=0.1, **TINY)
    assert data_facts(cfg).val_images(cfg.val_split, cfg.batch_size) == 16
    with pytest.raises(UsageError, match="leaving none to train on"):
        data_facts(cfg).val_images(160)
    with pytest.raises(UsageError, match="fewer than one batch of 150"):
        data_facts(cfg).val_images(16, batch_size=150)


@pytest.mark.parametrize(
    "settings", [{"dataset": "digits"}, {"dataset": "synthetic"}, {"dataset": "synthetic", "limit_train": 300}, TINY]
)
def test_the_data_facts_of_a_built_in_dataset_are_its_data(settings):
    """Digits and synthetic answer from their metadata, without reading an image: the same facts
    that loading them gives."""
    facts, ds = data_facts(settings), load_data_for(settings)
    assert (facts.classes, facts.image_size, facts.train_images) == (ds.num_classes, ds.image_size, len(ds.train_y))
    assert facts.digest is None and facts.own_val_images == 0


# ---- the command line --------------------------------------------------------------------------------


@pytest.mark.parametrize("command", ["train", "sweep", "reduce"])
@pytest.mark.parametrize(
    "value, words",
    [
        ("-1", "is not a count of images"),
        ("1.0", "is not a count of images"),
        ("half", "is not a count of images"),
        ("1437", "leaving none to train on"),
    ],
)
def test_cli_bad_val_split_is_one_line(tmp_path, capsys, command, value, words):
    argv = {
        "train": ["train", "--model", "vgg19", "--width", "0.05", "--out", str(tmp_path / "run")],
        "sweep": [
            "sweep",
            "--models",
            "vgg19",
            "--widths",
            "0.05",
            "--datasets",
            "digits",
            "--db",
            str(tmp_path / "r.sqlite"),
            "--runs-dir",
            str(tmp_path / "runs"),
        ],
        "reduce": [
            "reduce",
            "--model",
            "mobilenet",
            "--budget",
            "params=20K",
            "--dataset",
            "digits",
            "--out",
            str(tmp_path / "R"),
        ],
    }[command]
    assert main([*argv, "--epochs", "1", "--val-split", value]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("filter-templates: error: ") and words in err[0], err
    assert not list(tmp_path.rglob("*.pt")) and not list(tmp_path.rglob("metrics.jsonl"))  # nothing trained


def test_a_sweep_config_file_sets_it(tmp_path):
    path = tmp_path / "s.toml"
    path.write_text('models = ["vgg19"]\nwidths = [0.05]\ndatasets = ["digits"]\nval_split = 0.1\n')
    assert {c.val_split for c in plan_grid(load_config(path), classes_of=known_classes).configs} == {0.1}
    path.write_text('models = ["vgg19"]\nwidths = [0.05]\ndatasets = ["digits"]\nval_split = 1.5\n')
    with pytest.raises(UsageError, match="'val_split' must be a count of images"):
        plan_grid(load_config(path), classes_of=known_classes)
