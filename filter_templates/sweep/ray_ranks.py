"""One Ray trial's run on several processes of its node (``--procs-per-trial N``, ``--gpus-per-trial N``).

The trial itself cannot be the run's torchrun: Tune calls it off the main thread, where torchrun
cannot install the signal handlers that stop its processes, and the rank that finishes an epoch is
another process than the one that reports to Tune. So the trial starts this module as a launcher
process (which dies with the trial, however the trial ends), the launcher runs torchrun on its
main thread, and each process torchrun starts trains its share of the run with the same
``run_config`` call as a one-process trial, its process group read from torchrun's environment as
under ``train --nproc N``. Rank 0 appends each epoch to ``metrics.jsonl`` after its checkpoint;
the trial reports every row that lands there, with the run folder as Tune's checkpoint.

Ray is not imported here: the launcher and the ranks need only torch and the package.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import torch

from filter_templates.core.errors import UsageError
from filter_templates.core.messages import error
from filter_templates.core.rundir import SUMMARY, read_metrics, read_summary
from filter_templates.run import run_config
from filter_templates.training import distributed
from filter_templates.training.config import TrainConfig

__all__ = ["train_on_processes"]

LAUNCH, RANK = "launch", "rank"
#: This module as ``python -m`` runs it (``__name__`` is ``__main__`` there).
MODULE = "filter_templates.sweep.ray_ranks"
#: How often the trial looks for epochs rank 0 has finished.
POLL_S = 1.0


def train_on_processes(
    config: TrainConfig,
    run_dir: Path,
    procs: int,
    threads: int,
    report: Callable[[dict[str, Any]], None],
    *,
    resume: bool,
    threads_source: str,
) -> dict[str, Any]:
    """Train ``config`` into ``run_dir`` as ``procs`` processes of ``threads`` torch threads each,
    calling ``report(row)`` (on this thread) for each epoch as rank 0 records it; the summary rank
    0 wrote. A run that ends failed (a loss turned NaN) returns its summary like any run;
    processes that crash raise RuntimeError with their error, so Tune restarts the trial from its
    checkpoint."""
    with tempfile.TemporaryDirectory(prefix="filter-templates-trial-") as tmp:
        job = Path(tmp) / "job.json"
        job.write_text(
            json.dumps(
                {
                    "config": config.to_dict(),
                    "run_dir": str(run_dir),
                    "threads": threads,
                    "threads_source": threads_source,
                    "resume": resume,
                    "errors": str(Path(tmp) / "error"),
                }
            ),
            encoding="utf-8",
        )
        done = _last_epoch(run_dir) if resume else 0
        with open(Path(tmp) / "launcher.log", "wb") as log:
            launcher = subprocess.Popen(
                [sys.executable, "-m", MODULE, LAUNCH, str(procs), str(job)], stdout=log, stderr=subprocess.STDOUT
            )
            try:
                while launcher.poll() is None:
                    time.sleep(POLL_S)
                    done = _report_new(run_dir, done, report)
            finally:
                if launcher.poll() is None:  # the trial is being stopped: its processes go with it
                    launcher.kill()
                    launcher.wait()
        _report_new(run_dir, done, report)
        if launcher.returncode != 0:
            raise RuntimeError(
                f"the trial's {procs} processes failed (exit {launcher.returncode}): "
                f"{_rank_error(Path(tmp)) or _last_line(Path(tmp) / 'launcher.log')}"
            )
    summary = read_summary(run_dir)
    if summary is None:
        raise RuntimeError(f"the trial's {procs} processes ended without writing {run_dir / SUMMARY}")
    return summary


def _last_epoch(run_dir: Path) -> int:
    rows = read_metrics(run_dir)
    return int(rows[-1]["epoch"]) if rows else 0


def _report_new(run_dir: Path, done: int, report: Callable[[dict[str, Any]], None]) -> int:
    """Report the rows past epoch ``done``; the last epoch reported."""
    for row in read_metrics(run_dir):
        if int(row["epoch"]) > done:
            report(row)
            done = int(row["epoch"])
    return done


def _rank_error(folder: Path) -> str | None:
    """The first rank's error line (each rank that fails writes its own file)."""
    for path in sorted(folder.glob("error.*")):
        text = path.read_text(encoding="utf-8", errors="replace").strip()
        if text:
            return text
    return None


def _last_line(path: Path) -> str:
    lines = [ln.strip() for ln in path.read_text(encoding="utf-8", errors="replace").splitlines() if ln.strip()]
    return lines[-1][:2000] if lines else "no error message"


def _launch(procs: int, job: str) -> int:
    """The launcher: torchrun on this process's main thread, its processes running :func:`_rank`."""
    distributed.die_with_parent()  # a trial killed with SIGKILL cannot stop us itself
    return distributed.launch(procs, [RANK, job], module=MODULE)


def _rank(job_path: str) -> int:
    """One process of the run: its share of every batch (the world from torchrun's environment)."""
    job = json.loads(Path(job_path).read_text(encoding="utf-8"))
    torch.set_num_threads(int(job["threads"]))
    try:
        run_config(
            TrainConfig.from_dict(job["config"]),
            Path(job["run_dir"]),
            resume=bool(job["resume"]),
            progress=False,
            threads_source=job["threads_source"],
        )
    except Exception as exc:  # the trial reads it: one line, whichever rank failed first
        line = str(exc) if isinstance(exc, UsageError) else f"{type(exc).__name__}: {exc}"
        Path(f"{job['errors']}.{os.environ.get('RANK', '0')}").write_text(" ".join(line.split()), encoding="utf-8")
        error(line)
        return 2 if isinstance(exc, UsageError) else 1
    return 0


def main(argv: list[str]) -> int:
    if len(argv) == 3 and argv[0] == LAUNCH:
        return _launch(int(argv[1]), argv[2])
    if len(argv) == 2 and argv[0] == RANK:
        return _rank(argv[1])
    error(f"usage: python -m {MODULE} {LAUNCH} N JOB | {RANK} JOB (started by a Ray trial, not by hand)")
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
