"""How long `filter-templates tune` takes, as a user's first tune on a new machine meets it.

It runs the real command (``tune --json --print``: measured, nothing written) in a child process
with an empty inductor cache and an empty config folder, so the compile time is the cold one a
first tune pays and no profile of this machine is read, and records its wall time, the time of
each phase and what it would recommend.

    python benchmarks/tune_time.py --write docs/results/ [-- extra tune flags]
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

from results_file import add_write_argument, write

REPO = Path(__file__).resolve().parents[1]
LIMIT_S = 300  # the bound the command promises on a 2-core CPU


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("tune_args", nargs="*", help="more `tune` flags (after --)")
    add_write_argument(p)
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="tune-time-") as tmp:
        env = {
            **os.environ,
            "TORCHINDUCTOR_CACHE_DIR": str(Path(tmp) / "inductor"),
            "XDG_CONFIG_HOME": str(Path(tmp) / "config"),
            "PYTHONPATH": str(REPO),
        }
        cmd = [sys.executable, "-m", "filter_templates", "tune", "--json", "--print", *args.tune_args]
        t0 = time.perf_counter()
        done = subprocess.run(cmd, env=env, capture_output=True, text=True)
        wall = time.perf_counter() - t0
    if done.returncode != 0:
        print(done.stderr, file=sys.stderr)
        return done.returncode
    out = json.loads(done.stdout)
    print(
        f"tune: {wall:.0f} s wall ({', '.join(f'{k} {v:.0f} s' for k, v in out['phases'].items())}); "
        f"recommends {out['recommended']} (rule: {out['rule']}); bound {LIMIT_S} s"
    )
    if args.write:
        write(
            args.write,
            "tune_time",
            title="`filter-templates tune`: wall time of a first tune (cold inductor cache)",
            numbers={"wall_s": round(wall, 1), "limit_s": LIMIT_S, **out},
            seeds=[0],
            views="the timed steps use random batches; the bf16 check trains 2 epochs on digits",
            note=f"{wall:.0f} s from start to exit, against the {LIMIT_S} s bound; the phases: "
            + ", ".join(f"{k} {v:.0f} s" for k, v in out["phases"].items())
            + f". Recommended: {out['recommended']} (the rule's choice: {out['rule']}). One run.",
            table={
                "columns": ["variant", "min img/s", "median img/s", "max img/s", "compile s"],
                "rows": [[v["variant"], v["min"], v["median"], v["max"], v["compile_s"]] for v in out["variants"]],
            },
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
