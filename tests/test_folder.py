"""``--dataset folder``: a user's own image tree (or archive) at its own size, and the bad inputs."""

from __future__ import annotations

import json
import os
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from filter_templates.core.errors import UsageError
from filter_templates.data import cache as data_cache
from filter_templates.data import data_facts, folder, load_dataset

CLASSES = ("cat", "dog", "emu")


def _image(rng: np.random.Generator, label: int, size: tuple[int, int], grey: bool) -> Image.Image:
    """A class-coloured image with noise: the class is learnable from colour alone."""
    w, h = size
    base = np.zeros((h, w, 3), np.float32)
    base[..., label % 3] = 200.0
    pix = np.clip(base + rng.normal(0, 30, (h, w, 3)), 0, 255).astype(np.uint8)
    im = Image.fromarray(pix, "RGB")
    return im.convert("L") if grey else im


def make_folder(
    root: Path,
    per_class: dict[str, int] | None = None,
    sizes: tuple[tuple[int, int], ...] = ((40, 40),),
    val: bool = False,
    seed: int = 0,
) -> Path:
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
    facts = data_facts({"dataset": "folder", "data_dir": str(same)})
    assert (facts.classes, facts.image_size, facts.own_val_images) == (3, 36, 0) and facts.digest
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


# ------------------------------------------------------------------------- models follow the size


def test_study_families_keep_their_parameters_and_scale_their_flops():
    from filter_templates.method.arch import make_arch
    from filter_templates.method.measure import arch_flops, arch_params

    for family, params in (
        ("vgg19", 20_040_522),
        ("resnet50", 23_520_842),
        ("googlenet", 6_166_250),
        ("mobilenet", 3_217_226),
    ):
        a32, a64 = make_arch(family), make_arch(family, image_size=64)
        assert arch_params(a32) == arch_params(a64) == params
        assert 3.99 < arch_flops(a64) / arch_flops(a32) <= 4.0
    with pytest.raises(UsageError, match="at least 32x32"):
        make_arch("vgg19", image_size=16)


def test_a_built_model_runs_and_counts_at_its_size():
    import torch

    from filter_templates.method.arch import make_arch
    from filter_templates.method.measure import arch_flops, count_flops, input_shape_of, resources

    arch = make_arch("vgg19", "uniform", 0.05, 3, image_size=48)
    model = arch.build().eval()
    assert model(torch.zeros(2, 3, 48, 48)).shape == (2, 3)
    assert count_flops(model, input_shape_of(arch)) == arch_flops(arch)
    res = resources(arch, 8, "cpu", latency=False)
    small = resources(make_arch("vgg19", "uniform", 0.05, 3), 8, "cpu", latency=False)
    assert res["image_size"] == 48 and res["train_memory_bytes"] > 2 * small["train_memory_bytes"]


class _Flat48(__import__("torch").nn.Module):
    """A network whose classifier is sized for 48 px inputs (a flatten of a 24x24 map)."""

    def __init__(self, num_classes: int = 10) -> None:
        import torch.nn as nn

        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.fc = nn.Linear(8 * 24 * 24, num_classes)

    def forward(self, x):
        import torch.nn.functional as F

        return self.fc(F.max_pool2d(F.relu(self.bn(self.conv(x))), 2).flatten(1))


def test_user_model_is_discovered_at_the_data_size():
    import torch

    from filter_templates.method.arch import make_arch
    from filter_templates.method.measure import arch_params
    from filter_templates.models import resolve_model

    with pytest.raises(UsageError, match=r"\[2, 3, 32, 32\]"):
        resolve_model(_Flat48, name="test_folder:flat48")
    name = resolve_model(_Flat48, name="test_folder:flat48", image_size=48)
    arch = make_arch(name, "uniform", 2.0, 3, image_size=48)
    assert arch.filters == (16,) and arch_params(arch) == 3 * 16 * 9 + 16 + 2 * 16 + (16 * 24 * 24 + 1) * 3
    assert arch.build()(torch.zeros(1, 3, 48, 48)).shape == (1, 3)


def test_train_config_size_is_a_result_field_left_out_at_32():
    from filter_templates.method.arch import make_arch
    from filter_templates.training.config import TrainConfig, experiment

    with pytest.raises(UsageError, match="built for 48 px"):
        TrainConfig(arch=make_arch("vgg19", "uniform", 0.05, 3, image_size=48), dataset="folder", image_size=32)
    at32 = TrainConfig(arch=make_arch("vgg19", "uniform", 0.05, 10), dataset="digits").to_dict()
    assert "image_size" not in experiment(at32) and "image_size" not in at32["arch"]
    at48 = TrainConfig(
        arch=make_arch("vgg19", "uniform", 0.05, 3, image_size=48), dataset="folder", image_size=48
    ).to_dict()
    assert experiment(at48)["image_size"] == 48 and at48["arch"]["image_size"] == 48
    assert TrainConfig.from_dict(at48).arch.image_size == 48


def test_store_rows_carry_the_size(tmp_path):
    from filter_templates.method.arch import make_arch
    from filter_templates.sweep.store import Store
    from filter_templates.training.config import TrainConfig

    cfgs = [
        TrainConfig(arch=make_arch("vgg19", "uniform", 0.05, 3, image_size=s), dataset="folder", image_size=s)
        for s in (32, 48)
    ]
    with Store(tmp_path / "r.sqlite") as st:
        assert st.add_points([(c.to_dict(), str(tmp_path / f"run{i}")) for i, c in enumerate(cfgs)]) == 2
        assert sorted(r["image_size"] for r in st.rows()) == [32, 48]


@pytest.mark.filterwarnings("ignore:`torch.jit:DeprecationWarning")
def test_train_on_a_folder_records_its_size_and_exports_for_it(cache_home, capsys):
    import torch

    from filter_templates.cli import main

    data = make_folder(cache_home / "d", per_class={"train": 12, "test": 4}, sizes=((36, 36),))
    run = cache_home / "run"
    assert (
        main(
            [
                "train",
                "--model",
                "vgg19",
                "--template",
                "uniform",
                "--width",
                "0.03",
                "--dataset",
                "folder",
                "--data-dir",
                str(data),
                "--epochs",
                "1",
                "--batch-size",
                "16",
                "--threads",
                "1",
                "--out",
                str(run),
                "--quiet",
            ]
        )
        == 0
    )
    config = json.loads((run / "config.json").read_text())
    summary = json.loads((run / "summary.json").read_text())
    assert config["image_size"] == 36 and config["arch"]["image_size"] == 36 and config["arch"]["classes"] == 3
    assert summary["data"]["classes"] == list(CLASSES) and summary["data"]["image_size"] == 36
    assert summary["resources"]["image_size"] == 36
    assert main(["export", "--run", str(run), "--format", "torchscript", "--json"]) == 0
    traced = torch.jit.load(json.loads(capsys.readouterr().out)["path"])
    assert traced(torch.zeros(2, 3, 36, 36)).shape == (2, 3)
    assert (
        main(
            [
                "train",
                "--model",
                "vgg19",
                "--dataset",
                "folder",
                "--data-dir",
                str(data),
                "--image-size",
                "4",
                "--out",
                str(cache_home / "r2"),
            ]
        )
        == 2
    )
    assert "--image-size" in capsys.readouterr().err


def test_a_fitted_record_brings_its_size_to_train(cache_home):
    """A model fitted for 40 px images trains at 40 px: the record's size is the default."""
    from filter_templates.cli import main

    data = make_folder(cache_home / "d", per_class={"train": 12, "test": 4}, sizes=((36, 36),))
    assert (
        main(
            [
                "fit",
                "--model",
                "vgg19",
                "--template",
                "uniform",
                "--budget",
                "params=2K",
                "--classes",
                "3",
                "--image-size",
                "40",
                "--save",
                str(cache_home / "fits"),
            ]
        )
        == 0
    )
    saved = next((cache_home / "fits").iterdir())
    assert (
        main(
            [
                "train",
                "--config",
                str(saved),
                "--dataset",
                "folder",
                "--data-dir",
                str(data),
                "--epochs",
                "1",
                "--batch-size",
                "16",
                "--threads",
                "1",
                "--out",
                str(cache_home / "r3"),
                "--quiet",
            ]
        )
        == 0
    )
    assert json.loads((cache_home / "r3" / "config.json").read_text())["image_size"] == 40


@pytest.mark.slow  # the ONNX exporter takes ~20-80 s on a shared 2-core machine
def test_onnx_export_takes_the_run_size(tmp_path):
    pytest.importorskip("onnx")
    pytest.importorskip("onnxscript")
    ort = pytest.importorskip("onnxruntime")
    import torch

    from filter_templates.core import rundir
    from filter_templates.export import export_run
    from filter_templates.method.arch import make_arch

    arch = make_arch("vgg19", "uniform", 0.03, 3, image_size=48)
    torch.manual_seed(0)
    model = arch.build().eval()
    (tmp_path / "run").mkdir()
    rundir.atomic_write_json(tmp_path / "run" / rundir.CONFIG, {"arch": arch.to_dict(), "dataset": "folder"})
    rundir.atomic_save(model.state_dict(), tmp_path / "run" / rundir.MODEL)
    path = export_run(tmp_path / "run", "onnx")
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert session.get_inputs()[0].shape[1:] == [3, 48, 48]
    x = torch.randn(2, 3, 48, 48)
    (got,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    with torch.no_grad():
        torch.testing.assert_close(torch.from_numpy(got), model(x), rtol=1e-4, atol=1e-5)


# ---- what the data are: a folder's content digest in its runs' identity ----------------------------


def _grid_config(data: Path):
    from filter_templates.sweep.grid import SweepSpec, plan_grid

    spec = SweepSpec(
        models=["vgg19"],
        templates=["uniform"],
        widths=[0.03],
        datasets=["folder"],
        train={"data_dir": str(data), "epochs": 1, "batch_size": 16, "threads": 1},
    )
    (config,) = plan_grid(spec).configs
    return config


def test_two_folders_are_two_experiments_and_a_moved_folder_is_the_same(cache_home):
    """Same names, sizes and settings, other images: other keys, so one store keeps both, a sweep
    skips neither and the report splits them. The same folder moved keeps its key."""
    from filter_templates.report.settings import setting
    from filter_templates.sweep.store import Store, point_key

    a = make_folder(cache_home / "a", per_class={"train": 12, "test": 4}, sizes=((36, 36),), seed=1)
    b = make_folder(cache_home / "b", per_class={"train": 12, "test": 4}, sizes=((36, 36),), seed=2)
    ca, cb = _grid_config(a), _grid_config(b)
    assert ca.data_digest == folder.digest(a) and cb.data_digest == folder.digest(b)
    assert ca.data_digest != cb.data_digest and ca.data_dir != cb.data_dir
    assert point_key(ca.to_dict()) != point_key(cb.to_dict())
    assert setting(ca.to_dict())["data_digest"] != setting(cb.to_dict())["data_digest"]  # two report rows
    with Store(cache_home / "r.sqlite") as st:
        assert st.add_points([(c.to_dict(), str(cache_home / n)) for n, c in (("ra", ca), ("rb", cb))]) == 2
    moved = cache_home / "elsewhere" / "a-moved"
    moved.parent.mkdir()
    os.rename(a, moved)
    cm = _grid_config(moved)
    assert cm.data_dir != ca.data_dir and point_key(cm.to_dict()) == point_key(ca.to_dict())
    assert load_dataset("folder", moved).digest == ca.data_digest  # and its cache moved with it
    (moved / "train" / "cat" / "000.jpg").unlink()  # a file less: other images
    assert folder.digest(moved) != ca.data_digest


def test_archive_digest_follows_its_content(cache_home):
    root = make_folder(cache_home / "tree" / "mydata", per_class={"train": 6, "test": 2}, sizes=((36, 36),))
    archive = cache_home / "mydata.tar.gz"
    with tarfile.open(archive, "w:gz") as tf:
        tf.add(root, arcname="mydata")
    first = folder.digest(archive)
    (cache_home / "moved").mkdir()
    assert folder.digest(archive.rename(cache_home / "moved" / archive.name)) == first
    with tarfile.open(cache_home / "other.tar.gz", "w:gz") as tf:
        tf.add(root / "train", arcname="mydata/train")
        tf.add(root / "test", arcname="mydata/test")
        tf.add(root / "train" / "cat" / "000.jpg", arcname="mydata/test/cat/extra.jpg")
    assert folder.digest(cache_home / "other.tar.gz") != first


def test_built_in_datasets_and_older_records_keep_their_identity():
    from filter_templates.data import data_digest_for
    from filter_templates.method.arch import make_arch
    from filter_templates.training.config import TrainConfig, experiment

    config = TrainConfig(arch=make_arch("vgg19", "uniform", 0.05, 10), dataset="digits")
    assert config.data_digest is None and data_digest_for(config) is None
    older = config.to_dict()
    del older["data_digest"]  # a record written before the field
    assert experiment(older) == experiment(config.to_dict()) and "data_digest" not in experiment(older)
    assert TrainConfig.from_dict(older).data_digest is None
    with pytest.raises(UsageError, match="data_digest"):
        TrainConfig(arch=make_arch("vgg19", "uniform", 0.05, 10), dataset="digits", data_digest=5)


def test_train_records_the_digest_resumes_a_moved_folder_and_refuses_other_images(cache_home, capsys):
    from filter_templates.cli import main
    from filter_templates.training.loop import train

    a = make_folder(cache_home / "a", per_class={"train": 12, "test": 4}, sizes=((36, 36),), seed=1)
    b = make_folder(cache_home / "b", per_class={"train": 12, "test": 4}, sizes=((36, 36),), seed=2)
    run = cache_home / "run"
    argv = [
        "train",
        "--model",
        "vgg19",
        "--template",
        "uniform",
        "--width",
        "0.03",
        "--dataset",
        "folder",
        "--epochs",
        "1",
        "--batch-size",
        "16",
        "--threads",
        "1",
        "--out",
        str(run),
        "--quiet",
    ]
    assert main([*argv, "--data-dir", str(a)]) == 0
    config = json.loads((run / "config.json").read_text())
    summary = json.loads((run / "summary.json").read_text())
    assert config["data_digest"] == summary["data"]["digest"] == folder.digest(a)
    os.rename(a, cache_home / "a-moved")  # the same images elsewhere: the same run, resumed
    assert main([*argv, "--data-dir", str(cache_home / "a-moved"), "--resume"]) == 0
    capsys.readouterr()
    assert main([*argv, "--data-dir", str(b), "--resume"]) == 2  # other images: another experiment
    assert "data_digest" in capsys.readouterr().err
    # a run planned for some images does not train on others that took their place
    planned = _grid_config(cache_home / "a-moved")
    (cache_home / "a-moved" / "train" / "dog" / "001.png").unlink()
    with pytest.raises(UsageError, match="not the images the run was planned for"):
        train(planned, cache_home / "run2")
    assert not (cache_home / "run2").exists()


def test_one_home_for_the_data_arguments():
    """Every run reads its data through data.load_data_for: a new data setting has one place to go."""
    import filter_templates

    package = Path(filter_templates.__file__).parent
    callers = sorted(
        str(p.relative_to(package))
        for p in package.rglob("*.py")
        if p.name != "__init__.py" or p.parent.name != "data"
        if "load_data(" in p.read_text(encoding="utf-8")
    )
    assert callers == []
