"""Screen recipe variants side by side: several ``real_cifar10.py`` runs at once on one GPU.

A 15-epoch CIFAR-10 run takes ~45 min on 2 CPU cores, so trying a recipe change there costs an
afternoon per seed. On one GPU the same runs are launch-bound (small model, batch 64), and several
processes share the card well, so a handful of variants and seeds finish in minutes. Each variant is
``NAME:KEY=JSON,KEY=JSON`` (TrainConfig fields, as ``real_cifar10.py --set`` takes them, plus ``lr``);
the table at the end gives each one's final test accuracy (the recipe's test views). At the deadline
unfinished runs are stopped and shown at their last epoch.

    python benchmarks/recipe_screen.py --data DATA --out DIR [--deadline-s 300] [--write DIR] \\
        default: seed1:seed=1 b32:batch_size=32,lr=0.035

``--write docs/results/`` keeps the table as ``recipe_screen.json`` (every variant, its seed, epochs
done and test views).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from results_file import add_write_argument, write

REPO = Path(__file__).resolve().parents[1]


def parse_variant(text: str) -> tuple[str, dict]:
    name, _, rest = text.partition(":")
    fields = {}
    for item in filter(None, rest.split(",")):
        key, _, value = item.partition("=")
        fields[key] = json.loads(value)
    return name, fields


def last_row(run_dir: Path) -> dict | None:
    path = run_dir / "metrics.jsonl"
    rows = path.read_text().splitlines() if path.exists() else []
    return json.loads(rows[-1]) if rows else None


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("variants", nargs="+", help="NAME:KEY=JSON,... (NAME alone: the recipe as it is)")
    p.add_argument("--data", required=True)
    p.add_argument("--out", required=True, help="a folder for the run directories and logs")
    p.add_argument("--epochs", type=int, default=15)
    p.add_argument("--width", type=float, default=0.25)
    p.add_argument("--device", default="cuda")
    p.add_argument("--limit-train", type=int, default=None, help="fewer training images (a dry run)")
    p.add_argument("--deadline-s", type=float, default=300.0)
    add_write_argument(p)
    args = p.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""),
        "OMP_NUM_THREADS": "1",
    }
    procs = {}
    t0 = time.perf_counter()
    for text in args.variants:
        name, fields = parse_variant(text)
        cmd = [
            sys.executable,
            str(REPO / "benchmarks" / "real_cifar10.py"),
            "--data",
            args.data,
            "--device",
            args.device,
            "--epochs",
            str(args.epochs),
            "--width",
            str(args.width),
            "--out",
            str(out / name),
            "--fresh",
            "--expect",
            "0",
        ]
        if args.limit_train:
            cmd += ["--limit-train", str(args.limit_train)]
        if "lr" in fields:
            cmd += ["--lr", str(fields.pop("lr"))]
        for key, value in fields.items():
            cmd += ["--set", f"{key}={json.dumps(value)}"]
        log = open(out / f"{name}.log", "w")
        procs[name] = (text, subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env), log)
    shown = dict.fromkeys(procs, 0)
    while any(proc.poll() is None for _, proc, _ in procs.values()):
        for name in procs:  # progress: each run's newest epoch, once
            row = last_row(out / name)
            if row and row["epoch"] > shown[name]:
                shown[name] = row["epoch"]
                print(
                    f"  {time.perf_counter() - t0:5.0f} s  {name} epoch {row['epoch']}: test {row['test_acc']:.2%}",
                    flush=True,
                )
        if time.perf_counter() - t0 > args.deadline_s:
            for _, proc, _ in procs.values():
                if proc.poll() is None:
                    proc.terminate()
            break
        time.sleep(5)
    for _, proc, log in procs.values():
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()
    print(f"{len(procs)} runs, {args.epochs} epochs, width {args.width:g}, {time.perf_counter() - t0:.0f} s")
    print("| variant | epochs done | final test acc (views) | train acc | s/epoch |")
    print("|---|---:|---:|---:|---:|")
    table = []
    for name, (text, proc, _) in procs.items():
        row = last_row(out / name)
        if row is None:
            tail = (out / f"{name}.log").read_text().strip().splitlines()[-1:]
            print(f"| {text} | 0 | - | - | - |  exit {proc.returncode}: {tail}")
            table.append([text, 0, None, None, None, None])
            continue
        print(
            f"| {text} | {row['epoch']} | {row['test_acc']:.2%} ({row['test_views']}) | {row['train_acc']:.2%} | "
            f"{row['seconds']:.1f} |"
        )
        table.append(
            [
                text,
                row["epoch"],
                round(100 * row["test_acc"], 2),
                row["test_views"],
                round(100 * row["train_acc"], 2),
                round(row["seconds"], 1),
            ]
        )
    if args.write:
        seeds = sorted({parse_variant(text)[1].get("seed", 0) for text in args.variants})
        write(
            args.write,
            "recipe_screen",
            title=f"Recipe variants side by side: VGG-19 base w{args.width:g}, {args.epochs} epochs on CIFAR-10",
            numbers={
                "epochs": args.epochs,
                "width": args.width,
                "variants": args.variants,
                "limit_train": args.limit_train,
            },
            seeds=seeds,
            views="CIFAR-10 test split, 10,000 images; views per row",
            note="Final test accuracy (%) of each variant, one seed each unless the variant sets it; a run "
            "stopped at the deadline shows its last epoch. The runs shared one device, so s/epoch is "
            "not a speed of the recipe.",
            table={
                "columns": ["variant", "epochs done", "final test acc. %", "views", "train acc. %", "s/epoch"],
                "rows": table,
            },
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
