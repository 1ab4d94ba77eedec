"""What a grid point pays for being a Slurm job: the time from submission to the job's start and
from its start to its first epoch.

Runs ``filter-templates sweep --engine slurm`` on a fresh store (by default the two-point grid of
MobileNet base and uniform at width 0.05 on digits, one epoch) and reads what every job wrote
into its run's ``summary.json`` under ``slurm``: when the driver submitted it, when the job's
Python entered the run, when its first epoch ended and how long that epoch took. Slurm's own
start time (``squeue -o %S``, whole seconds) splits the first interval into the scheduler's part
and the job's Python starting up (interpreter, torch, unpickling the call).

    python benchmarks/slurm_overhead.py [--templates base uniform] [--write docs/results/]

Needs a reachable Slurm cluster (tests/slurm/up.sh starts a one-node one as root) and submitit.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from results_file import add_write_argument, write


def slurm_start(job_id: str) -> float | None:
    """Slurm's start time of a job (its last start, whole seconds), or None once it is forgotten."""
    out = subprocess.run(["squeue", "-h", "--states=all", "-j", job_id, "-o", "%S"], capture_output=True, text=True)
    text = out.stdout.strip()
    try:
        return dt.datetime.fromisoformat(text).timestamp()
    except ValueError:
        return None


def sweep_command(work: Path, templates: list[str]) -> list[str]:
    exe = shutil.which("filter-templates")
    prog = [exe] if exe else [sys.executable, "-m", "filter_templates"]
    return [
        *prog,
        "sweep",
        "--engine",
        "slurm",
        "--models",
        "mobilenet",
        "--templates",
        *templates,
        "--widths",
        "0.05",
        "--datasets",
        "digits",
        "--epochs",
        "1",
        "--db",
        str(work / "S"),
        "--runs-dir",
        str(work / "R"),
        "--json",
    ]


def point_times(summary: dict) -> dict:
    s = summary["slurm"]
    start = slurm_start(s["job_id"])
    queued = s["started_at"] - s["submitted_at"]
    to_epoch_end = s["first_epoch_at"] - s["started_at"]
    return {
        "run": Path(summary["run_dir"]).name.rpartition("-")[0],  # the point, without its key's digest
        "slurm_job_id": s["job_id"],
        "submission_to_start_s": round(queued, 2),
        "scheduling_s": None if start is None else round(start - s["submitted_at"], 2),
        "python_start_s": None if start is None else round(s["started_at"] - start, 2),
        "start_to_first_epoch_s": round(to_epoch_end - s["first_epoch_s"], 2),
        "first_epoch_s": round(s["first_epoch_s"], 2),
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--templates", nargs="+", default=["base", "uniform"], help="one grid point (job) per template")
    add_write_argument(ap)
    args = ap.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="slurm-overhead-", dir=Path.cwd()) as tmp:
        work = Path(tmp)
        cmd = sweep_command(work, args.templates)
        t = time.perf_counter()
        done = subprocess.run(cmd, capture_output=True, text=True)
        wall = time.perf_counter() - t
        if done.returncode != 0:
            print(done.stderr[-2000:], file=sys.stderr)
            return 1
        summaries = []
        for path in sorted((work / "R").glob("*/summary.json")):
            summaries.append({**json.loads(path.read_text()), "run_dir": str(path.parent)})
        rows = [point_times(s) for s in summaries]
    for r in rows:
        print(
            f"{r['run']:<48} submission->start {r['submission_to_start_s']:6.2f} s "
            f"(scheduler {r['scheduling_s']} s, python {r['python_start_s']} s), "
            f"start->first epoch {r['start_to_first_epoch_s']:6.2f} s, first epoch {r['first_epoch_s']:.2f} s"
        )
    numbers = {
        "points": rows,
        "sweep_wall_s": round(wall, 2),
        "median_submission_to_start_s": round(statistics.median(r["submission_to_start_s"] for r in rows), 2),
        "median_start_to_first_epoch_s": round(statistics.median(r["start_to_first_epoch_s"] for r in rows), 2),
        "sweep_command": " ".join(["filter-templates", *cmd[cmd.index("sweep") :]]),
        "slurm": subprocess.run(["sinfo", "-V"], capture_output=True, text=True).stdout.strip(),
        "slurm_start_resolution_s": 1.0,  # squeue's start time is in whole seconds: the split is +-1 s
    }
    if args.write:
        write(
            args.write,
            "slurm_overhead",
            title="Slurm engine: overhead per grid point",
            numbers=numbers,
            seeds=[0],
            views="digits (sklearn's 8x8 digits), full training split, 1 epoch",
            table={
                "columns": ["run", "submission -> start (s)", "start -> first epoch (s)", "first epoch (s)"],
                "rows": [
                    [r["run"], r["submission_to_start_s"], r["start_to_first_epoch_s"], r["first_epoch_s"]]
                    for r in rows
                ],
            },
            note="On a one-node Slurm (this machine, started by tests/slurm/up.sh), one CPU per job, both jobs "
            "at once. submission -> start: from "
            "sbatch to the job's Python entering the run (Slurm's scheduling, then the interpreter and torch "
            "starting); start -> first epoch: data, model and the execution choice (precision and memory "
            "format, measured) before the first epoch trains. The machine's load average is recorded: "
            "other jobs running beside it make every part slower.",
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
