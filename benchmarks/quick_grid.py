"""The README's first command, timed: ``filter-templates sweep --preset quick`` into a fresh folder.

The quick grid (VGG-19 and MobileNet, all five templates at width 0.05 with at least 8 filters per
layer, 6 epochs of the default recipe on scikit-learn's digits) is what a new user sees first. This
runs it exactly as the README does, in a temporary folder, and records the sweep's wall time and
every run's final test accuracy (360 test images: one standard error is about 2.5 points).

    python benchmarks/quick_grid.py [--write docs/results/] [-- EXTRA SWEEP FLAGS]
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from results_file import add_write_argument, write

from filter_templates.sweep.grid import preset
from filter_templates.sweep.store import Store


def program() -> list[str]:
    """The installed entry point when it is on PATH, else the package run as a module."""
    exe = shutil.which("filter-templates")
    return [exe] if exe else [sys.executable, "-m", "filter_templates"]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_write_argument(ap)
    ap.add_argument("extra", nargs="*", help="more sweep flags (after --), e.g. -- --jobs 1")
    args = ap.parse_args(argv)

    spec = preset("quick")
    with tempfile.TemporaryDirectory() as tmp:
        db, runs = Path(tmp) / "results.sqlite", Path(tmp) / "runs"
        cmd = [*program(), "sweep", "--preset", "quick", "--db", str(db), "--runs-dir", str(runs), *args.extra]
        t = time.perf_counter()
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
        wall = time.perf_counter() - t
        with Store(db, create=False) as store:
            done = store.rows(status="done")
            failed = store.counts()["failed"]
    acc = {(r["family"], r["template"]): r["final_acc"] for r in done}
    families = list(dict.fromkeys(r["family"] for r in done))
    templates = list(spec.templates)
    rows = [[f, *[round(100 * acc[(f, t)], 2) if (f, t) in acc else None for t in templates]] for f in families]
    for row in rows:
        print(" ".join(str(c) for c in row))
    print(f"sweep --preset quick: {wall:.0f} s, {len(done)} runs done, {failed} failed")
    if args.write:
        write(
            args.write,
            "quick_grid",
            title="The quick grid (the README's first command)",
            numbers={
                "sweep_wall_s": round(wall, 1),
                "runs_done": len(done),
                "runs_failed": failed,
                "final_acc": {f"{f} {t}": v for (f, t), v in acc.items()},
            },
            seeds=list(spec.seeds),
            views="digits test split, 360 images, 1 view (digits are never flipped)",
            note="Final top-1 test accuracy (%) after 6 epochs, width 0.05, floor 8; chance is 10%. "
            "The wall time is the sweep alone (two runs at once, one thread each), without the installs.",
            table={"columns": ["family", *templates], "rows": rows},
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
