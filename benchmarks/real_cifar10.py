"""The real result: VGG-19 (base template) at width 0.25 for 15 epochs on CIFAR-10.

Trains with ``filter_templates.training.loop`` exactly as ``filter-templates train`` does, on the shared
development copy ``<repo>/../shared/datasets/cifar10-jpeg.tar.gz``, and prints the final test
accuracy and the wall time. ``--expect`` (default 0.86: the accuracy the ``fast`` recipe must reach
here; its goal is 0.88) is checked only for runs of 15 or more epochs on the full data.
``--set KEY=JSON`` sets any other TrainConfig field, for screening one ingredient of a recipe at a
time. ``--write docs/results/`` records the run (``real_cifar10[-NAME].json``, NAME from ``--name``)
with its machine, settings, per-epoch test accuracy and test views.
Re-running continues an interrupted run.

    python benchmarks/real_cifar10.py [--recipe fast|paper] [--lr LR] [--epochs 15] [--width 0.25]
                                      [--expect 0.86] [--threads N] [--json] [--write DIR [--name NAME]]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
from results_file import add_write_argument, write

from filter_templates.method.arch import make_arch
from filter_templates.training.config import TrainConfig
from filter_templates.training.loop import train

REPO = Path(__file__).resolve().parents[1]
SHARED_CIFAR = REPO.parent / "shared" / "datasets" / "cifar10-jpeg.tar.gz"
EXPECT = 0.86  # VGG-19 base w0.25, 15 epochs, --recipe fast: the floor the recipe must reach on CIFAR-10


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--recipe", choices=["fast", "paper"], default="fast")
    p.add_argument("--lr", type=float, default=None, help="peak (fast) or initial (paper) lr (default: the recipe's)")
    p.add_argument("--epochs", type=int, default=15)
    p.add_argument("--model", default="vgg19")
    p.add_argument("--template", default="base")
    p.add_argument("--width", type=float, default=0.25)
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=JSON",
        help="any other TrainConfig field, e.g. --set ema=0.999 --set tta=false (screening)",
    )
    p.add_argument("--data", default=str(SHARED_CIFAR), help="CIFAR-10 in any form `train --data-dir` takes")
    p.add_argument("--limit-train", type=int, default=None, help="fewer training images (screening only)")
    p.add_argument("--out", default=None, help="run directory (default: runs/real-cifar10-...)")
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16"])
    p.add_argument("--fresh", action="store_true", help="refuse an existing checkpoint instead of continuing it")
    p.add_argument(
        "--expect",
        type=float,
        default=EXPECT,
        help=f"final accuracy expected after 15+ epochs on the full data (default {EXPECT})",
    )
    p.add_argument("--json", action="store_true")
    add_write_argument(p)
    p.add_argument("--name", default="", help="with --write: the results file is real_cifar10-NAME.json")
    args = p.parse_args(argv)

    if not Path(args.data).exists():
        print(f"real_cifar10: no CIFAR-10 at {args.data}; pass --data", file=sys.stderr)
        return 2
    if args.threads:
        torch.set_num_threads(args.threads)
    extra = {}
    for item in args.set:
        key, _, value = item.partition("=")
        extra[key] = json.loads(value)
    config = TrainConfig(
        arch=make_arch(args.model, args.template, args.width, 10),
        dataset="cifar10",
        data_dir=str(args.data),
        recipe=args.recipe,
        lr=args.lr,
        epochs=args.epochs,
        device=args.device,
        precision=args.precision,
        limit_train=args.limit_train,
        **extra,
    )
    tag = "".join(f"-{k}{v}" for k, v in extra.items())
    out = Path(
        args.out
        or REPO
        / "runs"
        / (
            f"real-cifar10-{args.model}-{args.template}-w{args.width:g}-e{args.epochs}"
            f"-{args.recipe}-lr{config.lr:g}{tag}" + (f"-n{args.limit_train}" if args.limit_train else "")
        )
    )

    def on_epoch(row: dict) -> None:
        if not args.json:
            print(
                f"epoch {row['epoch']:>2}/{args.epochs}  lr {row['lr']:.4g}  loss {row['train_loss']:.4f}  "
                f"train {row['train_acc']:.2%}  test {row['test_acc']:.2%}  {row['seconds']:.0f}s  "
                f"{row['images_per_s']:.0f} img/s",
                flush=True,
            )

    t0 = time.perf_counter()
    summary = train(config, out, resume=not args.fresh, on_epoch=on_epoch)
    elapsed = time.perf_counter() - t0
    judged = args.epochs >= 15 and args.limit_train is None
    met = summary["status"] == "done" and (not judged or summary["final_acc"] >= args.expect)
    if args.json:
        print(json.dumps({**summary, "process_s": round(elapsed, 1), "expectation_met": met}))
    else:
        print(
            f"{summary['status']}: {args.model} {args.template} w={args.width:g}, {summary['epochs']} epochs on CIFAR-10, "
            f"recipe {config.recipe} lr {config.lr:g} ({summary['precision']}, {summary['memory_format']}, "
            f"{summary['device']} x{summary['threads']} threads): final test accuracy {summary['final_acc']:.2%}, "
            f"best {summary['best_acc']:.2%} (epoch {summary['best_epoch']}); training+evaluation "
            f"{summary['wall_s']:.0f}s, this process {elapsed:.0f}s; run dir {out}"
        )
        if judged:
            print(f"expectation (final >= {args.expect:.0%}): {'met' if met else 'NOT met'}")
    if args.write:
        write_result(args, config, summary, out)
    return 0 if met else 1


def write_result(args, config: TrainConfig, summary: dict, out: Path) -> None:
    """The run as a results file: settings, final and per-epoch test accuracy, and the test views."""
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line.strip()]
    views = 4 if config.tta and config.tta_shift else (2 if config.tta else 1)
    name = "real_cifar10" + (f"-{args.name}" if args.name else "")
    settings = {
        k: getattr(config, k)
        for k in (
            "recipe",
            "lr",
            "epochs",
            "batch_size",
            "seed",
            "crop_pad",
            "label_smoothing",
            "weight_decay",
            "whiten_init",
            "identity_init",
        )
    }
    write(
        args.write,
        name,
        title=f"{args.model} {args.template} w{args.width:g}, {args.epochs} epochs on CIFAR-10 "
        f"(--recipe {config.recipe}{' ' + ' '.join(args.set) if args.set else ''})",
        numbers={
            "final_acc": summary["final_acc"],
            "best_acc": summary["best_acc"],
            "status": summary["status"],
            "wall_s": summary["wall_s"],
            "precision": summary["precision"],
            "memory_format": summary["memory_format"],
            "settings": settings,
            "set": args.set,
            "test_acc_by_epoch": [r.get("test_acc") for r in rows],
        },
        seeds=[config.seed],
        views="CIFAR-10 test split (10,000 images); "
        f"final evaluation with {views} view(s), per-epoch ones with "
        f"{min(views, 2)}",
        note="Final test accuracy of the last epoch's weights; best over epochs is optimistic.",
        table={
            "columns": ["final test acc. %", "train images", "epochs", "wall s"],
            "rows": [
                [round(100 * summary["final_acc"], 2), args.limit_train or 50000, args.epochs, round(summary["wall_s"])]
            ],
        },
    )


if __name__ == "__main__":
    sys.exit(main())
