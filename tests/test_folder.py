"""``--dataset folder``: a user's own image tree (or archive) at its own size, and the bad inputs."""

from __future__ import annotations

import json
import os
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from filter_templates.data import cache as data_cache
from filter_templates.data import data_shape, load_dataset
from filter_templates.data import folder
from filter_templates.errors import UsageError

CLASSES = ("cat", "dog", "emu")


def _image(rng: np.random.Generator, label: int, size: tuple[int, int], grey: bool) -> Image.Image:
    """A class-coloured image with noise: the class is learnable from colour alone."""
    w, h = size
    base = np.zeros((h, w, 3), np.float32)
    base[..., label % 3] = 200.0
    pix = np.clip(base + rng.normal(0, 30, (h, w, 3)), 0, 255).astype(np.uint8)
    im = Image.fromarray(pix, "RGB")
    return im.convert("L") if grey else im


def make_folder(root: Path, per_class: dict[str, int] | None = None, sizes: tuple[tuple[int, int], ...] = ((40, 40),),
                val: bool = False, seed: int = 0) -> Path:
    """train/ test/ (val/) of CLASSES with PNG and JPEG files, cycling through ``sizes``; every
    fifth image greyscale."""
    rng = np.random.default_rng(seed)
    per_class = per_class or {"train": 30, "test": 10, **({"val": 6} if val else {})}
    k = 0
    for split, n in per_class.items():
        for label, cls in enumerate(CLASSES):
            d = root / split / cls
            d.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                im = _image(rng, label, sizes[k % len(sizes)], grey=k % 5 == 4)
                im.save(d / (f"{i:03d}.png" if k % 2 else f"{i:03d}.jpg"), quality=95)
                k += 1
    return root


@pytest.fixture
def cache_home(tmp_path, monkeypatch):
    monkeypatch.setenv("FILTER_TEMPLATES_CACHE", str(tmp_path / "fallback-cache"))
    monkeypatch.setenv("FILTER_TEMPLATES_DECODE_WORKERS", "1")
    return tmp_path


def test_mixed_sizes_grey_and_rgb_load_at_the_size_asked(cache_home):
    root = make_folder(cache_home / "d", sizes=((40, 40), (64, 48), (30, 90)))
    ds = load_dataset("folder", root, image_size=48)
    assert ds.name == "folder" and ds.classes == CLASSES and ds.image_size == 48
    assert ds.train_x.shape == (90, 48, 48, 3) and ds.test_x.shape == (30, 48, 48, 3)
    assert ds.train_x.dtype == np.uint8 and isinstance(ds.train_x, np.memmap)  # from the cache
    assert list(np.bincount(ds.train_y)) == [30, 30, 30] and ds.val_y is None
    # classes in sorted folder order, and the colour of each class survives grey->RGB and resizing
    red = ds.train_x[ds.train_y == 0, ..., 0].mean()
    assert red > ds.train_x[ds.train_y == 1, ..., 0].mean() + 50
    grey = ds.train_x[4]  # the fifth image was greyscale: three equal channels
    assert np.array_equal(grey[..., 0], grey[..., 1]) and np.array_equal(grey[..., 1], grey[..., 2])
    # mean/std are the training split's own
    assert np.allclose(ds.mean, ds.train_x.reshape(-1, 3).mean(0) / 255, atol=1e-6)


def test_common_size_is_the_default_and_mixed_sizes_ask_for_one(cache_home):
    same = make_folder(cache_home / "same", sizes=((36, 36),))
    assert load_dataset("folder", same).image_size == 36
    assert data_shape("folder", str(same)) == (3, 36)
    mixed = make_folder(cache_home / "mixed", sizes=((36, 36), (40, 40)))
    with pytest.raises(UsageError, match=r"different sizes .*--image-size"):
        load_dataset("folder", mixed)
    oblong = make_folder(cache_home / "oblong", sizes=((40, 30),))
    with pytest.raises(UsageError, match="not square"):
        load_dataset("folder", oblong)


def test_resize_is_shorter_side_then_centre_crop(cache_home):
    root = cache_home / "d"
    for split in ("train", "test"):
        (root / split / "a").mkdir(parents=True)
        pix = np.zeros((40, 80, 3), np.uint8)  # 80 wide: left and right quarters red, centre green
        pix[:, :20, 0] = 255
        pix[:, 60:, 0] = 255
        pix[:, 20:60, 1] = 255
        Image.fromarray(pix).save(root / split / "a" / "x.png")
    ds = load_dataset("folder", root, image_size=20)
    assert ds.train_x.shape == (1, 20, 20, 3)
    x = ds.train_x[0].astype(int)  # only the green centre (the filter blends one edge column a little)
    assert x[:, 1:-1, 1].min() == 255 and x[:, 1:-1, 0].max() == 0 and x[..., 0].mean() < 10


def test_val_folder_is_the_validation_set(cache_home):
    ds = load_dataset("folder", make_folder(cache_home / "d", val=True), image_size=32)
    assert ds.val_x.shape == (18, 32, 32, 3) and list(np.bincount(ds.val_y)) == [6, 6, 6]
    again = load_dataset("folder", cache_home / "d", image_size=32)  # from the cache, with its val split
    assert np.array_equal(np.asarray(again.val_x), np.asarray(ds.val_x))


def test_tar_gz_equals_the_folder(cache_home):
    root = make_folder(cache_home / "tree" / "mydata", sizes=((40, 40), (50, 44)))
    archive = cache_home / "mydata.tar.gz"
    with tarfile.open(archive, "w:gz") as tf:
        tf.add(root, arcname="mydata")
    a = load_dataset("folder", root, image_size=32)
    b = load_dataset("folder", archive, image_size=32)
    assert b.classes == a.classes and np.array_equal(np.asarray(b.train_x), np.asarray(a.train_x))
    assert np.array_equal(b.test_y, a.test_y)


def test_cache_is_keyed_by_content_and_size(cache_home):
    root = make_folder(cache_home / "d")
    a = load_dataset("folder", root, image_size=32)
    assert load_dataset("folder", root, image_size=40).image_size == 40
    entries = sorted(p.name for p in (root / data_cache.CACHE_DIRNAME).iterdir())
    assert len(entries) == 2 and not any(".tmp-" in e for e in entries)
    meta = json.loads((root / data_cache.CACHE_DIRNAME / entries[0] / "meta.json").read_text())
    assert meta["classes"] == list(CLASSES)
    img = root / "train" / "cat" / "000.jpg"  # change one file: decoded again
    _image(np.random.default_rng(9), 2, (40, 40), False).save(img)
    os.utime(img, ns=(1, 1))
    b = load_dataset("folder", root, image_size=32)
    assert not np.array_equal(np.asarray(a.train_x[0]), np.asarray(b.train_x[0]))


def _bad(root: Path) -> str:
    with pytest.raises(UsageError) as e:
        load_dataset("folder", root, image_size=32)
    assert "\n" not in str(e.value)
    return str(e.value)


def test_bad_inputs_are_one_line_naming_the_path(cache_home):
    root = make_folder(cache_home / "d", per_class={"train": 3, "test": 2})
    (root / "train" / "fox").mkdir()
    assert str(root / "train" / "fox") in _bad(root) and "empty" in _bad(root)
    (root / "train" / "fox").rmdir()
    (root / "test" / "owl").mkdir()
    (root / "test" / "owl" / "a.png").write_bytes(next((root / "test" / "cat").iterdir()).read_bytes())
    assert "'owl' is not among the training classes" in _bad(root)
    (root / "test" / "owl" / "a.png").unlink()
    (root / "test" / "owl").rmdir()
    broken = root / "train" / "dog" / "002.png"
    broken.write_bytes(b"not an image")
    assert str(broken) in _bad(root) and "cannot decode" in _bad(root)
    assert not [p for p in (root / data_cache.CACHE_DIRNAME).iterdir()]  # nothing half-written
    assert "does not exist" in _bad(cache_home / "nowhere")
    (cache_home / "file.txt").write_text("x")
    assert "not a folder or a tar archive" in _bad(cache_home / "file.txt")
    (cache_home / "empty").mkdir()
    assert "expected train/<class>/ and test/<class>/" in _bad(cache_home / "empty")
    with pytest.raises(UsageError, match="needs --data-dir"):
        load_dataset("folder", None)
    with pytest.raises(UsageError, match="applies to --dataset folder"):
        load_dataset("digits", image_size=48)


def test_missing_test_split_and_corrupt_archive(cache_home):
    root = make_folder(cache_home / "d", per_class={"train": 2})
    assert "no test/ folder" in _bad(root)
    bad = cache_home / "x.tar.gz"
    bad.write_bytes(b"\x1f\x8b\x08\x00garbage")
    assert "cannot read the archive" in _bad(bad)


def test_decoding_in_chunks_with_workers_matches_one_process(cache_home, monkeypatch):
    from filter_templates.data import images

    root = make_folder(cache_home / "d", per_class={"train": 20, "test": 4}, sizes=((40, 40), (33, 50)))
    items = [(str(p), p) for p in sorted((root / "train").rglob("*.*"))]
    one = images.decode_images(items, (32, 32), resize=True)
    monkeypatch.setattr(images, "_CHUNK", 7)
    monkeypatch.setenv("FILTER_TEMPLATES_DECODE_WORKERS", "2")
    out = np.zeros_like(one)
    images.decode_images(items, (32, 32), resize=True, out=out)
    assert np.array_equal(one, out)
