"""The real result of issue 4: VGG-19 (base template) at width 0.25, 15 epochs on CIFAR-10.

Trains with ``filter_templates.train`` exactly as ``filter-templates train`` does (learning-rate
steps at 50% and 75% of the epochs, i.e. after epochs 7 and 11) on the shared development copy
``<repo>/../shared/datasets/cifar10-jpeg.tar.gz`` and prints test accuracy and wall time.
Expectation: at least 85% after 15 epochs. Re-running continues an interrupted run.

    python benchmarks/real_cifar10.py [--epochs 15] [--width 0.25] [--threads N] [--json]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED_CIFAR = REPO.parent / "shared" / "datasets" / "cifar10-jpeg.tar.gz"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--epochs", type=int, default=15)
    p.add_argument("--model", default="vgg19")
    p.add_argument("--template", default="base")
    p.add_argument("--width", type=float, default=0.25)
    p.add_argument("--data", default=str(SHARED_CIFAR), help="CIFAR-10 in any form `train --data-dir` takes")
    p.add_argument("--limit-train", type=int, default=None, help="fewer training images (quick checks only)")
    p.add_argument("--out", default=None, help="run directory (default: runs/real-cifar10-<model>-<template>-w<W>-e<E>)")
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--no-bf16", dest="bf16", action="store_false")
    p.add_argument("--fresh", action="store_true", help="refuse an existing checkpoint instead of continuing it")
    p.add_argument("--expect", type=float, default=0.85, help="final accuracy expected after 15+ epochs (default 0.85)")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)

    if not Path(args.data).exists():
        print(f"real_cifar10: no CIFAR-10 at {args.data}; pass --data", file=sys.stderr)
        return 2
    import torch

    from filter_templates.arch import make_arch
    from filter_templates.train import TrainConfig, train

    if args.threads:
        torch.set_num_threads(args.threads)
    config = TrainConfig(arch=make_arch(args.model, args.template, args.width, 10), dataset="cifar10",
                         data_dir=str(args.data), epochs=args.epochs, device=args.device, bf16=args.bf16,
                         limit_train=args.limit_train)
    out = Path(args.out or REPO / "runs" / f"real-cifar10-{args.model}-{args.template}-w{args.width:g}-e{args.epochs}"
               + (f"-n{args.limit_train}" if args.limit_train else ""))

    def on_epoch(row: dict) -> None:
        if not args.json:
            print(f"epoch {row['epoch']:>2}/{args.epochs}  lr {row['lr']:.4g}  loss {row['train_loss']:.4f}  "
                  f"train {row['train_acc']:.2%}  test {row['test_acc']:.2%}  {row['seconds']:.0f}s  "
                  f"{row['images_per_s']:.0f} img/s", flush=True)

    t0 = time.perf_counter()
    summary = train(config, out, resume=not args.fresh, on_epoch=on_epoch)
    elapsed = time.perf_counter() - t0
    met = summary["status"] == "done" and (args.epochs < 15 or summary["final_acc"] >= args.expect)
    if args.json:
        print(json.dumps({**summary, "process_s": round(elapsed, 1), "expectation_met": met}))
    else:
        print(f"{summary['status']}: {args.model} {args.template} w={args.width:g}, {summary['epochs']} epochs on CIFAR-10 "
              f"({summary['precision']}, {summary['device']} x{summary['threads']} threads): final test accuracy "
              f"{summary['final_acc']:.2%}, best {summary['best_acc']:.2%} (epoch {summary['best_epoch']}); "
              f"training+evaluation {summary['wall_s']:.0f}s, this process {elapsed:.0f}s; run dir {out}")
        if args.epochs >= 15:
            print(f"expectation (final >= {args.expect:.0%}): {'met' if met else 'NOT met'}")
    return 0 if met else 1


if __name__ == "__main__":
    sys.exit(main())
