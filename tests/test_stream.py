"""A training split over its memory budget: streamed batches equal the resident ones, the run's
weights too, and the budget is an execution setting (recorded, not part of the identity)."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch
from fixtures_data import make_split, write_tree
from test_train import assert_same_weights, one_error_line, weights

from filter_templates.cli import main
from filter_templates.core import validate
from filter_templates.core.errors import UsageError
from filter_templates.data import load_dataset, split
from filter_templates.data.augment import Loader, LoaderOptions
from filter_templates.data.rows import Rows, take
from filter_templates.data.stream import padded_bytes
from filter_templates.method.arch import make_arch
from filter_templates.training.config import EXECUTION_KEYS, TrainConfig, experiment
from filter_templates.training.loop import train


def _images(n: int = 37, size: int = 8) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8), rng.integers(0, 10, n)


def _loader(
    x: np.ndarray, y: np.ndarray, memory: int | None, share: tuple[int, int] = (0, 1), batch: int = 6
) -> Loader:
    return Loader(
        x,
        y,
        batch,
        train=True,
        mean=(0.5,) * 3,
        std=(0.25,) * 3,
        options=LoaderOptions(seed=3, pad=2, memory=memory, share=share),
    )


@pytest.mark.parametrize("memory", [1, 700, 5_000])  # windows of one batch, of a few, of several
def test_streamed_batches_equal_resident_ones(memory):
    x, y = _images()
    resident, streamed = _loader(x, y, None), _loader(x, y, memory)
    assert resident.stream is None and streamed.stream is not None
    for epoch in (0, 1, 5):
        resident.set_epoch(epoch)
        streamed.set_epoch(epoch)
        pairs = list(zip(resident, streamed, strict=True))
        assert len(pairs) == len(x) // 6
        for (xa, ya), (xb, yb) in pairs:
            assert torch.equal(xa, xb) and torch.equal(ya, yb)


def test_a_split_within_the_budget_stays_resident():
    x, y = _images()
    assert _loader(x, y, padded_bytes(x.shape, 2)).stream is None
    assert _loader(x, y, padded_bytes(x.shape, 2) - 1).stream is not None


def test_shares_of_a_batch_make_up_the_whole_batch():
    """Three processes, each streaming or holding its share: together, every batch of one process."""
    x, y = _images()
    whole = list(_loader(x, y, None, batch=8))
    shares = [list(_loader(x, y, 1 if r % 2 else None, share=(r, 3), batch=8)) for r in range(3)]
    assert [len(s[0][1]) for s in shares] == [3, 3, 2]
    for i, (xb, yb) in enumerate(whole):
        assert torch.equal(torch.cat([s[i][0] for s in shares]), xb)
        assert torch.equal(torch.cat([s[i][1] for s in shares]), yb)


def test_an_abandoned_epoch_stops_its_reader():
    x, y = _images(200)
    batches = iter(_loader(x, y, 1))
    next(batches)
    batches.close()  # a failed step ends the epoch early
    assert not any(t.name == "stream-reader" for t in threading.enumerate())


def test_byte_sizes():
    assert [validate.byte_size(t) for t in ("1MiB", "256MiB", "1.5GB", "2g", "100")] == [
        2**20,
        256 * 2**20,
        1_500_000_000,
        2_000_000_000,
        100,
    ]
    for bad in ("x", "-1", "1XB", "0.1", ""):
        with pytest.raises(UsageError):
            validate.byte_size(bad)


def _config(**kw) -> TrainConfig:
    return TrainConfig(
        arch=make_arch("vgg19", "uniform", 0.05, 10),
        **{**dict(epochs=2, dataset="digits", limit_train=192, limit_test=96, batch_size=32), **kw},
    )


def test_streamed_run_is_bit_identical_and_keeps_its_identity(tmp_path, capsys):
    a = train(_config(data_memory=10**9), tmp_path / "resident")
    b = train(_config(data_memory=2**16), tmp_path / "streamed")
    assert "its batches are read from where it lies" in capsys.readouterr().err
    assert_same_weights(weights(tmp_path / "resident" / "model.pt"), weights(tmp_path / "streamed" / "model.pt"))
    assert a["metrics"][-1]["train_loss"] == b["metrics"][-1]["train_loss"]
    assert "data_memory" in EXECUTION_KEYS and b["config"]["data_memory"] == 2**16
    assert experiment(a["config"]) == experiment(b["config"])


def test_resume_with_another_budget(tmp_path):
    """The budget may change on resume: it changes how batches are read, not which."""

    class Stop(Exception):
        pass

    def stop(row: dict) -> None:
        raise Stop  # like a kill right after the first epoch's checkpoint

    with pytest.raises(Stop):
        train(_config(data_memory=2**16), tmp_path / "run", on_epoch=stop)
    train(_config(data_memory=10**9), tmp_path / "run", resume=True)
    train(_config(), tmp_path / "ref")
    assert_same_weights(weights(tmp_path / "run" / "model.pt"), weights(tmp_path / "ref" / "model.pt"))


def test_bad_data_memory_is_one_line(tmp_path, capsys):
    assert (
        main(
            ["train", "--model", "vgg19", "--dataset", "digits", "--data-memory", "lots", "--out", str(tmp_path / "r")]
        )
        == 2
    )
    assert "memory size" in one_error_line(capsys)
    assert not (tmp_path / "r").exists()


@pytest.mark.slow
def test_digits_command_streamed_is_bit_identical(tmp_path):
    """The documented command, with a 1 MiB budget against the resident run."""
    args = [
        "train",
        "--model",
        "vgg19",
        "--template",
        "uniform",
        "--width",
        "0.25",
        "--dataset",
        "digits",
        "--epochs",
        "1",
        "--quiet",
    ]
    assert main([*args, "--out", str(tmp_path / "resident")]) == 0
    assert main([*args, "--data-memory", "1MiB", "--out", str(tmp_path / "streamed")]) == 0
    assert_same_weights(weights(tmp_path / "resident" / "model.pt"), weights(tmp_path / "streamed" / "model.pt"))


def test_rows_read_what_a_copy_holds(tmp_path):
    x, _ = _images(40)
    path = tmp_path / "x.npy"
    np.save(path, x)
    mapped = np.load(path, mmap_mode="r")
    keep = np.array([1, 4, 5, 9, 20, 33, 39])
    view = take(mapped, keep)
    assert isinstance(view, Rows) and view.shape == (7, 8, 8, 3) and len(view) == 7 and view.dtype == np.uint8
    np.testing.assert_array_equal(np.asarray(view), x[keep])
    np.testing.assert_array_equal(view[np.array([0, 3, 6])], x[keep[[0, 3, 6]]])
    np.testing.assert_array_equal(np.asarray(view[2:5]), x[keep[2:5]])
    np.testing.assert_array_equal(np.asarray(view[::3][:2]), x[keep[::3][:2]])
    inner = take(view, np.array([0, 2]))  # a view of a view reads the file, not a copy
    assert isinstance(inner, Rows) and inner.base is mapped
    np.testing.assert_array_equal(np.asarray(inner), x[keep[[0, 2]]])
    copy = take(x, keep)  # an array in memory is copied, as before
    assert isinstance(copy, np.ndarray) and copy.flags.c_contiguous


def test_a_kept_part_of_a_mapped_split_streams_bit_identically(tmp_path, capsys):
    """--limit-train and a validation split keep a view of the mapped cache (no copy of the
    training images), and the run streamed from it has the resident run's weights."""
    train_arrays, test_arrays = make_split(30, 10, 0), make_split(4, 10, 1)
    tree = write_tree(tmp_path / "images", train_arrays, test_arrays)
    ds = split.holdout(load_dataset("folder", str(tree), limit_train=250), 30)
    assert isinstance(ds.train_x, Rows) and isinstance(ds.train_x.base, np.memmap) and len(ds.train_x) == 220
    cfg = dict(dataset="folder", data_dir=str(tree), limit_train=250, val_split=30)
    a = train(_config(data_memory=10**9, **cfg), tmp_path / "resident")
    b = train(_config(data_memory=2**15, **cfg), tmp_path / "streamed")
    assert "its batches are read from where it lies" in capsys.readouterr().err
    assert_same_weights(weights(tmp_path / "resident" / "model.pt"), weights(tmp_path / "streamed" / "model.pt"))
    assert a["val_acc"] == b["val_acc"] and a["val"]["digest"] == b["val"]["digest"]
