"""Training throughput on a folder of your own images at 64 px against CIFAR-10 at 32 px.

The folder is made from the shared CIFAR-10 copy (``<repo>/../shared/datasets/cifar10-jpeg.tar.gz``):
three classes (airplane, cat, ship), the first 300 training and 100 test images of each,
upscaled (bicubic) to PNGs of 48 and 64 px in turn, so it has two sizes and needs ``--image-size``. Both
datasets then train the same model with ``train()`` itself, the same number of images
(``--images``, a seeded sample of CIFAR-10), alternating round after round; the second epoch's
images/s (what ``train()`` records) counts, the best round of each. Pixels/s is images/s times
the image's pixels: a convolutional network's work grows with the pixels, so at 4x the pixels
about 1/4 of the images/s is what to expect. Also timed: decoding the folder into the cache
once (images/s of the first load; later loads memory-map it).

    python benchmarks/folder_throughput.py [--model vgg19 --width 0.1] [--images 600] [--rounds 2] \
        [--write docs/results/]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import tarfile
import tempfile
import time
from pathlib import Path

import torch
from PIL import Image
from results_file import add_write_argument, write

from filter_templates.data import load_dataset
from filter_templates.method.arch import make_arch
from filter_templates.training.config import TrainConfig
from filter_templates.training.loop import train

REPO = Path(__file__).resolve().parents[1]
SHARED_CIFAR = REPO.parent / "shared" / "datasets" / "cifar10-jpeg.tar.gz"
CLASSES = ("airplane", "cat", "ship")
PER_SPLIT = {"train": 300, "test": 100}
SIZES = (48, 64)


def make_folder(out: Path, archive: Path = SHARED_CIFAR) -> Path:
    """``out``/train|test/<class>/*.png: CIFAR-10 images of three classes upscaled to 48 and 64 px
    in turn (deterministic: the archive's first images of each class, in name order)."""
    if (out / "train").is_dir():
        return out
    wanted: dict[str, bytes] = {}
    with tarfile.open(archive, "r:gz") as tf:
        for m in tf:
            parts = m.name.split("/")
            if m.isfile() and len(parts) == 3 and parts[1] in CLASSES and parts[0] in PER_SPLIT:
                fh = tf.extractfile(m)
                assert fh is not None
                wanted[m.name] = fh.read()
    tmp = Path(tempfile.mkdtemp(prefix=".folder-", dir=out.parent))
    for split, n in PER_SPLIT.items():
        for cls in CLASSES:
            (tmp / split / cls).mkdir(parents=True)
            names = sorted(k for k in wanted if k.startswith(f"{split}/{cls}/"))[:n]
            for i, name in enumerate(names):
                side = SIZES[i % len(SIZES)]
                with Image.open(io.BytesIO(wanted[name])) as im:
                    im.convert("RGB").resize((side, side), Image.Resampling.BICUBIC).save(
                        tmp / split / cls / (Path(name).stem + ".png")
                    )
    os.replace(tmp, out)
    return out


def _epoch_rate(config: TrainConfig) -> float:
    """Images/s of the second epoch of ``train()`` (the first includes the start-up)."""
    with tempfile.TemporaryDirectory() as d:
        summary = train(config, Path(d) / "run", progress=False)
    return float(summary["metrics"][-1]["images_per_s"])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--folder", default="/tmp/filter-templates-cifar3", help="where the folder dataset is made")
    p.add_argument("--model", default="vgg19")
    p.add_argument("--width", type=float, default=0.1)
    p.add_argument("--size", type=int, default=64, help="image size of the folder dataset (default: 64)")
    p.add_argument("--images", type=int, default=600, help="training images of each dataset (the folder has 900)")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json", action="store_true")
    add_write_argument(p)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    folder = make_folder(Path(args.folder))
    shutil.rmtree(folder / ".filter-templates-cache", ignore_errors=True)
    t0 = time.perf_counter()
    ds = load_dataset("folder", folder, image_size=args.size)
    decode_s = time.perf_counter() - t0
    n_decoded = len(ds.train_y) + len(ds.test_y)

    cifar_dir = str(SHARED_CIFAR.parent)
    load_dataset("cifar10", cifar_dir)  # decoded once into the cache before any timing
    common = dict(
        epochs=2,
        seed=0,
        limit_test=300,
        device="cpu",
        threads=args.threads,
        precision="fp32",
        memory_format="channels_last",
    )
    configs = {
        "cifar10_32": TrainConfig(
            arch=make_arch(args.model, "uniform", args.width, 10),
            dataset="cifar10",
            data_dir=cifar_dir,
            limit_train=args.images,
            **common,
        ),
        f"folder_{args.size}": TrainConfig(
            arch=make_arch(args.model, "uniform", args.width, len(CLASSES), image_size=args.size),
            dataset="folder",
            data_dir=str(folder),
            image_size=args.size,
            limit_train=args.images,
            **common,
        ),
    }
    rounds: dict[str, list[float]] = {k: [] for k in configs}
    for _ in range(args.rounds):
        for name, config in configs.items():  # alternating: both see the same load on a shared machine
            rounds[name].append(_epoch_rate(config))
    side = {"cifar10_32": 32, f"folder_{args.size}": args.size}
    best = {k: max(v) for k, v in rounds.items()}
    numbers = {
        "model": f"{args.model} uniform w{args.width:g}",
        "images": args.images,
        "threads": args.threads,
        "rounds": rounds,
        "images_per_s": best,
        "pixels_per_s": {k: round(best[k] * side[k] ** 2) for k in best},
        "images_per_s_ratio": round(best[f"folder_{args.size}"] / best["cifar10_32"], 3),
        "pixels_per_s_ratio": round(best[f"folder_{args.size}"] * args.size**2 / (best["cifar10_32"] * 32**2), 3),
        "folder_decode": {
            "images": n_decoded,
            "seconds": round(decode_s, 2),
            "images_per_s": round(n_decoded / decode_s, 1),
        },
    }
    print(json.dumps(numbers) if args.json else "\n".join(f"{k}: {v}" for k, v in numbers.items()))
    if args.write:
        _write(args, numbers, side)


def _write(args: argparse.Namespace, numbers: dict, side: dict) -> None:
    best = numbers["images_per_s"]
    write(
        args.write,
        "folder_throughput",
        title=f"Training throughput: a {args.size} px folder against CIFAR-10 at 32 px",
        numbers=numbers,
        seeds=[0],
        views=f"{args.images} training images each (CIFAR-10: a seeded sample; folder: 3 CIFAR-10 classes "
        f"upscaled to 48/64 px PNGs, resized to {args.size}); epoch 2 of train(), best of "
        f"{args.rounds} rounds",
        table={
            "columns": ["dataset", "px", "img/s", "pixels/s"],
            "rows": [[k, side[k], best[k], numbers["pixels_per_s"][k]] for k in best],
        },
        note=f"{args.model} uniform w{args.width:g}, fp32, channels_last, {args.threads} thread(s), nice'd "
        f"on a shared machine; the folder was decoded into the cache once in "
        f"{numbers['folder_decode']['seconds']} s.",
    )


if __name__ == "__main__":
    main()
