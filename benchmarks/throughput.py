"""Training throughput: our data path versus a plain CIFAR script versus the bare step (SPEC section 11).

In one process, on the same model and the same data, images/s over a stretch of training steps for

  (a) ours   -- ``data.augment.Loader`` (batched crop/flip/normalise on the device) + ``train.sgd_step``,
                channels_last, i.e. what ``filter-templates train`` runs, data included;
  (b) plain  -- the way common CIFAR scripts are written: per-sample crop/flip/normalise in a
                ``torch.utils.data.Dataset``, a ``DataLoader`` with 2 workers, NCHW;
  (c) bare   -- our step alone on one fixed batch (no data path at all): the ceiling for (a);
  (d) bare NCHW -- (c) without channels_last, to show which memory format this device prefers;
  (e) bare fp32 -- (c) without bf16 autocast (ours uses it where the hardware has native bf16:
                CUDA, CPUs with AMX/AVX512-BF16; the plain loop is fp32 on CPU as common scripts are).

Goals: a/b >= 1.5 (issue 4) and a/c >= 0.95. The shared CIFAR-10 (``<repo>/../shared/datasets/
cifar10-jpeg.tar.gz``) is used when present, else synthetic data of the same shape. Each variant runs
``--rounds`` times, interleaved, and its best round counts (the CPU may be shared with other jobs).

    python benchmarks/throughput.py [--model vgg19] [--width 0.25] [--steps 100] [--rounds 2] [--json]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED_CIFAR = REPO.parent / "shared" / "datasets" / "cifar10-jpeg.tar.gz"


class PlainCifar(torch.utils.data.Dataset):
    """torchvision's RandomCrop(32, padding=4) + RandomHorizontalFlip + ToTensor + Normalize,
    one sample at a time, as common CIFAR training scripts do (torchvision itself is not needed)."""

    def __init__(self, x: np.ndarray, y: np.ndarray, mean, std) -> None:
        self.x, self.y = x, y
        self.mean = torch.tensor(mean).view(3, 1, 1)
        self.std = torch.tensor(std).view(3, 1, 1)

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int):
        img = torch.from_numpy(np.array(self.x[i])).permute(2, 0, 1).float().div_(255)  # ToTensor
        img = torch.nn.functional.pad(img, (4, 4, 4, 4))  # RandomCrop(32, padding=4)
        top, left = np.random.randint(0, 9, size=2)
        img = img[:, top:top + 32, left:left + 32]
        if np.random.rand() < 0.5:  # RandomHorizontalFlip
            img = img.flip(2)
        img = (img - self.mean) / self.std  # Normalize
        return img, int(self.y[i])


def load(args):
    from filter_templates.data import load_dataset

    if SHARED_CIFAR.exists() and not args.synthetic:
        return load_dataset("cifar10", str(SHARED_CIFAR)), f"cifar10 ({SHARED_CIFAR})"
    return load_dataset("synthetic", limit_train=50_000, limit_test=1_000), "synthetic 50000x32x32x3"


def fresh(arch, device, channels_last: bool, lr: float = 0.01):
    torch.manual_seed(0)
    model = arch.build().to(device=device, memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=5e-4)
    return model.train(), opt


def sync(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(batches, step, warmup: int, steps: int, device) -> float:
    """images/s over ``steps`` steps after ``warmup`` steps (warm-up includes worker start-up)."""
    it = iter(batches)
    for _ in range(warmup):
        step(*next(it))
    sync(device)
    t0 = time.perf_counter()
    n = 0
    for _ in range(steps):
        x, y = next(it)
        step(x, y)
        n += y.shape[0]
    sync(device)
    return n / (time.perf_counter() - t0)


def cycle(loader):
    epoch = 0
    while True:
        if hasattr(loader, "set_epoch"):
            loader.set_epoch(epoch)
        yield from loader
        epoch += 1


def run_ours(arch, ds, args, device, amp) -> float:
    from filter_templates.data.augment import Loader
    from filter_templates.train import sgd_step

    model, opt = fresh(arch, device, True)
    loader = Loader(ds.train_x, ds.train_y, args.batch_size, train=True, mean=ds.mean, std=ds.std, device=device,
                    seed=0, channels_last=True)
    acc = torch.zeros((), device=device)

    def step(x, y):
        loss, logits = sgd_step(model, opt, x, y, amp)
        acc.add_(loss.float())  # what train() does: accumulate on device, no sync
    return timed(cycle(loader), step, args.warmup, args.steps, device)


def run_plain(arch, ds, args, device, amp) -> float:
    amp = device.type == "cuda"  # common scripts: fp32 on CPU (autocast on CUDA, to be fair to them)
    model, opt = fresh(arch, device, False)
    loader = torch.utils.data.DataLoader(PlainCifar(ds.train_x, ds.train_y, ds.mean, ds.std), batch_size=args.batch_size,
                                         shuffle=True, num_workers=args.workers, drop_last=True,
                                         pin_memory=device.type == "cuda")
    crit = torch.nn.CrossEntropyLoss()

    def step(x, y):  # the textbook loop
        x, y = x.to(device), y.to(device)
        opt.zero_grad()
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            loss = crit(model(x), y)
        loss.backward()
        opt.step()
        loss.item()  # running_loss += loss.item()
    return timed(cycle(loader), step, args.warmup, args.steps, device)


def run_bare(arch, ds, args, device, amp, channels_last: bool = True, fp32: bool = False) -> float:
    from filter_templates.data.augment import Loader
    from filter_templates.train import sgd_step

    model, opt = fresh(arch, device, channels_last)
    loader = Loader(ds.train_x[: args.batch_size], ds.train_y[: args.batch_size], args.batch_size, train=True,
                    mean=ds.mean, std=ds.std, device=device, seed=0, channels_last=channels_last)
    x, y = next(iter(loader))

    def fixed():
        while True:
            yield x, y
    return timed(fixed(), lambda x, y: sgd_step(model, opt, x, y, amp and not fp32), args.warmup, args.steps, device)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="vgg19")
    p.add_argument("--template", default="base")
    p.add_argument("--width", type=float, default=0.25)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--steps", type=int, default=100, help="timed steps per variant and round")
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--rounds", type=int, default=2, help="interleaved repetitions; the best round counts")
    p.add_argument("--workers", type=int, default=2, help="DataLoader workers of the plain loop")
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    p.add_argument("--no-bf16", action="store_true", help="ours in fp32 too (as `train --no-bf16`)")
    p.add_argument("--synthetic", action="store_true", help="synthetic data even when the shared CIFAR-10 exists")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)

    from filter_templates.arch import make_arch
    from filter_templates.train import bf16_autocast, resolve_device

    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    amp = bf16_autocast(device, not args.no_bf16)
    t0 = time.perf_counter()
    ds, source = load(args)
    load_s = time.perf_counter() - t0
    arch = make_arch(args.model, args.template, args.width, ds.num_classes)
    variants = {"a_ours": run_ours, "b_plain": run_plain, "c_bare": run_bare,
                "d_bare_nchw": lambda *a: run_bare(*a, channels_last=False)}
    if amp:
        variants["e_bare_fp32"] = lambda *a: run_bare(*a, fp32=True)
    results: dict[str, list[float]] = {k: [] for k in variants}
    for r in range(args.rounds):
        for name, fn in variants.items():
            results[name].append(fn(arch, ds, args, device, amp))
            if not args.json:
                print(f"  round {r + 1} {name:<12} {results[name][-1]:8.0f} img/s", file=sys.stderr, flush=True)
    best = {k: max(v) for k, v in results.items()}
    report = {
        "model": f"{args.model} {args.template} w={args.width:g}", "filters": list(arch.filters), "data": source,
        "data_load_s": round(load_s, 2), "device": str(device), "threads": torch.get_num_threads(),
        "precision": "bf16-autocast" if amp else "fp32",
        "batch_size": args.batch_size, "steps": args.steps, "rounds": args.rounds,
        "images_per_s": {k: round(v, 1) for k, v in best.items()},
        "all_rounds": {k: [round(x, 1) for x in v] for k, v in results.items()},
        "a_over_b": round(best["a_ours"] / best["b_plain"], 3),
        "a_over_c": round(best["a_ours"] / best["c_bare"], 3),
        "channels_last_over_nchw": round(best["c_bare"] / best["d_bare_nchw"], 3),
    }
    if args.json:
        print(json.dumps(report))
        return 0
    print(f"{report['model']} on {source}, {device} x{report['threads']} threads, {report['precision']}, batch {args.batch_size}, "
          f"{args.steps} steps x {args.rounds} rounds (best round)")
    print(f"(a) ours, data included      {best['a_ours']:8.0f} img/s")
    print(f"(b) plain Dataset+DataLoader {best['b_plain']:8.0f} img/s  ({args.workers} workers, NCHW)")
    print(f"(c) bare step, fixed batch   {best['c_bare']:8.0f} img/s")
    print(f"(d) bare step, NCHW          {best['d_bare_nchw']:8.0f} img/s")
    if "e_bare_fp32" in best:
        print(f"(e) bare step, fp32          {best['e_bare_fp32']:8.0f} img/s  (ours: {report['precision']})")
    print(f"a/b = {report['a_over_b']:.2f} (goal >= 1.5)   a/c = {report['a_over_c']:.3f} (goal >= 0.95)   "
          f"channels_last/NCHW = {report['channels_last_over_nchw']:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
