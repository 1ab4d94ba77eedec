"""A training split larger than its memory budget: anonymous memory and throughput of the streamed path.

Generates a folder of ``--images`` random-texture JPEGs of ``--size`` px in ten classes (over 2 GB
once decoded into the cache at the defaults: 42,000 x 128 x 128 x 3 bytes), in a few processes,
and decodes it into its cache once. Then, in this process:

1. **One epoch of the whole folder** with ``train()`` and ``data_memory`` ``--data-memory`` (256 MiB),
   while a thread samples ``RssAnon`` from ``/proc/self/status`` every 20 ms: the process's
   anonymous memory, which the memory-mapped cache's pages are not part of (they are file pages
   the kernel may drop). Its peak is recorded, with the epoch's images/s.
2. **Streamed against resident**, on the first ``--subset`` images of the same cache (small enough
   to hold): the same model takes the training steps of ``--steps`` batches fed by the resident
   ``Loader`` and by the streamed one in turn, ``--rounds`` times alternating, so a machine shared
   with other work slows both alike; images/s of each round and the ratio of the medians.

The folder and its cache are deleted at the end (``--keep`` keeps them for another run).

    python benchmarks/streaming.py [--images 42000 --size 128 --subset 4000] [--write docs/results/]
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import shutil
import statistics
import threading
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from results_file import add_write_argument, command_line, write

from filter_templates.core.validate import byte_size
from filter_templates.data import load_dataset
from filter_templates.data.augment import Loader, LoaderOptions
from filter_templates.data.stream import padded_bytes
from filter_templates.method.arch import make_arch
from filter_templates.training.config import TrainConfig
from filter_templates.training.loop import sgd_step, train

CLASSES = 10
TEST_IMAGES = 500


def _make_images(job: tuple[Path, int, int, int]) -> None:
    """Images ``start..stop`` of one split: smooth random colour fields with noise (JPEG decodes them fast)."""
    folder, start, stop, size = job
    rng = np.random.default_rng(start)
    for i in range(start, stop):
        low = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
        img = np.asarray(Image.fromarray(low).resize((size, size), Image.BILINEAR), dtype=np.int16)
        img = np.clip(img + rng.integers(-12, 13, img.shape), 0, 255).astype(np.uint8)
        Image.fromarray(img).save(folder / f"{i % CLASSES}" / f"{i:06d}.jpg", quality=90)


def make_folder(root: Path, images: int, size: int, procs: int) -> Path:
    """``root``/train|test/<class>/*.jpg, generated in ``procs`` processes."""
    jobs = []
    for split, n in (("train", images), ("test", TEST_IMAGES)):
        for c in range(CLASSES):
            (root / split / str(c)).mkdir(parents=True, exist_ok=True)
        step = -(-n // (procs * 4))
        jobs += [(root / split, s, min(n, s + step), size) for s in range(0, n, step)]
    with multiprocessing.get_context("spawn").Pool(procs) as pool:
        pool.map(_make_images, jobs)
    return root


def rss_anon() -> int:
    """This process's anonymous resident memory in bytes (``RssAnon``; file-backed pages excluded)."""
    with open("/proc/self/status", encoding="utf-8") as f:
        for line in f:
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no RssAnon in /proc/self/status")


class PeakSampler:
    """The highest :func:`rss_anon` seen, sampled every ``every`` seconds on a thread."""

    def __init__(self, every: float = 0.02) -> None:
        self.every, self.peak, self._stop = every, rss_anon(), threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.every):
            self.peak = max(self.peak, rss_anon())

    def __enter__(self) -> "PeakSampler":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss_anon())


def _arch(args: argparse.Namespace):
    return make_arch("vgg19", "uniform", args.width, CLASSES, image_size=args.size)


def whole_epoch(args: argparse.Namespace, folder: Path) -> dict:
    """One epoch of every image with ``data_memory``: peak RssAnon and images/s."""
    config = TrainConfig(
        arch=_arch(args),
        dataset="folder",
        data_dir=str(folder),
        image_size=args.size,
        epochs=1,
        batch_size=args.batch_size,
        data_memory=args.data_memory,
        precision="fp32",
        threads=args.threads,
        tta=False,
    )
    before = rss_anon()
    with PeakSampler() as sampler:
        summary = train(config, args.workdir / "run")
    row = summary["metrics"][0]
    return {
        "images": summary["data"]["train"],
        "rss_anon_before_bytes": before,
        "rss_anon_peak_bytes": sampler.peak,
        "images_per_s": row["images_per_s"],
        "epoch_seconds": row["seconds"],
        "status": summary["status"],
    }


def _steps(model: torch.nn.Module, opt: torch.optim.Optimizer, loader: Loader, steps: int) -> float:
    """Images/s of ``steps`` training steps fed by ``loader``."""
    t0, seen = time.perf_counter(), 0
    for i, (x, y) in enumerate(loader):
        if i == steps:
            break
        sgd_step(model, opt, x, y, amp=False)
        seen += len(y)
    return seen / (time.perf_counter() - t0)


def compare(args: argparse.Namespace, folder: Path) -> dict:
    """Resident against streamed on the first ``--subset`` images, alternating."""
    ds = load_dataset("folder", data_dir=str(folder), image_size=args.size)
    x, y = ds.train_x[: args.subset], ds.train_y[: args.subset]
    torch.manual_seed(0)
    model = _arch(args).build().to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    model.train()
    rates: dict[str, list[float]] = {"resident": [], "streamed": []}
    for _ in range(args.rounds):
        for path, memory in (("resident", None), ("streamed", args.data_memory)):
            loader = Loader(
                x,
                y,
                args.batch_size,
                train=True,
                mean=ds.mean,
                std=ds.std,
                options=LoaderOptions(pad=args.size // 8, memory=memory),
            )
            assert (loader.stream is not None) == (path == "streamed")
            rates[path].append(round(_steps(model, opt, loader, args.steps), 1))
            del loader
    med = {k: statistics.median(v) for k, v in rates.items()}
    return {
        "images": int(args.subset),
        "padded_bytes": padded_bytes(x.shape, args.size // 8),
        "images_per_s": rates,
        "median": med,
        "ratio": round(med["streamed"] / med["resident"], 3),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--images", type=int, default=42_000)
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--subset", type=int, default=4_000)
    p.add_argument("--data-memory", type=byte_size, default=byte_size("256MiB"))
    p.add_argument("--width", type=float, default=0.02)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--steps", type=int, default=40, help="training steps per round of the comparison")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.add_argument("--procs", type=int, default=max(1, min(4, os.cpu_count() or 1)), help="image generators")
    p.add_argument("--workdir", type=Path, default=Path("/tmp/filter-templates-streaming"))
    p.add_argument("--keep", action="store_true", help="keep the folder and its cache")
    add_write_argument(p)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    folder = args.workdir / "images"
    try:
        t0 = time.perf_counter()
        if not (folder / "test").is_dir():
            make_folder(folder, args.images, args.size, args.procs)
        generated = time.perf_counter() - t0
        t0 = time.perf_counter()
        ds = load_dataset("folder", data_dir=str(folder), image_size=args.size)  # decoded into the cache once
        cached = {
            "bytes": int(ds.train_x.nbytes + ds.test_x.nbytes),
            "seconds": round(time.perf_counter() - t0, 1),
            "generate_seconds": round(generated, 1),
            "memory_mapped": isinstance(ds.train_x, np.memmap),
        }
        del ds
        numbers = {
            "cache": cached,
            "data_memory_bytes": args.data_memory,
            "epoch": whole_epoch(args, folder),
            "subset": compare(args, folder),
        }
    finally:
        if not args.keep:
            shutil.rmtree(args.workdir, ignore_errors=True)
    print(numbers)
    if args.write:
        e, s = numbers["epoch"], numbers["subset"]
        write(
            args.write,
            "streaming",
            title="Streaming a training split larger than its memory budget",
            numbers=numbers,
            seeds=[0],
            command=command_line(),
            views=f"{args.images:,} generated {args.size} px JPEGs in {CLASSES} classes ({cached['bytes'] / 1e9:.2f} GB "
            f"cached), one epoch; comparison on the first {args.subset:,}, {args.rounds} alternating rounds "
            f"of {args.steps} steps",
            table={
                "columns": ["measure", "value"],
                "rows": [
                    ["peak RssAnon, one epoch streamed (GB)", round(e["rss_anon_peak_bytes"] / 1e9, 3)],
                    ["images/s, one epoch streamed", e["images_per_s"]],
                    ["images/s resident, subset (median)", s["median"]["resident"]],
                    ["images/s streamed, subset (median)", s["median"]["streamed"]],
                    ["streamed / resident", s["ratio"]],
                ],
            },
            note=f"vgg19 uniform w{args.width:g} at {args.size} px, batch {args.batch_size}, fp32, "
            f"{args.threads} thread(s), data_memory {args.data_memory / 2**20:.0f} MiB, on a machine shared "
            "with other jobs (the comparison alternates so both paths see the same load).",
        )


if __name__ == "__main__":
    main()
