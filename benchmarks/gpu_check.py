"""One GPU check, under 8 minutes on one H100: prints a short report of

  1. the CUDA-only tests (pytest, ``-k cuda``);
  2. CUDA throughput: ``benchmarks/throughput.py --device cuda`` (whole epochs of ``train()``,
     data and augmentation on the GPU, its measured precision / layout) against the plain loop and
     the four bare steps, among them bf16 + channels_last and fp32 + contiguous;
  3. CUDA peak training memory against the CPU account for the four families at w=1 (ratios);
  4. VGG-19 base vs uniform, ``--recipe fast``, 30 epochs on CIFAR-10 (final and best accuracy).

Each part has a time allowance; a part that cannot run (no data, no time left) says so. ``--dry-run``
runs every part on the CPU at toy sizes (synthetic data, 1 epoch, width 0.05): it checks imports,
arguments and the report, not the GPU.

    python benchmarks/gpu_check.py [--data-dir ../shared/datasets/cifar10-jpeg.tar.gz] [--width 0.5] [--write DIR]
    python benchmarks/gpu_check.py --dry-run

``--write docs/results/`` keeps the report as ``gpu_check.json`` (a dry run is never written).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from results_file import add_write_argument, write

from filter_templates.method import measure
from filter_templates.method.arch import make_arch
from filter_templates.models import family_names
from filter_templates.training.config import TrainConfig
from filter_templates.training.loop import train

REPO = Path(__file__).resolve().parents[1]
SHARED_CIFAR = REPO.parent / "shared" / "datasets" / "cifar10-jpeg.tar.gz"


class _Report(list):
    """The report's lines, each printed as it comes: a check cut off by a time limit still shows its parts."""

    def append(self, line: str) -> None:
        super().append(line)
        print(line, flush=True)


def _env() -> dict:
    return {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}


def part_tests(args, lines: list[str]) -> None:
    cmd = [sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", "-k", "cuda", str(REPO / "tests")]
    r = subprocess.run(cmd, cwd=REPO, env=_env(), capture_output=True, text=True, timeout=args.tests_timeout)
    tail = [line for line in r.stdout.strip().splitlines() if line.strip()][-1:] or ["(no output)"]
    lines.append(f"CUDA-only tests (pytest -k cuda): exit {r.returncode}; {tail[0]}")


def part_throughput(args, device: str, lines: list[str]) -> None:
    cmd = [
        sys.executable,
        str(REPO / "benchmarks" / "throughput.py"),
        "--device",
        device,
        "--json",
        "--images",
        str(args.images),
        "--rounds",
        str(args.rounds),
        "--bare-steps",
        str(args.bare_steps),
    ]
    if args.dry_run:
        cmd += ["--synthetic", "--width", "0.05", "--warmup", "1", "--threads", "1"]
    r = subprocess.run(cmd, cwd=REPO, env=_env(), capture_output=True, text=True, timeout=args.throughput_timeout)
    if r.returncode != 0:
        lines.append(f"throughput: FAILED ({r.stderr.strip().splitlines()[-1:] or r.returncode})")
        return
    doc = json.loads(r.stdout)
    ips = doc["images_per_s"]
    lines.append(f"throughput on {doc['device_name']} ({doc['model']}, batch {doc['batch_size']}, {doc['data']}):")
    lines.append(
        f"  ours {ips['ours']:.0f} img/s ({doc['ours_precision']}, {doc['ours_memory_format']}), "
        f"whole epoch {ips['ours_epoch']:.0f}, plain loop {ips['plain']:.0f}"
    )
    lines.append("  bare: " + ", ".join(f"{k[5:]} {v:.0f}" for k, v in ips.items() if k.startswith("bare")))
    bf16_cl, fp32 = ips.get("bare bf16 channels_last"), ips.get("bare fp32 contiguous")
    if bf16_cl and fp32:
        lines.append(f"  bf16+channels_last / fp32 contiguous = {bf16_cl / fp32:.2f}")
    lines.append(f"  ours/plain = {doc['ours_over_plain']:.2f}, ours/best-bare = {doc['ours_over_best_bare']:.3f}")


def part_memory(args, device: str, lines: list[str]) -> None:
    width = 0.05 if args.dry_run else 1.0
    lines.append(f"training memory at w={width:g}, batch 64 ({device} peak vs CPU account):")
    for family in family_names():
        arch = make_arch(family, "base", width, 10)
        account = measure.train_memory_bytes(measure.meta_model(arch), 64, device="cpu")
        peak = measure.train_memory_bytes(measure.meta_model(arch), 64, device=device)
        lines.append(
            f"  {family:<10} account {account / 2**20:8.1f} MiB  {device} {peak / 2**20:8.1f} MiB  "
            f"ratio {peak / account:.3f}"
        )


def part_accuracy(args, device: str, lines: list[str]) -> None:
    data = Path(args.data_dir) if args.data_dir else SHARED_CIFAR
    if args.dry_run:
        kw = dict(dataset="synthetic", limit_train=256, limit_test=64, epochs=1)
        width = 0.05
    elif not data.exists():
        lines.append(f"accuracy: skipped, no CIFAR-10 at {data} (pass --data-dir)")
        return
    else:
        kw = dict(dataset="cifar10", data_dir=str(data), epochs=args.epochs)
        width = args.width
    for template in ("base", "uniform"):
        t0 = time.perf_counter()
        config = TrainConfig(arch=make_arch("vgg19", template, width, 10), recipe="fast", device=device, **kw)

        def on_epoch(row: dict, template: str = template) -> None:
            if row["epoch"] % 5 == 0:
                print(
                    f"  ... vgg19 {template} epoch {row['epoch']}: test {row['test_acc']:.2%}, "
                    f"{row['images_per_s']:.0f} img/s",
                    flush=True,
                )

        with tempfile.TemporaryDirectory() as tmp:
            s = train(config, Path(tmp) / "run", progress=False, on_epoch=on_epoch)
        lines.append(
            f"vgg19 {template:<8} w={width:g} {config.epochs} epochs fast on {config.dataset}: final "
            f"{s['final_acc']:.2%}, best {s['best_acc']:.2%} ({s['precision']}, {s['memory_format']}, "
            f"{time.perf_counter() - t0:.0f} s)"
        )


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dry-run", action="store_true", help="every part on the CPU at toy sizes (no GPU needed)")
    p.add_argument("--data-dir", default=None, help=f"CIFAR-10 (default: {SHARED_CIFAR})")
    p.add_argument("--width", type=float, default=0.5, help="width of the base-vs-uniform runs (default 0.5)")
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--images", type=int, default=50_000, help="images per throughput epoch")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--bare-steps", type=int, default=200)
    p.add_argument("--tests-timeout", type=int, default=120)
    p.add_argument("--throughput-timeout", type=int, default=150)
    add_write_argument(p)
    args = p.parse_args(argv)
    if args.dry_run:
        args.images, args.rounds, args.bare_steps = 256, 1, 2
        device = "cpu"
    elif not torch.cuda.is_available():
        print("gpu_check: no CUDA device here; use --dry-run to check the script on a CPU", file=sys.stderr)
        return 2
    else:
        device = "cuda"
    t0 = time.perf_counter()
    lines = _Report()
    lines.append(
        f"gpu_check on {torch.cuda.get_device_name(0) if device == 'cuda' else 'CPU (dry run)'}, "
        f"torch {torch.__version__}"
    )
    for name, part in (
        ("tests", lambda: part_tests(args, lines)),
        ("throughput", lambda: part_throughput(args, device, lines)),
        ("memory", lambda: part_memory(args, device, lines)),
        ("accuracy", lambda: part_accuracy(args, device, lines)),
    ):
        started = time.perf_counter()
        try:
            part()
        except subprocess.TimeoutExpired:
            lines.append(f"{name}: did not finish within its allowance")
        lines.append(f"  ({name}: {time.perf_counter() - started:.0f} s)")
    lines.append(f"total {time.perf_counter() - t0:.0f} s")
    if args.write and not args.dry_run:
        data = "CIFAR-10" if "cifar10" in " ".join(lines) else "synthetic"
        write(
            args.write,
            "gpu_check",
            title="One GPU check: CUDA tests, throughput, memory, accuracy",
            numbers={"report": list(lines), "width": args.width, "epochs": args.epochs},
            seeds=[0],
            views=f"{data} test split, the fast recipe's views; throughput on training images",
            note="The report as printed, one line a row: CUDA-only tests, throughput against the plain loop "
            "and the bare steps, CUDA peak against the CPU account of training memory, VGG-19 base and "
            "uniform trained with the fast recipe.",
            table={"columns": ["report"], "rows": [[line] for line in lines]},
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
