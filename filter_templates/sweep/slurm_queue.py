"""What the Slurm driver asks the cluster (``sinfo``, ``squeue``, ``sacct``) and what it must not
forget across its own restarts: which Slurm job trains which grid point (``jobs.json``).

The book is the driver's memory. A driver killed at any instant and started again reads it to
re-attach to jobs that are still queued or running instead of submitting them twice. Before a
batch is handed to sbatch its keys are written down under the batch's unique job name, so even a
kill between sbatch's answer and the book's update is recovered: the jobs are found by name.
Every change is a read-modify-write under an exclusive lock and an atomic rename.
"""

from __future__ import annotations

import fcntl
import shutil
import socket
import subprocess
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

from filter_templates.core.errors import UsageError
from filter_templates.core.rundir import atomic_write_json, read_json

__all__ = ["Cluster", "JobBook", "LIVE_STATES", "inspect_cluster", "job_states", "jobs_named"]

#: Job states after which a job may still run (or run again): the driver keeps waiting.
LIVE_STATES = frozenset(
    {
        "PENDING",
        "RUNNING",
        "REQUEUED",
        "REQUEUE_HOLD",
        "REQUEUE_FED",
        "CONFIGURING",
        "COMPLETING",
        "SUSPENDED",
        "RESIZING",
        "SIGNALING",
        "STAGE_OUT",
        "STOPPED",
        "RESV_DEL_HOLD",
        "POWER_UP_NODE",
        "UPDATE_DB",
    }
)
_TIMEOUT_S = 60  # one Slurm command; a busy controller answers slowly, a dead one not at all


def _slurm(args: Sequence[str]) -> subprocess.CompletedProcess:
    """Run a Slurm client command; its absence or a controller that does not answer is the user's to fix."""
    if shutil.which(args[0]) is None:
        raise UsageError(
            f"--engine slurm needs Slurm's commands ({args[0]} is not on PATH): run the sweep on a "
            "machine that can submit jobs to the cluster (a login node)"
        )
    try:
        return subprocess.run(list(args), capture_output=True, text=True, timeout=_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        raise UsageError(
            f"Slurm did not answer `{' '.join(args[:2])}` within {_TIMEOUT_S} s; is slurmctld running?"
        ) from None


def _first_line(text: str) -> str:
    lines = [ln.strip() for ln in (text or "").splitlines() if ln.strip()]
    return lines[-1] if lines else "no message"


@dataclass
class Cluster:
    """The partition the jobs go to and its nodes' names."""

    partition: str
    nodes: list[str]

    @property
    def only_this_host(self) -> bool:
        """Every node is this machine (a one-node test cluster): its local folders are the nodes' too."""
        here = {socket.gethostname(), socket.gethostname().split(".")[0], "localhost"}
        return all(n in here for n in self.nodes)


def inspect_cluster(partition: str | None) -> Cluster:
    """The partition ``partition`` (None: the cluster's default) and its nodes; a one-line
    UsageError when Slurm cannot be reached or the partition does not exist."""
    out = _slurm(["sinfo", "-h", "-o", "%P"])
    if out.returncode != 0:
        raise UsageError(f"cannot reach Slurm: sinfo: {_first_line(out.stderr)}")
    names = [p.strip() for p in out.stdout.split() if p.strip()]
    default = next((p.rstrip("*") for p in names if p.endswith("*")), None)
    known = [p.rstrip("*") for p in names]
    name = partition or default
    if name is None:
        raise UsageError(
            "this Slurm cluster has no default partition; name one with --partition "
            f"({', '.join(known) or 'none found'})"
        )
    if name not in known:
        raise UsageError(
            f"--partition {name}: no such partition on this Slurm cluster (it has: {', '.join(known) or 'none'})"
        )
    nodes = _slurm(["sinfo", "-h", "-N", "-p", name, "-o", "%N"]).stdout.split()
    return Cluster(name, sorted(set(nodes)))


def job_states(job_ids: Sequence[str]) -> dict[str, tuple[str, str]]:
    """``{job_id: (STATE, reason)}`` for the jobs Slurm still knows (``squeue``, which keeps
    finished jobs for a while; ``sacct`` where accounting is on). A job missing from the answer
    is gone: finished long ago, or never seen."""
    ids = list(dict.fromkeys(job_ids))
    if not ids:
        return {}
    out: dict[str, tuple[str, str]] = {}
    for i in range(0, len(ids), 200):
        chunk = ids[i : i + 200]
        res = _slurm(["squeue", "-h", "-r", "--states=all", "-j", ",".join(chunk), "-o", "%i|%T|%r"])
        if res.returncode != 0 and "Invalid job id" not in res.stderr:
            raise UsageError(f"cannot ask Slurm about its jobs: squeue: {_first_line(res.stderr)}")
        for line in res.stdout.splitlines():
            parts = line.strip().split("|")
            if len(parts) == 3:
                out[parts[0]] = (parts[1].upper(), parts[2])
    missing = [j for j in ids if j not in out]
    if missing and shutil.which("sacct"):  # purged from the controller: accounting may still know
        res = _slurm(["sacct", "-n", "-X", "-P", "-j", ",".join(missing), "-o", "JobID,State"])
        if res.returncode == 0:
            for line in res.stdout.splitlines():
                parts = line.strip().split("|")
                if len(parts) == 2 and parts[0] in missing:
                    out[parts[0]] = (parts[1].split()[0].upper(), "from sacct")
    return out


def jobs_named(name: str) -> list[str]:
    """The ids of the jobs (array tasks one by one) named ``name`` that Slurm still knows."""
    res = _slurm(["squeue", "-h", "-r", "--states=all", "--name", name, "-o", "%i"])
    return [ln.strip() for ln in res.stdout.splitlines() if ln.strip()] if res.returncode == 0 else []


class JobBook:
    """``jobs.json`` in the Slurm folder: ``jobs`` maps a point's key to its job (``job_id``,
    ``run_dir``, ``submitted_at``, ``stdout``, ``stderr``, ``result``); ``batches`` maps the job
    name of a batch being submitted to its keys (in array order) until its ids are written."""

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        self.path = self.folder / "jobs.json"

    @contextmanager
    def _locked(self) -> Iterator[dict[str, Any]]:
        self.folder.mkdir(parents=True, exist_ok=True)
        with open(self.folder / ".jobs.lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                book = read_json(self.path) or {}
                book.setdefault("jobs", {})
                book.setdefault("batches", {})
                yield book
                atomic_write_json(self.path, book)
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def read(self) -> dict[str, Any]:
        book = read_json(self.path) or {}
        return {"jobs": book.get("jobs", {}), "batches": book.get("batches", {})}

    def intend(self, name: str, keys: Sequence[str], run_dirs: Sequence[str]) -> None:
        with self._locked() as book:
            book["batches"][name] = {"keys": list(keys), "run_dirs": list(run_dirs), "at": time.time()}

    def record(self, name: str | None, jobs: Mapping[str, Mapping[str, Any]]) -> None:
        """Write ``{key: job}`` and close batch ``name``'s intent (None: no batch to close)."""
        with self._locked() as book:
            book["jobs"].update({k: dict(v) for k, v in jobs.items()})
            if name is not None:
                book["batches"].pop(name, None)

    def drop(self, key: str) -> None:
        with self._locked() as book:
            book["jobs"].pop(key, None)
