"""filter_templates.data: every CIFAR form, the cache, the safety checks, digits/synthetic, and the
batched augmenting Loader. Fixtures are tiny files in the real formats; nothing touches the network."""

from __future__ import annotations

import functools
import hashlib
import http.server
import os
import pickle
import shutil
import tarfile
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from fixtures_data import (
    CIFAR10_CLASSES,
    cifar100_classes,
    make_split,
    py2_pickle_dumps,
    tar_folder,
    write_cifar10_batches,
    write_cifar100_files,
    write_tree,
)

from filter_templates.core.errors import UsageError
from filter_templates.data import DATASETS, Dataset, cifar, download, load_dataset, unpickle
from filter_templates.data import cache as data_cache
from filter_templates.data.augment import Loader, LoaderOptions
from filter_templates.data.images import decode_images

SHARED_CIFAR10 = Path(__file__).resolve().parents[2] / "shared/datasets/cifar10-jpeg.tar.gz"


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path, monkeypatch):
    """Fallback cache in tmp (never ~/.cache), and no stray data-dir default."""
    monkeypatch.setenv("FILTER_TEMPLATES_CACHE", str(tmp_path / "user-cache"))
    monkeypatch.delenv("FILTER_TEMPLATES_DATA", raising=False)
    monkeypatch.delenv("FILTER_TEMPLATES_CIFAR_URL", raising=False)


@pytest.fixture(scope="module")
def c10():
    """A 10-class CIFAR-10 stand-in: 3 train / 1 test image per class, grouped by class."""
    return make_split(3, 10, seed=1), make_split(1, 10, seed=2)


def _same(ds: Dataset, train, test) -> None:
    np.testing.assert_array_equal(ds.train_x, train[0])
    np.testing.assert_array_equal(ds.train_y, train[1])
    np.testing.assert_array_equal(ds.test_x, test[0])
    np.testing.assert_array_equal(ds.test_y, test[1])
    assert ds.train_x.dtype == np.uint8 and ds.train_y.dtype == np.int64
    assert ds.classes == CIFAR10_CLASSES and ds.num_classes == 10


def _official_archive(tmp: Path, train, test, name: str = "cifar-10-python.tar.gz") -> Path:
    src = write_cifar10_batches(tmp / "build" / "cifar-10-batches-py", train, test)
    out = tmp / "archives"
    out.mkdir(exist_ok=True)
    return tar_folder(src, out / name)


# ------------------------------------------------------------------------------------- every form


@pytest.mark.parametrize(
    "form",
    [
        "batches",
        "batches-dir-itself",
        "batches-py3",
        "archive",
        "tree",
        "tree-subfolder",
        "tree-tar-gz",
        "tree-tar-top-folder",
        "tree-tar-no-top",
        "data-dir-is-file",
    ],
)
def test_every_cifar10_form_loads_to_the_same_arrays(tmp_path, c10, form):
    train, test = c10
    d = tmp_path / "data"
    d.mkdir()
    arg = d
    if form == "batches":
        write_cifar10_batches(d / "cifar-10-batches-py", train, test)
    elif form == "batches-dir-itself":
        arg = write_cifar10_batches(d / "cifar-10-batches-py", train, test)
    elif form == "batches-py3":
        write_cifar10_batches(d / "cifar-10-batches-py", train, test, py2=False)
    elif form == "archive":
        shutil.move(_official_archive(tmp_path, train, test), d / "cifar-10-python.tar.gz")
    elif form == "tree":
        write_tree(d, train, test)
    elif form == "tree-subfolder":
        write_tree(d / "CIFAR-10-images", train, test)
    elif form == "tree-tar-gz":
        tar_folder(write_tree(tmp_path / "cifar10", train, test), d / "cifar10-png.tar.gz")
    elif form == "tree-tar-top-folder":
        tar_folder(write_tree(tmp_path / "whatever", train, test), d / "images.tar")
    elif form == "tree-tar-no-top":
        tar_folder(write_tree(tmp_path / "t", train, test), d / "cifar-10-pngs.tgz", arcname="")
    elif form == "data-dir-is-file":
        arg = tar_folder(write_tree(tmp_path / "t", train, test), d / "anything.tar.gz")
    ds = load_dataset("cifar10", arg)
    _same(ds, train, test)
    # normalisation statistics are those of the training split, in [0, 1] units
    ref = train[0].reshape(-1, 3) / 255.0
    np.testing.assert_allclose(ds.mean, ref.mean(0), atol=1e-9)
    np.testing.assert_allclose(ds.std, ref.std(0), atol=1e-9)


def test_jpeg_tree_decodes_close_to_the_originals(tmp_path):
    train, test = make_split(2, 10, seed=3), make_split(1, 10, seed=4)
    smooth = lambda x: np.repeat(np.repeat(x[:, ::8, ::8], 8, 1), 8, 2)  # noqa: E731 - JPEG-friendly blocks
    train, test = (smooth(train[0]), train[1]), (smooth(test[0]), test[1])
    write_tree(tmp_path / "d", train, test, fmt="jpg")
    ds = load_dataset("cifar10", tmp_path / "d")
    assert ds.train_x.shape == (20, 32, 32, 3)
    assert np.abs(ds.train_x.astype(int) - train[0]).mean() < 8
    np.testing.assert_array_equal(ds.train_y, train[1])


def test_cifar100_official_folder_uses_fine_labels(tmp_path):
    train, test = make_split(1, 100, seed=4), make_split(1, 100, seed=5)
    write_cifar100_files(tmp_path / "cifar-100-python", train, test)
    ds = load_dataset("cifar100", tmp_path)
    np.testing.assert_array_equal(ds.train_x, train[0])
    np.testing.assert_array_equal(ds.train_y, train[1])
    assert ds.classes == cifar100_classes() and ds.num_classes == 100
    with pytest.raises(UsageError, match="no CIFAR-10 data"):  # the CIFAR-100 folder is not CIFAR-10
        load_dataset("cifar10", tmp_path)


def test_cifar100_tree_needs_100_classes(tmp_path, c10):
    write_tree(tmp_path / "cifar100", *c10)
    with pytest.raises(UsageError, match="found 10 class folders.*CIFAR-100 has 100"):
        load_dataset("cifar100", tmp_path)


# -------------------------------------------------------------------------------------------- cache


def test_cache_is_written_once_then_memory_mapped(tmp_path, c10, monkeypatch):
    write_cifar10_batches(tmp_path / "cifar-10-batches-py", *c10)
    first = load_dataset("cifar10", tmp_path)
    entries = list((tmp_path / data_cache.CACHE_DIRNAME).iterdir())
    assert len(entries) == 1 and entries[0].name.startswith("cifar10-")
    assert {p.name for p in entries[0].iterdir()} == {
        "train_x.npy",
        "train_y.npy",
        "test_x.npy",
        "test_y.npy",
        "meta.json",
    }

    monkeypatch.setattr(cifar, "_decode", lambda *a: pytest.fail("decoded again despite a valid cache"))
    second = load_dataset("cifar10", tmp_path)
    assert isinstance(second.train_x, np.memmap) and isinstance(second.test_x, np.memmap)
    _same(second, *c10)
    assert second.mean == first.mean and second.std == first.std


def test_changed_source_or_damaged_cache_is_decoded_again(tmp_path, c10):
    folder = write_cifar10_batches(tmp_path / "cifar-10-batches-py", *c10)
    load_dataset("cifar10", tmp_path)
    entry = next((tmp_path / data_cache.CACHE_DIRNAME).iterdir())
    with open(entry / "train_x.npy", "r+b") as f:  # damage the cache
        f.truncate(200)
    _same(load_dataset("cifar10", tmp_path), *c10)
    # a changed source file gets a new entry with the new contents
    (train_x, train_y), test = c10
    train_x = 255 - train_x
    os.utime(folder / "data_batch_1", ns=(1, 1))
    write_cifar10_batches(folder, (train_x, train_y), test)
    np.testing.assert_array_equal(load_dataset("cifar10", tmp_path).train_x, train_x)


def test_read_only_data_dir_falls_back_to_the_user_cache(tmp_path, c10):
    d = tmp_path / "ro"
    write_tree(d, *c10)
    os.chmod(d, 0o555)
    try:
        ds = load_dataset("cifar10", d)
        assert not (d / data_cache.CACHE_DIRNAME).exists()
        assert any((tmp_path / "user-cache").glob("cifar10-*/train_x.npy"))
        assert isinstance(load_dataset("cifar10", d).train_x, np.memmap)
        _same(ds, *c10)
    finally:
        os.chmod(d, 0o755)


# ------------------------------------------------------------------------------------- bad input


def _one_line(exc: pytest.ExceptionInfo) -> str:
    msg = str(exc.value)
    assert "\n" not in msg
    return msg


def test_unknown_name_missing_dir_empty_dir(tmp_path):
    with pytest.raises(
        UsageError, match="unknown dataset 'imagenet'; choose from cifar10, cifar100, digits, synthetic"
    ):
        load_dataset("imagenet")
    with pytest.raises(UsageError) as e:
        load_dataset("cifar10", tmp_path / "nope")
    assert str(tmp_path / "nope") in _one_line(e) and "does not exist" in str(e.value)
    (tmp_path / "empty").mkdir()
    with pytest.raises(UsageError) as e:
        load_dataset("cifar10", tmp_path / "empty")
    assert "no CIFAR-10 data in" in _one_line(e) and "cifar-10-python.tar.gz" in str(e.value)
    with pytest.raises(UsageError, match="limit_train must be a positive integer"):
        load_dataset("digits", limit_train=0)
    with pytest.raises(UsageError, match="does not exist"):
        load_dataset("CIFAR-10", tmp_path / "nope")  # case and dashes are forgiven


def test_truncated_and_corrupt_archives_name_the_file(tmp_path, c10):
    archive = _official_archive(tmp_path, *c10)
    blob = archive.read_bytes()
    for label, data in (("truncated", blob[: len(blob) // 2]), ("corrupt", b"\x1f\x8b" + os.urandom(2000))):
        d = tmp_path / label
        d.mkdir()
        (d / "cifar-10-python.tar.gz").write_bytes(data)
        with pytest.raises(UsageError) as e:
            load_dataset("cifar10", d)
        assert str(d / "cifar-10-python.tar.gz") in _one_line(e)


def test_truncated_batch_and_missing_batch_name_the_file(tmp_path, c10):
    folder = write_cifar10_batches(tmp_path / "cifar-10-batches-py", *c10)
    raw = (folder / "data_batch_3").read_bytes()
    (folder / "data_batch_3").write_bytes(raw[:100])
    with pytest.raises(UsageError) as e:
        load_dataset("cifar10", tmp_path)
    assert "data_batch_3" in _one_line(e) and "truncated or corrupt" in str(e.value)
    (folder / "data_batch_3").unlink()
    with pytest.raises(UsageError, match="data_batch_3 is missing"):
        load_dataset("cifar10", tmp_path)


def test_wrong_image_size_is_refused(tmp_path, c10):
    (train_x, train_y), test = c10
    folder = write_cifar10_batches(tmp_path / "a" / "cifar-10-batches-py", (train_x, train_y), test)
    bad = {b"labels": [0, 1], b"data": np.zeros((2, 768), np.uint8)}  # 16x16 images
    (folder / "data_batch_2").write_bytes(py2_pickle_dumps(bad))
    with pytest.raises(UsageError, match=r"data_batch_2: images have 768 values, expected 3072"):
        load_dataset("cifar10", tmp_path / "a")
    tree = write_tree(tmp_path / "b", (train_x, train_y), test)
    from PIL import Image

    Image.fromarray(np.zeros((28, 28, 3), np.uint8)).save(tree / "train" / "cat" / "0007.png")
    with pytest.raises(UsageError) as e:
        load_dataset("cifar10", tree)
    assert "train/cat/0007.png: image is 28x28, expected 32x32" in _one_line(e)
    (tree / "train" / "cat" / "0007.png").write_bytes(b"not a png at all")
    with pytest.raises(UsageError, match="0007.png: cannot decode image"):
        load_dataset("cifar10", tree)


class _Evil:
    """A pickle payload that would create ``marker`` if it ever ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


@pytest.mark.parametrize("where", ["folder", "archive"])
def test_crafted_pickle_is_refused_without_running(tmp_path, c10, where):
    marker = tmp_path / "pwned"
    folder = write_cifar10_batches(tmp_path / "src" / "cifar-10-batches-py", *c10)
    (folder / "data_batch_1").write_bytes(py2_pickle_dumps({b"data": _Evil(marker), b"labels": []}))
    d = tmp_path / "src"
    if where == "archive":
        d = tmp_path / "arch"
        d.mkdir()
        tar_folder(folder, d / "cifar-10-python.tar.gz")
    with pytest.raises(UsageError) as e:
        load_dataset("cifar10", d)
    msg = _one_line(e)
    assert "data_batch_1" in msg and "refusing to unpickle" in msg and "system" in msg
    assert not marker.exists()


@pytest.mark.parametrize(
    "payload",
    [
        b"cbuiltins\neval\n(S'1+1'\ntR.",
        b"csubprocess\nPopen\n(S'true'\ntR.",
        b"cnumpy\nload\n(S'x'\ntR.",
        b"\x80\x02cposix\nsystem\nq\x00.",
        pickle.dumps(print, protocol=4),
    ],
)
def test_unpickler_admits_no_other_globals(payload):
    with pytest.raises(UsageError, match="refusing to unpickle"):
        unpickle.load(payload, "crafted")


def test_unpickler_reads_python2_and_python3_arrays():
    arr = np.arange(12, dtype=np.uint8).reshape(3, 4)
    old = unpickle.load(py2_pickle_dumps({"data": arr, "labels": [1, 2]}), "py2")
    assert set(old) == {b"data", b"labels"}  # Python 2 str keys come back as bytes
    np.testing.assert_array_equal(old[b"data"], arr)
    new = unpickle.load(pickle.dumps({"data": arr}, protocol=4), "py3")
    np.testing.assert_array_equal(new["data"], arr)


# ----------------------------------------------------------------------------------------- download


@pytest.fixture
def http_dir(tmp_path):
    """A local HTTP server on 127.0.0.1 (ephemeral port) serving a folder; yields (folder, base URL)."""
    root = tmp_path / "www"
    root.mkdir()

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(root)))
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield root, f"http://127.0.0.1:{server.server_address[1]}/mirror"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def test_download_fetches_verifies_and_extracts(tmp_path, c10, http_dir, monkeypatch):
    root, base = http_dir
    (root / "mirror").mkdir()
    archive = _official_archive(tmp_path, *c10)
    shutil.copy(archive, root / "mirror" / "cifar-10-python.tar.gz")
    monkeypatch.setenv("FILTER_TEMPLATES_CIFAR_URL", base)
    monkeypatch.setitem(download.MD5, "cifar10", hashlib.md5(archive.read_bytes()).hexdigest())
    d = tmp_path / "fresh" / "data"
    ds = load_dataset("cifar10", d, download=True)
    _same(ds, *c10)
    assert (d / "cifar-10-python.tar.gz").read_bytes() == archive.read_bytes()
    assert (d / "cifar-10-batches-py" / "data_batch_5").is_file()
    assert not [p for p in d.iterdir() if p.name.startswith(".") and p.name != data_cache.CACHE_DIRNAME]
    (root / "mirror" / "cifar-10-python.tar.gz").unlink()  # present data: no second download
    _same(load_dataset("cifar10", d, download=True), *c10)


def test_download_with_wrong_checksum_keeps_nothing(tmp_path, c10, http_dir, monkeypatch):
    root, base = http_dir
    (root / "mirror").mkdir()
    shutil.copy(_official_archive(tmp_path, *c10), root / "mirror" / "cifar-10-python.tar.gz")
    monkeypatch.setenv("FILTER_TEMPLATES_CIFAR_URL", base)  # MD5 stays the published one: mismatch
    d = tmp_path / "data"
    with pytest.raises(UsageError) as e:
        load_dataset("cifar10", d, download=True)
    msg = _one_line(e)
    assert "cifar-10-python.tar.gz" in msg and "c58f30108f718f92721af3b95e74349a" in msg
    assert list(d.iterdir()) == []
    with pytest.raises(UsageError, match="cannot download .*cifar-100-python.tar.gz"):  # 404
        load_dataset("cifar100", d, download=True)


def test_existing_archive_with_wrong_checksum_is_refused_on_download(tmp_path, c10):
    shutil.move(_official_archive(tmp_path, *c10), tmp_path / "cifar-10-python.tar.gz")
    with pytest.raises(UsageError, match=r"cifar-10-python.tar.gz: MD5 [0-9a-f]{32} does not match"):
        load_dataset("cifar10", tmp_path, download=True)


def test_safe_extract_rejects_path_traversal_and_links(tmp_path):
    for name, member in (("dotdot", "../escape.txt"), ("absolute", "/tmp/escape.txt"), ("link", None)):
        archive = tmp_path / f"{name}.tar"
        with tarfile.open(archive, "w") as tf:
            if member is None:
                info = tarfile.TarInfo("cifar-10-batches-py/evil")
                info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
                tf.addfile(info)
            else:
                info = tarfile.TarInfo(member)
                info.size = 1
                tf.addfile(info, __import__("io").BytesIO(b"x"))
        target = tmp_path / f"out-{name}"
        with pytest.raises(UsageError, match="refusing to extract"):
            download.safe_extract(archive, target)
        assert list(target.iterdir()) == []
    assert not (tmp_path / "escape.txt").exists()


# ---------------------------------------------------------------------------------- digits, synthetic


def test_digits_shape_split_and_determinism():
    a, b = load_dataset("digits"), load_dataset("digits")
    assert a.train_x.shape == (1437, 32, 32, 3) and a.test_x.shape == (360, 32, 32, 3)
    assert a.train_x.dtype == np.uint8 and a.train_y.dtype == np.int64
    np.testing.assert_array_equal(a.train_x, b.train_x)
    np.testing.assert_array_equal(a.test_y, b.test_y)
    assert np.all(a.train_x[..., 0] == a.train_x[..., 2])  # grey replicated to 3 channels
    assert a.train_x.max() > 200 and a.train_x.min() == 0
    counts = np.bincount(a.test_y, minlength=10)
    assert counts.min() >= 35 and counts.max() <= 37  # stratified
    assert a.classes == tuple("0123456789")


def test_synthetic_sizes_and_prefix_stability():
    small = load_dataset("synthetic", limit_train=300, limit_test=50)
    big = load_dataset("synthetic", limit_train=1500, limit_test=60)
    assert small.train_x.shape == (300, 32, 32, 3) and small.test_y.shape == (50,)
    np.testing.assert_array_equal(small.train_x, big.train_x[:300])
    assert set(np.unique(big.train_y)) == set(range(10))
    # class structure: a nearest-class-mean classifier beats chance by far
    means = np.stack([big.train_x[big.train_y == c].reshape(-1, 3072).mean(0) for c in range(10)])
    d = ((big.test_x.reshape(-1, 1, 3072).astype(float) - means) ** 2).sum(-1)
    assert (d.argmin(1) == big.test_y).mean() > 0.5


def test_limits_take_a_fixed_seeded_subset(tmp_path, c10):
    write_tree(tmp_path, *c10)
    a = load_dataset("cifar10", tmp_path, limit_train=7, limit_test=4)
    b = load_dataset("cifar10", tmp_path, limit_train=7, limit_test=4)
    assert a.train_x.shape == (7, 32, 32, 3) and a.test_y.shape == (4,)
    np.testing.assert_array_equal(a.train_x, b.train_x)
    full = c10[0][0].reshape(len(c10[0][0]), -1)
    rows = [int(np.flatnonzero((full == r.reshape(-1)).all(1))[0]) for r in a.train_x]
    assert rows == sorted(rows) and rows != list(range(7))  # a shuffled pick, kept in stored order
    assert load_dataset("digits", limit_train=5000).train_x.shape[0] == 1437  # larger than the split: all


def test_decode_images_in_worker_processes_matches_serial(tmp_path, monkeypatch):
    train, _ = make_split(6, 10, seed=9)
    items = []
    for i, img in enumerate(train):
        p = tmp_path / f"{i}.png"
        __import__("PIL.Image").Image.fromarray(img).save(p)
        items.append((str(p), p.read_bytes() if i % 2 else p))
    monkeypatch.setenv("FILTER_TEMPLATES_DECODE_WORKERS", "2")
    monkeypatch.setattr("filter_templates.data.images._CHUNK", 16)
    np.testing.assert_array_equal(decode_images(items), train)
    items[37] = ("broken.png", b"garbage")
    with pytest.raises(UsageError, match="broken.png: cannot decode image"):
        decode_images(items)


# ------------------------------------------------------------------------------------------- Loader


def _identifiable(n: int = 40, seed: int = 0):
    """Images with label = index, so every output sample says which image it came from."""
    x = np.random.default_rng(seed).integers(1, 256, size=(n, 32, 32, 3), dtype=np.uint8)
    return x, np.arange(n, dtype=np.int64)


MEAN, STD = (0.5, 0.4, 0.3), (0.25, 0.2, 0.3)


def _unnormalise(x: torch.Tensor) -> np.ndarray:
    m = torch.tensor(MEAN).view(1, 3, 1, 1)
    s = torch.tensor(STD).view(1, 3, 1, 1)
    return torch.round((x.float() * s + m) * 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()


def test_train_loader_shapes_dtype_channels_last_and_len():
    x, y = _identifiable(40)
    loader = Loader(x, y, 16, train=True, mean=MEAN, std=STD)
    assert len(loader) == 2  # drop_last
    batches = list(loader)
    assert len(batches) == 2
    for xb, yb in batches:
        assert xb.shape == (16, 3, 32, 32) and xb.dtype == torch.float32
        assert xb.is_contiguous(memory_format=torch.channels_last)
        assert yb.dtype == torch.int64 and yb.shape == (16,)
    seen = torch.cat([yb for _, yb in batches])
    assert len(set(seen.tolist())) == 32  # a permutation: no sample twice in an epoch
    options = LoaderOptions(channels_last=False, dtype=torch.bfloat16)
    xb, _ = next(iter(Loader(x, y, 8, train=True, mean=MEAN, std=STD, options=options)))
    assert xb.dtype == torch.bfloat16 and xb.is_contiguous()


@pytest.mark.parametrize("pad", [4, 2])
def test_train_crops_are_windows_of_the_zero_padded_image_maybe_flipped(pad):
    x, y = _identifiable(40)
    padded = np.zeros((40, 32 + 2 * pad, 32 + 2 * pad, 3), np.uint8)
    padded[:, pad : 32 + pad, pad : 32 + pad] = x
    offsets, flips = set(), set()
    for xb, yb in Loader(x, y, 20, train=True, mean=MEAN, std=STD, options=LoaderOptions(seed=3, pad=pad)):
        for img, i in zip(_unnormalise(xb), yb.tolist()):
            found = [
                (oy, ox, f)
                for oy in range(2 * pad + 1)
                for ox in range(2 * pad + 1)
                for f in (0, 1)
                if np.array_equal(
                    img, padded[i, oy : oy + 32, ox : ox + 32][:, ::-1] if f else padded[i, oy : oy + 32, ox : ox + 32]
                )
            ]
            assert found, f"sample {i} is not a crop of its padded image"
            offsets.add(found[0][:2])
            flips.add(found[0][2])
    assert len(offsets) > 10 and flips == {0, 1}  # crops and flips really vary


def test_flip_off_crops_but_never_mirrors_and_digits_say_so():
    x, y = _identifiable(40)
    padded = np.zeros((40, 40, 40, 3), np.uint8)
    padded[:, 4:36, 4:36] = x
    plain = Loader(x, y, 20, train=True, mean=MEAN, std=STD, options=LoaderOptions(seed=3, flip=False))
    offsets = set()
    for xb, yb in plain:
        for img, i in zip(_unnormalise(xb), yb.tolist()):
            found = [
                (oy, ox)
                for oy in range(9)
                for ox in range(9)
                if np.array_equal(img, padded[i, oy : oy + 32, ox : ox + 32])
            ]
            assert found, f"sample {i} is mirrored or not a crop"
            offsets.add(found[0])
    assert len(offsets) > 10
    # same random stream as with flips: the order and crops of an epoch do not depend on the flag
    flipped = Loader(x, y, 20, train=True, mean=MEAN, std=STD, options=LoaderOptions(seed=3))
    plain = Loader(x, y, 20, train=True, mean=MEAN, std=STD, options=LoaderOptions(seed=3, flip=False))
    assert [yb.tolist() for _, yb in flipped] == [yb.tolist() for _, yb in plain]
    assert load_dataset("digits").hflip is False  # a mirrored 2 is not a 2
    assert load_dataset("synthetic", limit_train=64, limit_test=16).hflip is True


def test_loader_determinism_and_set_epoch():
    x, y = _identifiable(48)
    mk = lambda seed=0: Loader(x, y, 16, train=True, mean=MEAN, std=STD, options=LoaderOptions(seed=seed))  # noqa: E731
    a, b = mk(), mk()
    ep0a, ep1a = list(a), list(a)  # iterating advances the epoch
    ep0b = list(b)
    for (xa, ya), (xb_, yb) in zip(ep0a, ep0b):
        assert torch.equal(xa, xb_) and torch.equal(ya, yb)
    assert not torch.equal(ep0a[0][0], ep1a[0][0])
    c = mk()
    c.set_epoch(1)  # a fresh process resuming at epoch 1
    for (xa, ya), (xc, yc) in zip(ep1a, list(c)):
        assert torch.equal(xa, xc) and torch.equal(ya, yc)
    assert not torch.equal(list(mk(seed=1))[0][1], ep0a[0][1])


def test_test_loader_normalises_only_in_order_and_covers_everything():
    x, y = _identifiable(37)
    loader = Loader(x, y, 16, train=False, mean=MEAN, std=STD)
    assert len(loader) == 3
    batches = list(loader)
    assert [len(yb) for _, yb in batches] == [16, 16, 5]
    xs = torch.cat([xb for xb, _ in batches])
    np.testing.assert_array_equal(torch.cat([yb for _, yb in batches]).numpy(), y)
    np.testing.assert_array_equal(_unnormalise(xs), x)
    expected = (
        torch.from_numpy(x).permute(0, 3, 1, 2).float() / 255 - torch.tensor(MEAN).view(1, 3, 1, 1)
    ) / torch.tensor(STD).view(1, 3, 1, 1)
    assert torch.allclose(xs, expected, rtol=1e-5, atol=1e-5)
    again = torch.cat([xb for xb, _ in loader])
    assert torch.equal(xs, again)


def test_loader_refuses_bad_input():
    x, y = _identifiable(10)
    with pytest.raises(UsageError, match="fewer than one batch"):
        Loader(x, y, 64, train=True, mean=MEAN, std=STD)
    with pytest.raises(ValueError):
        Loader(x.astype(np.float32), y, 4, train=True, mean=MEAN, std=STD)
    with pytest.raises(ValueError):
        Loader(x, y[:5], 4, train=False, mean=MEAN, std=STD)


def test_loader_reads_a_memmapped_dataset(tmp_path, c10):
    write_cifar10_batches(tmp_path / "cifar-10-batches-py", *c10)
    load_dataset("cifar10", tmp_path)
    ds = load_dataset("cifar10", tmp_path)
    assert isinstance(ds.train_x, np.memmap)
    xb, yb = next(iter(Loader(ds.test_x, ds.test_y, 64, train=False, mean=ds.mean, std=ds.std)))
    assert xb.shape == (10, 3, 32, 32)
    assert xb.mean(dim=(0, 2, 3)).abs().max() < 0.2  # normalised with the split's own statistics


# ------------------------------------------------------------------------------------ shared CIFAR-10


@pytest.mark.skipif(not SHARED_CIFAR10.is_file(), reason=f"{SHARED_CIFAR10} not present")
def test_shared_cifar10_copy_loads():
    """Decodes the 60,000 JPEGs into a fresh (tmp) cache: ~7 s on 2 quiet cores, ~15 s on a busy machine."""
    ds = load_dataset("cifar10", SHARED_CIFAR10.parent)
    assert ds.train_x.shape == (50000, 32, 32, 3) and ds.test_x.shape == (10000, 32, 32, 3)
    assert ds.classes == CIFAR10_CLASSES
    assert np.bincount(ds.train_y).tolist() == [5000] * 10 and np.bincount(ds.test_y).tolist() == [1000] * 10
    assert 0.40 < ds.mean[0] < 0.55 and 0.2 < ds.std[2] < 0.3
    assert DATASETS == ("cifar10", "cifar100", "digits", "synthetic", "folder")


def test_the_shipped_digits_are_scikit_learns_bytes_and_split():
    """digits.npz holds the very images, labels and split scikit-learn gives, so runs read the same
    numbers with or without it (skipped where scikit-learn is not installed)."""
    datasets = pytest.importorskip("sklearn.datasets")
    selection = pytest.importorskip("sklearn.model_selection")
    from filter_templates.data import digits

    bunch = datasets.load_digits()
    train, test = selection.train_test_split(
        np.arange(len(bunch.target)), test_size=digits.TEST_SIZE, stratify=bunch.target, random_state=0
    )
    gray = bunch.images * (255.0 / 16.0)
    big = np.clip(np.rint(digits.bilinear_resize(gray, (32, 32))), 0, 255).astype(np.uint8)
    x = np.repeat(big[..., None], 3, axis=3)
    ds = digits.load()
    assert np.array_equal(ds.train_x, x[np.sort(train)]) and np.array_equal(ds.test_x, x[np.sort(test)])
    assert np.array_equal(ds.train_y, bunch.target[np.sort(train)]) and np.array_equal(
        ds.test_y, bunch.target[np.sort(test)]
    )
    assert ds.train_y.dtype == np.int64 and ds.train_x.dtype == np.uint8
