"""How long the README's test command takes, how many tests it runs and how much code they cover.

Runs ``python -m pytest`` (the default suite: ``pyproject.toml``'s addopts) in a checkout, in a
fresh process whose subprocesses import that checkout's package, and records wall seconds, the
CPU seconds of pytest and every process it waited for, the test counts of pytest's last line and,
with ``--cov``, the line coverage of ``filter_templates``. Two checkouts measured side by side at
the same time see the same load on a shared machine; the CPU seconds move less with the load than
the wall seconds.

    python benchmarks/test_suite.py [--repo DIR] [--cov] [--name test_suite] [--write docs/results/]
        [--log FILE] [-- EXTRA PYTEST ARGS]
"""

from __future__ import annotations

import argparse
import os
import re
import resource
import subprocess
import sys
import time
from pathlib import Path

from results_file import add_write_argument, write

REPO = Path(__file__).resolve().parent.parent


def _counts(text: str) -> dict[str, int]:
    """``{"passed": 650, "skipped": 9, ...}`` from pytest's last summary line."""
    lines = [ln for ln in text.splitlines() if re.search(r"\d+ (passed|failed)", ln)]
    if not lines:
        return {}
    return {
        kind: int(n) for n, kind in re.findall(r"(\d+) (passed|failed|skipped|deselected|errors?|xfailed)", lines[-1])
    }


def _coverage(text: str) -> dict[str, float] | None:
    """Statements, missed and percent of the coverage report's TOTAL line."""
    m = re.search(r"^TOTAL\s+(\d+)\s+(\d+)\s+(\d+)%", text, re.MULTILINE)
    return None if m is None else {"statements": int(m[1]), "missed": int(m[2]), "percent": int(m[3])}


def measure(repo: Path, cov: bool, extra: list[str], log: Path | None = None) -> dict:
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *extra]
    if cov:
        cmd += ["--cov=filter_templates", "--cov-report=term"]
    env = {**os.environ, "PYTHONPATH": str(repo)}
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    load = os.getloadavg()[0]
    t0 = time.perf_counter()
    done = subprocess.run(cmd, cwd=repo, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if log is not None:
        log.write_text(done.stdout + done.stderr)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {
        "pytest_args": cmd[3:],
        "returncode": done.returncode,
        "wall_s": round(wall, 1),
        "cpu_s": round(cpu, 1),
        "load_average_1min_at_start": round(load, 2),
        "tests": _counts(done.stdout),
        "coverage": _coverage(done.stdout),
        "tail": done.stdout.splitlines()[-3:],
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repo", type=Path, default=REPO, help="the checkout to test (default: this one)")
    p.add_argument("--cov", action="store_true", help="also measure line coverage (pytest-cov; slows the run)")
    p.add_argument("--name", default="test_suite", help="results file stem (default: test_suite)")
    p.add_argument("--log", type=Path, default=None, help="also write pytest's whole output to this file")
    add_write_argument(p)
    p.add_argument("extra", nargs="*", help="more pytest arguments (after --)")
    args = p.parse_args()
    numbers = measure(args.repo.resolve(), args.cov, args.extra, args.log)
    print(numbers)
    if args.write:
        t = numbers["tests"]
        write(
            args.write,
            args.name,
            title="The default test suite (python -m pytest)",
            numbers=numbers,
            seeds=[],
            views="the default suite (pyproject.toml's addopts: slow tests left out, two workers)",
            table={
                "columns": ["tests run", "wall s", "CPU s", "line coverage %"],
                "rows": [
                    [
                        sum(v for k, v in t.items() if k != "deselected"),
                        numbers["wall_s"],
                        numbers["cpu_s"],
                        (numbers["coverage"] or {}).get("percent"),
                    ]
                ],
            },
            note="wall seconds on a shared machine move with its load; CPU seconds count pytest and the "
            "processes it waited for (not Ray's or Slurm's daemons)",
        )
    return 0 if numbers["returncode"] in (0, 1) else numbers["returncode"]


if __name__ == "__main__":
    sys.exit(main())
