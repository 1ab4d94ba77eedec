"""How long ``filter-templates --help`` (and each subcommand's ``--help``) takes to answer.

A command-line tool that makes its user wait a second before it prints its help is one that
imports torch too early. The goal is under 0.5 s for the top-level help on a 2-core CPU. Each
command runs in a fresh process (the way a user types it), ``--repeat`` times; the median counts.
Both the wall time and the CPU time of the process (user + system) are recorded: on a machine
that other jobs load, the wall time grows with the load and the CPU time does not.

    python benchmarks/cli_startup.py [--repeat 5] [--write docs/results/]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import time

from results_file import add_write_argument, write

COMMANDS = [[], ["templates"], ["fit"], ["train"], ["sweep"], ["report"], ["export"], ["reduce"]]
GOAL_S = 0.5


def program() -> list[str]:
    """The installed entry point when it is on PATH, else the package run as a module."""
    exe = shutil.which("filter-templates")
    return [exe] if exe else [sys.executable, "-m", "filter_templates"]


def time_once(argv: list[str]) -> tuple[float, float]:
    """(wall seconds, CPU seconds) of one fresh process."""
    before = os.times()
    t = time.perf_counter()
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wall = time.perf_counter() - t
    after = os.times()
    return wall, (after.children_user - before.children_user) + (after.children_system - before.children_system)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=5, help="fresh processes per command (median reported)")
    add_write_argument(ap)
    args = ap.parse_args(argv)

    prog = program()
    time_once([*prog, "--help"])  # the first call pays for cold file caches; it is not counted
    rows = []
    for sub in COMMANDS:
        runs = [time_once([*prog, *sub, "--help"]) for _ in range(args.repeat)]
        wall, cpu = [w for w, _ in runs], [c for _, c in runs]
        shown = " ".join(["filter-templates", *sub, "--help"])
        rows.append([shown, round(statistics.median(wall), 3), round(min(wall), 3), round(statistics.median(cpu), 3)])
        print(f"{shown:<36} wall median {rows[-1][1]:.3f} s (min {rows[-1][2]:.3f}), CPU median {rows[-1][3]:.3f} s")
    top_wall, top_cpu = rows[0][1], rows[0][3]
    print(f"filter-templates --help: {top_wall:.3f} s wall, {top_cpu:.3f} s CPU (goal < {GOAL_S} s)")
    if args.write:
        write(
            args.write,
            "cli_startup",
            title="Command-line start-up: seconds to print --help",
            numbers={
                "top_level_help_wall_s": top_wall,
                "top_level_help_cpu_s": top_cpu,
                "goal_s": GOAL_S,
                "repeat": args.repeat,
            },
            seeds=[],
            views="no data",
            note=f"Each command in a fresh process, median of {args.repeat} (one untimed call first). "
            "CPU s is the process's user + system time, which the load of other jobs does not inflate.",
            table={"columns": ["command", "wall median s", "wall min s", "CPU median s"], "rows": rows},
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
