"""Training throughput: whole epochs of ``train()`` versus a plain CIFAR loop versus the bare step.

In one process, on the same model and the same images, alternating the variants round after round:

  ours   -- ``filter_templates.training.loop.train()`` itself, 2 epochs into a scratch folder, with its
            default recipe and its measured precision / memory format. Its training images/s is
            what ``train()`` records per epoch (the whole training pass: batched augmentation,
            step, schedule, EMA, NaN checks); the second epoch counts (the first one includes the
            one-off start-up). ``ours_epoch`` also counts that epoch's evaluation (on a test
            split 1/5 the size of the training images, as CIFAR's) and checkpoint.
  plain  -- the way common CIFAR scripts are written: per-sample crop/flip/normalise in a
            ``torch.utils.data.Dataset``, a ``DataLoader`` with 2 workers, fp32, NCHW; one pass
            over the same images, worker start-up included.
  bare   -- one training step on a fixed batch, no data path at all, for each of fp32/bf16 x
            channels_last/contiguous: the ceiling for ``ours`` on this machine.

Prints ``ours/plain`` (goal >= 1.2 on a 2-core CPU without AMX) and ``ours/best-bare`` (goal
>= 0.95). The shared CIFAR-10 (``<repo>/../shared/datasets/cifar10-jpeg.tar.gz``) is used when
present, else synthetic data of the same shape. Each variant's best round counts (the CPU may be
shared with other jobs); every round is in ``--json``.

``--mode profile`` sets what a machine profile (``filter-templates tune``) buys beside the rule:
whole epochs of ``train()`` with the profile's execution (``--profile FILE``, default the user's;
it must match this machine), of ``train()`` with the rule's (``--no-profile``), and of the plain
fp32 DataLoader loop, alternating round after round in one process; each variant's whole-epoch
images/s (training pass plus evaluation and checkpoint for ``train()``; the pass for the plain
loop, which evaluates nothing) and their ratios (``--write docs/results/`` keeps it as
``execution_profile.json``).

``--mode rule`` asks what the execution rule (``autotune.rule``, ``autotune.threads_for``) costs
or gains against the choice a timing would make: the bare step of every precision x memory format
x thread count (1 and all usable cores), alternating round after round; the fastest measured
variant against the rule's, images/s of both and their ratio (``--write docs/results/`` keeps it
as ``execution_rule.json``).

    python benchmarks/throughput.py [--model vgg19] [--width 0.25] [--images 10000] [--rounds 2] [--json]
    python benchmarks/throughput.py --mode rule [--rounds 3] [--write docs/results/]
    python benchmarks/throughput.py --mode profile [--model vgg19 --template base] [--write docs/results/]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from results_file import add_write_argument, write

from filter_templates.core.device import device_name, resolve_device
from filter_templates.data import load_dataset
from filter_templates.data.augment import Loader, LoaderOptions
from filter_templates.method.arch import make_arch
from filter_templates.training import autotune
from filter_templates.training import profile as machine_profile
from filter_templates.training.config import MEMORY_FORMATS, PRECISIONS, PROFILE_AUTO, PROFILE_OFF, TrainConfig
from filter_templates.training.loop import sgd_step, train

REPO = Path(__file__).resolve().parents[1]
SHARED_CIFAR = REPO.parent / "shared" / "datasets" / "cifar10-jpeg.tar.gz"
BARE = [(p, m) for p in PRECISIONS for m in MEMORY_FORMATS]


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
        img = img[:, top : top + 32, left : left + 32]
        if np.random.rand() < 0.5:  # RandomHorizontalFlip
            img = img.flip(2)
        img = (img - self.mean) / self.std  # Normalize
        return img, int(self.y[i])


def load(args):
    """The training images every variant uses, and the words that say which they are."""
    if SHARED_CIFAR.exists() and not args.synthetic:
        ds = load_dataset("cifar10", str(SHARED_CIFAR), limit_train=args.images, limit_test=max(1, args.images // 5))
        return ds, "cifar10", str(SHARED_CIFAR), f"cifar10 ({SHARED_CIFAR}), first {len(ds.train_y)} images"
    ds = load_dataset("synthetic", limit_train=args.images, limit_test=max(1, args.images // 5))
    return ds, "synthetic", None, f"synthetic {args.images}x32x32x3"


def sync(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def run_ours(
    arch, ds, args, device, dataset, data_dir, profile: str = PROFILE_OFF, summaries: list | None = None
) -> tuple[float, float]:
    """(training images/s of train()'s second epoch, images/s of that whole epoch incl. eval + checkpoint).
    ``profile``: the machine profile train() reads (default none: the rule); ``summaries`` gets each run's."""
    config = TrainConfig(
        arch=arch,
        dataset=dataset,
        data_dir=data_dir,
        epochs=2,
        batch_size=args.batch_size,
        device=str(device),
        limit_train=args.images,
        limit_test=max(1, args.images // 5),
        profile=profile,
    )
    marks: list[float] = []
    rows: list[dict] = []
    with tempfile.TemporaryDirectory() as tmp:

        def on_epoch(row):
            sync(device)
            marks.append(time.perf_counter())
            rows.append(row)

        summary = train(config, Path(tmp) / "run", on_epoch=on_epoch, progress=False)
    if summaries is not None:
        summaries.append(summary)
    n = (len(ds.train_y) // args.batch_size) * args.batch_size
    return rows[1]["images_per_s"], n / (marks[1] - marks[0])


def run_plain(arch, ds, args, device) -> float:
    amp = device.type == "cuda"  # common scripts: fp32 on CPU (autocast on CUDA, to be fair to them)
    torch.manual_seed(0)
    model = arch.build().to(device).train()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    loader = torch.utils.data.DataLoader(
        PlainCifar(ds.train_x, ds.train_y, ds.mean, ds.std),
        batch_size=args.batch_size,
        shuffle=True,
        num_workers=args.workers,
        drop_last=True,
        pin_memory=device.type == "cuda",
    )
    crit = torch.nn.CrossEntropyLoss()
    sync(device)
    t0 = time.perf_counter()
    n = 0
    for x, y in loader:  # the textbook loop
        x, y = x.to(device), y.to(device)
        opt.zero_grad()
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            loss = crit(model(x), y)
        loss.backward()
        opt.step()
        loss.item()  # running_loss += loss.item()
        n += y.shape[0]
    sync(device)
    return n / (time.perf_counter() - t0)


def run_bare(arch, ds, args, device, precision: str, memory_format: str) -> float:
    torch.manual_seed(0)
    fmt = autotune.torch_memory_format(memory_format)
    model = arch.build().to(device=device, memory_format=fmt).train()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4, nesterov=True)
    loader = Loader(
        ds.train_x[: args.batch_size],
        ds.train_y[: args.batch_size],
        args.batch_size,
        train=True,
        mean=ds.mean,
        std=ds.std,
        options=LoaderOptions(device=device, channels_last=memory_format == "channels_last"),
    )
    x, y = next(iter(loader))
    amp = precision == "bf16"
    for _ in range(args.warmup):
        sgd_step(model, opt, x, y, amp)
    sync(device)
    t0 = time.perf_counter()
    for _ in range(args.bare_steps):
        sgd_step(model, opt, x, y, amp)
    sync(device)
    return args.bare_steps * args.batch_size / (time.perf_counter() - t0)


def rule_vs_measured(arch, ds, args, device) -> dict:
    """Bare-step images/s of every (precision, memory format, threads) variant, alternating rounds
    (the best round counts); the rule's variant against the fastest one."""
    precision, memory_format, reason = autotune.rule(device)
    threads, threads_source = autotune.threads_for(device)
    rule_key = f"{precision}/{memory_format}/{threads}"
    counts = sorted({1, autotune.usable_cores()})
    keys = [f"{p}/{m}/{n}" for n in counts for p, m in BARE]
    if rule_key not in keys:
        keys.append(rule_key)
    rounds: dict[str, list[float]] = {k: [] for k in keys}
    for r in range(args.rounds):
        for key in keys if r % 2 == 0 else keys[::-1]:  # alternate the order: drifts in load even out
            p, m, n = key.split("/")
            torch.set_num_threads(int(n))
            rounds[key].append(run_bare(arch, ds, args, device, p, m))
            print(f"  round {r + 1} {key:<26} {rounds[key][-1]:8.1f} img/s", file=sys.stderr, flush=True)
    torch.set_num_threads(threads)  # what a run gets, and what the results file records
    best = {k: max(v) for k, v in rounds.items()}
    fastest = max(best, key=best.get)
    return {
        "rule": {
            "variant": rule_key,
            "reason": reason,
            "threads_source": threads_source,
            "images_per_s": round(best[rule_key], 1),
        },
        "measured_fastest": {"variant": fastest, "images_per_s": round(best[fastest], 1)},
        "rule_over_fastest": round(best[rule_key] / best[fastest], 3),
        "images_per_s": {k: round(v, 1) for k, v in best.items()},
        "all_rounds": {k: [round(x, 1) for x in v] for k, v in rounds.items()},
    }


def main_rule(args, arch, ds, source, device) -> int:
    """``--mode rule``: print (and with ``--write``, keep) :func:`rule_vs_measured`."""
    report = {
        "model": f"{args.model} {args.template} w={args.width:g}",
        "filters": list(arch.filters),
        "data": source,
        "device": str(device),
        "device_name": device_name(device),
        "usable_cores": autotune.usable_cores(),
        "batch_size": args.batch_size,
        "warmup": args.warmup,
        "bare_steps": args.bare_steps,
        "rounds": args.rounds,
        **rule_vs_measured(arch, ds, args, device),
    }
    if args.write:
        rows = [[k, v, "rule" if k == report["rule"]["variant"] else ""] for k, v in report["images_per_s"].items()]
        write(
            args.write,
            "execution_rule",
            title="Execution rule against the fastest measured variant",
            numbers=report,
            seeds=[0],
            views=f"{source}; one fixed batch of {args.batch_size}, bare training steps",
            table={"columns": ["precision/layout/threads", "img/s (best round)", ""], "rows": rows},
            note="Bare SGD steps of each variant, alternating; the rule's pick never depends on a timing.",
        )
    if args.json:
        print(json.dumps(report))
        return 0
    r, f = report["rule"], report["measured_fastest"]
    print(f"{report['model']} on {device_name(device)}, batch {args.batch_size}, {args.rounds} rounds (best)")
    for k, v in report["images_per_s"].items():
        print(f"  {k:<26} {v:8.1f} img/s" + ("   <- rule" if k == r["variant"] else ""))
    print(
        f"rule {r['variant']} ({r['reason']}): {r['images_per_s']:.1f} img/s; fastest measured {f['variant']}: "
        f"{f['images_per_s']:.1f} img/s; rule/fastest = {report['rule_over_fastest']:.3f}"
    )
    return 0


def main_profile(args, arch, ds, dataset, data_dir, source, device) -> int:
    """``--mode profile``: the profile's execution against the rule's and the plain loop, whole epochs."""
    found = machine_profile.find(device, args.profile or PROFILE_AUTO)
    if found is None:
        sys.exit(
            f"throughput.py: no profile for this machine at {args.profile or machine_profile.default_path()}; "
            "run `filter-templates tune` first"
        )
    threads = args.threads or autotune.threads_for(device)[0]
    summaries: dict[str, list] = {"profile": [], "rule": []}
    variants = {
        "profile": lambda: run_ours(arch, ds, args, device, dataset, data_dir, found[1], summaries["profile"]),
        "rule": lambda: run_ours(arch, ds, args, device, dataset, data_dir, summaries=summaries["rule"]),
        "plain": lambda: (run_plain(arch, ds, args, device),) * 2,
    }
    results: dict[str, list[tuple[float, float]]] = {k: [] for k in variants}
    for r in range(args.rounds):
        for name in variants if r % 2 == 0 else list(variants)[::-1]:
            torch.set_num_threads(threads)  # the rule's count; a profile sets its own inside train()
            results[name].append(variants[name]())
            print(
                f"  round {r + 1} {name:<8} pass {results[name][-1][0]:8.1f}  whole epoch {results[name][-1][1]:8.1f} "
                "img/s",
                file=sys.stderr,
                flush=True,
            )
    torch.set_num_threads(threads)
    best = {k: (max(v[0] for v in vs), max(v[1] for v in vs)) for k, vs in results.items()}
    used = {
        k: {f: summaries[k][0][f] for f in ("precision", "memory_format", "threads")}
        | {"compile": summaries[k][0]["execution"]["compile"], "source": summaries[k][0]["execution"]["source"]}
        for k in summaries
    }
    report = {
        "model": f"{args.model} {args.template} w={args.width:g}",
        "filters": list(arch.filters),
        "data": source,
        "device": str(device),
        "device_name": device_name(device),
        "batch_size": args.batch_size,
        "images": len(ds.train_y),
        "rounds": args.rounds,
        "profile": found[1],
        "execution": used,
        "plain": f"{args.workers} DataLoader workers, fp32, NCHW, {threads} threads",
        "train_pass_images_per_s": {k: round(v[0], 1) for k, v in best.items()},
        "whole_epoch_images_per_s": {k: round(v[1], 1) for k, v in best.items()},
        "all_rounds": {k: [[round(a, 1), round(b, 1)] for a, b in vs] for k, vs in results.items()},
        "profile_over_plain": round(best["profile"][1] / best["plain"][1], 3),
        "rule_over_plain": round(best["rule"][1] / best["plain"][1], 3),
        "profile_over_rule": round(best["profile"][1] / best["rule"][1], 3),
    }
    if args.write:

        def words(k):
            u = used[k]
            return f"{u['precision']}, {u['memory_format']}, {u['threads']} threads" + (
                ", compiled" if u["compile"] else ""
            )

        rows = [
            [
                "train(), profile",
                words("profile"),
                best["profile"][0],
                best["profile"][1],
                report["profile_over_plain"],
            ],
            ["train(), rule", words("rule"), best["rule"][0], best["rule"][1], report["rule_over_plain"]],
            ["plain DataLoader loop", report["plain"], best["plain"][0], best["plain"][1], 1.0],
        ]
        write(
            args.write,
            "execution_profile",
            title="Profiled execution against the rule's and the plain loop",
            numbers=report,
            seeds=[0],
            views=f"{source}; {args.rounds} alternating rounds, best round each",
            table={
                "columns": ["variant", "execution", "training pass img/s", "whole epoch img/s", "x plain"],
                "rows": rows,
            },
            note="Whole-epoch images/s: train()'s second epoch with its evaluation and checkpoint; the plain "
            "loop's one pass. The profile was written by `filter-templates tune` on this machine.",
        )
    print(
        json.dumps(report)
        if args.json
        else f"{report['model']} on {source}, {device_name(device)}: whole-epoch img/s "
        + ", ".join(f"{k} {v[1]:.0f}" for k, v in best.items())
        + f"; profile/plain {report['profile_over_plain']:.2f}, rule/plain {report['rule_over_plain']:.2f}, "
        f"profile/rule {report['profile_over_rule']:.2f}"
    )
    return 0


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--mode",
        choices=["all", "rule", "profile"],
        default="all",
        help="all: ours vs plain vs bare; rule: the execution rule vs the fastest measured variant; "
        "profile: train() with the machine profile vs with the rule vs the plain loop, whole epochs",
    )
    p.add_argument(
        "--profile",
        default=None,
        metavar="FILE",
        help="--mode profile: the machine profile (default: the user's, as train() reads it)",
    )
    p.add_argument("--model", default="vgg19")
    p.add_argument("--template", default="base")
    p.add_argument("--width", type=float, default=0.25)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument(
        "--images",
        type=int,
        default=10_000,
        help="training images per epoch of every variant (50000: full CIFAR-10 epochs)",
    )
    p.add_argument("--bare-steps", type=int, default=50, help="timed steps of each bare variant and round")
    p.add_argument("--warmup", type=int, default=5, help="untimed steps before each bare variant")
    p.add_argument("--rounds", type=int, default=2, help="interleaved repetitions; the best round counts")
    p.add_argument("--workers", type=int, default=2, help="DataLoader workers of the plain loop")
    p.add_argument("--device", default="auto")
    p.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch threads of every variant (default: the CLI's rule, autotune.threads_for)",
    )
    p.add_argument("--synthetic", action="store_true", help="synthetic data even when the shared CIFAR-10 exists")
    p.add_argument("--json", action="store_true")
    add_write_argument(p)
    return p


def main(argv=None) -> int:
    args = _parser().parse_args(argv)

    device = resolve_device(args.device)
    t0 = time.perf_counter()
    ds, dataset, data_dir, source = load(args)
    load_s = time.perf_counter() - t0
    arch = make_arch(args.model, args.template, args.width, ds.num_classes)
    if args.mode == "rule":
        return main_rule(args, arch, ds, source, device)
    if args.mode == "profile":
        return main_profile(args, arch, ds, dataset, data_dir, source, device)
    if args.threads:
        torch.set_num_threads(args.threads)
        threads_source = "--threads"
    else:
        threads, threads_source = autotune.threads_for(device)
        torch.set_num_threads(threads)
    choice = autotune.choose(device)  # what train() will use

    variants = {
        "ours": lambda: run_ours(arch, ds, args, device, dataset, data_dir),
        "plain": lambda: run_plain(arch, ds, args, device),
    }
    for prec, fmt in BARE:
        if prec == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
            continue
        variants[f"bare {prec} {fmt}"] = lambda prec=prec, fmt=fmt: run_bare(arch, ds, args, device, prec, fmt)
    results: dict[str, list[float]] = {k: [] for k in variants}
    results["ours_epoch"] = []
    for r in range(args.rounds):
        for name, fn in variants.items():
            value = fn()
            if name == "ours":
                value, whole = value
                results["ours_epoch"].append(whole)
            results[name].append(value)
            if not args.json:
                print(f"  round {r + 1} {name:<26} {value:8.0f} img/s", file=sys.stderr, flush=True)
    best = {k: max(v) for k, v in results.items()}
    bare = {k: v for k, v in best.items() if k.startswith("bare")}
    best_bare = max(bare, key=bare.get)
    report = {
        "model": f"{args.model} {args.template} w={args.width:g}",
        "filters": list(arch.filters),
        "data": source,
        "data_load_s": round(load_s, 2),
        "device": str(device),
        "device_name": device_name(device),
        "cpus": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "threads_source": threads_source,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "ours_precision": choice.precision,
        "ours_memory_format": choice.memory_format,
        "choice_source": choice.source,
        "batch_size": args.batch_size,
        "images": len(ds.train_y),
        "bare_steps": args.bare_steps,
        "rounds": args.rounds,
        "images_per_s": {k: round(v, 1) for k, v in best.items()},
        "all_rounds": {k: [round(x, 1) for x in v] for k, v in results.items()},
        "best_bare": best_bare,
        "ours_over_plain": round(best["ours"] / best["plain"], 3),
        "ours_over_best_bare": round(best["ours"] / bare[best_bare], 3),
        "ours_epoch_over_plain": round(best["ours_epoch"] / best["plain"], 3),
    }
    if args.json:
        print(json.dumps(report))
        return 0
    print(
        f"{report['model']} on {source}; {report['device_name']} ({device}), {report['threads']} threads "
        f"({threads_source}), torch {torch.__version__}, batch {args.batch_size}, {args.rounds} rounds (best round)"
    )
    print(
        f"ours: train(), training pass   {best['ours']:8.0f} img/s  ({choice.precision}, {choice.memory_format}, "
        f"{choice.source})"
    )
    print(f"ours: whole epoch (+eval, ckpt) {best['ours_epoch']:8.0f} img/s")
    print(f"plain Dataset+DataLoader       {best['plain']:8.0f} img/s  ({args.workers} workers, fp32, NCHW)")
    for k in bare:
        print(f"{k:<30} {best[k]:8.0f} img/s")
    print(
        f"ours/plain = {report['ours_over_plain']:.2f} (goal >= 1.2)   ours/best-bare = "
        f"{report['ours_over_best_bare']:.3f} (goal >= 0.95; best bare: {best_bare[5:]})   "
        f"whole epoch/plain = {report['ours_epoch_over_plain']:.2f}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
