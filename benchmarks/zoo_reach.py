"""Which timm and torchvision networks ``filter-templates templates`` templates, and why not the rest.

Each model of ``tests/zoo_imports.py`` runs ``templates --model PATH --json --image-size 64`` (96 for
inception_v3) in a fresh process under ``nice`` with a time limit, the way a user types it. A model
is templated when the command exits 0 with its JSON; otherwise the reason is the last line it
printed on stderr (and a traceback is noted as such: a refusal must be one line).

    python benchmarks/zoo_reach.py [--timeout 600] [--jobs 2] [--only SUBSTRING] [--write docs/results/]

Each model's seconds are wall time on a machine that may be shared; they are shown, not compared.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from results_file import add_write_argument, write

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.zoo_imports import MODELS, image_size, missing, zoo  # noqa: E402

# Torch-Pruning 1.6.1 on the same models (ratio 0.5, classifier kept, forward checked), as measured
# for the issue that set these models; per zoo, not per model.
TORCH_PRUNING = {"timm": "24/32", "torchvision": "9/11"}


def reach(path: str, timeout: float) -> dict:
    """One model's outcome: templated, template layers, seconds, or the reason it is not."""
    if missing(path):
        return {"model": path, "templated": False, "reason": missing(path), "layers": None, "seconds": 0.0}
    argv = ["nice", "-n", "10", sys.executable, "-m", "filter_templates", "templates", "--model", path]
    argv += ["--json", "--image-size", str(image_size(path))]
    t = time.perf_counter()
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {
            "model": path,
            "templated": False,
            "reason": f"over {timeout:.0f} s",
            "layers": None,
            "seconds": round(time.perf_counter() - t, 1),
        }
    seconds = round(time.perf_counter() - t, 1)
    if done.returncode == 0:
        return {
            "model": path,
            "templated": True,
            "reason": "",
            "layers": len(json.loads(done.stdout)["layers"]),
            "seconds": seconds,
        }
    lines = [ln for ln in done.stderr.splitlines() if ln.strip()]
    reason = (lines[-1] if lines else f"exit {done.returncode}")[:400]
    if "Traceback" in done.stderr:
        reason = "TRACEBACK: " + reason
    return {
        "model": path,
        "templated": False,
        "reason": reason,
        "exit": done.returncode,
        "layers": None,
        "seconds": seconds,
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--timeout", type=float, default=600.0, help="seconds one model may take")
    ap.add_argument("--only", default="", help="only the models whose path contains this")
    ap.add_argument("--jobs", type=int, default=1, help="models run at once, each in its own process")
    add_write_argument(ap)
    args = ap.parse_args(argv)
    paths = [m for m in MODELS if args.only in m]
    with ThreadPoolExecutor(max(1, args.jobs)) as pool:
        rows = list(pool.map(lambda p: reach(p, args.timeout), paths))
    for r in rows:
        shown = f"{r['layers']} layers" if r["templated"] else r["reason"]
        print(f"{r['model']:<48} {'yes' if r['templated'] else 'no ':<4} {r['seconds']:>6.1f} s  {shown}", flush=True)
    totals = {
        z: f"{sum(r['templated'] for r in rows if zoo(r['model']) == z)}/{sum(zoo(r['model']) == z for r in rows)}"
        for z in ("timm", "torchvision")
    }
    print("templated:", totals, "Torch-Pruning:", TORCH_PRUNING)
    if args.write:
        write(
            args.write,
            "zoo_reach",
            title="timm and torchvision networks templated (templates --json, 64 px; 96 for inception_v3)",
            numbers={"templated": totals, "torch_pruning": TORCH_PRUNING, "models": rows},
            seeds=[],
            views="no data: architectures only, random weights",
            note="A model is templated when `templates --model PATH --json` exits 0; otherwise the reason is its "
            "last stderr line. Torch-Pruning's column is its count on the same models (ratio 0.5, classifier "
            "kept, forward checked) per zoo.",
            table={
                "columns": ["model", "templated", "template layers", "reason"],
                "rows": [[r["model"], r["templated"], r["layers"], r["reason"]] for r in rows],
            },
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
