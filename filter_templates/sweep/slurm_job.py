"""What one Slurm job runs: a grid point trained into its run folder, on a node.

The job never opens the results store (the node may not even see the driver's disk the same
way, and SQLite over a network file system is not safe): it writes the run folder, and the
driver records what it finds there. The summary it leaves carries ``slurm_job_id`` and, under
``slurm``, when the job was submitted, started and finished its first epoch.

When Slurm is about to stop the job (its time limit, a preemption), submitit catches the signal
and calls :meth:`TrainJob.checkpoint`: the job is requeued with the same call, and ``train``
resumes from the run folder's last per-epoch checkpoint.
"""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path
from typing import Any

import torch

from filter_templates.core.errors import UsageError
from filter_templates.core.rundir import CHECKPOINT, SUMMARY, atomic_write_json, read_json
from filter_templates.core.status import FAILED
from filter_templates.run import run_config
from filter_templates.sweep.plan import complete_resources, failure_reason
from filter_templates.training.config import TrainConfig

__all__ = ["TrainJob", "import_submitit", "rendezvous_port"]


def import_submitit() -> Any:
    """The ``submitit`` module, or a UsageError that says how to install it."""
    try:
        import submitit
    except ImportError as exc:
        raise UsageError(
            f"--engine slurm needs submitit, which is not installed ({exc}); "
            "install it with: pip install 'filter-templates[slurm]'"
        ) from None
    return submitit


class TrainJob:
    """The callable submitit pickles for every grid point; ``payload``: ``key``, ``run_dir``,
    ``config`` (a TrainConfig dict), ``threads`` and ``submitted_at``."""

    def __call__(self, payload: dict[str, Any]) -> dict[str, Any]:
        started = time.time()
        run_dir = Path(payload["run_dir"])
        torch.set_num_threads(max(1, int(os.environ.get("SLURM_CPUS_PER_TASK") or payload["threads"])))
        first: dict[str, float] = {}

        def on_epoch(row: dict) -> None:  # the first epoch this start trained (later than 1 when resumed)
            first.setdefault("epoch", int(row["epoch"]))
            first.setdefault("at", time.time())
            first.setdefault("seconds", float(row.get("seconds") or 0.0))

        main = _join_tasks()
        try:
            config = TrainConfig.from_dict(payload["config"])
            outcome = run_config(
                config,
                run_dir,
                resume=(run_dir / CHECKPOINT).exists(),
                progress=False,
                on_epoch=on_epoch,
                threads_source="--cpus-per-task",
            )
            summary = complete_resources(config, outcome, run_dir)  # measured here, on the node
        except Exception as exc:  # a broken run is a result (failed, with why); SystemExit (requeue) passes
            return {"status": FAILED, "reason": failure_reason(exc), "slurm_job_id": _job_id()}
        slurm = {
            "job_id": _job_id(),
            "node": socket.gethostname(),
            "restarts": _restarts(),
            "submitted_at": payload.get("submitted_at"),
            "started_at": started,
            "first_epoch": first.get("epoch"),
            "first_epoch_at": first.get("at"),
            "first_epoch_s": first.get("seconds"),
        }
        own = read_json(run_dir / SUMMARY) if main else None  # train's file, without what the sweep measured
        if own is not None:
            atomic_write_json(run_dir / SUMMARY, {**own, "slurm_job_id": slurm["job_id"], "slurm": slurm})
        return {**summary, "slurm_job_id": slurm["job_id"], "slurm": slurm}

    def checkpoint(self, payload: dict[str, Any]) -> Any:
        """Called by submitit on the time-limit or preemption signal: requeue this same call (the
        run folder holds the checkpoint ``train`` resumes from)."""
        return import_submitit().helpers.DelayedSubmission(self, payload)


def _join_tasks() -> bool:
    """Make this task one process of its point's run when the job has several (``--tasks-per-node``,
    ``--nodes``): torchrun's variables from submitit's view of the job, the first node as the
    rendezvous, a port from the job id (:func:`rendezvous_port`). Whether this task is the run's
    rank 0 (which writes)."""
    if not os.environ.get("SLURM_NTASKS", "1").isdigit() or int(os.environ.get("SLURM_NTASKS", "1")) <= 1:
        return True  # one task (or not under Slurm at all: a job called in process)
    env = import_submitit().JobEnvironment()
    os.environ.update(
        {
            "RANK": str(env.global_rank),
            "WORLD_SIZE": str(env.num_tasks),
            "LOCAL_RANK": str(env.local_rank),
            "LOCAL_WORLD_SIZE": str(env.num_tasks // env.num_nodes),
            "MASTER_ADDR": env.hostnames[0],
            "MASTER_PORT": str(rendezvous_port(os.environ.get("SLURM_JOB_ID") or str(env.job_id))),
        }
    )
    return env.global_rank == 0


def rendezvous_port(job_id: str) -> int:
    """The port of a several-task job's rendezvous on its first node, from ``SLURM_JOB_ID``: every
    task of the job computes the same one without talking, and jobs side by side on one node (each
    array task has its own job id) differ unless their ids differ by a multiple of 20,000."""
    digits = "".join(c for c in job_id if c.isdigit()) or "0"
    return 20000 + int(digits) % 20000


def _job_id() -> str:
    """``ARRAY_TASK`` for a task of an array, else the job's id: the id squeue and scancel take."""
    array, task = os.environ.get("SLURM_ARRAY_JOB_ID"), os.environ.get("SLURM_ARRAY_TASK_ID")
    return f"{array}_{task}" if array and task else os.environ.get("SLURM_JOB_ID", "")


def _restarts() -> int:
    try:
        return int(os.environ.get("SLURM_RESTART_COUNT") or 0)
    except ValueError:
        return 0
