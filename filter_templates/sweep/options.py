"""How a grid is run: the engine and its settings, one object that ``sweep`` and ``reduce`` build
from their flags and every engine takes whole (``run_local``, ``run_ray``, ``run_slurm``)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from filter_templates.core import validate
from filter_templates.core.errors import UsageError

__all__ = ["ENGINES", "EngineOptions", "SlurmOptions"]

ENGINES = ("local", "ray", "slurm")

#: sbatch options that --slurm-option may not set: our own flags set them, or the engine needs its own value.
_SLURM_OWN = {
    "partition": "--partition",
    "p": "--partition",
    "time": "--time",
    "t": "--time",
    "cpus-per-task": "--cpus-per-task",
    "c": "--cpus-per-task",
    "gpus-per-task": "--gpus-per-task",
    "mem": "--mem",
    "array": "--array-parallelism",
    "job-name": None,
    "J": None,
    "output": None,
    "o": None,
    "error": None,
    "e": None,
    "open-mode": None,
    "signal": None,
    "wrap": None,
}


@dataclass
class SlurmOptions:
    """What ``--engine slurm`` asks of the cluster (``sweep.slurm_engine``). ``time``: minutes per job
    (a run that reaches it checkpoints, requeues itself and resumes); ``extra``: further sbatch
    options (``--slurm-option KEY=VALUE``); ``folder``: where submitit keeps the jobs' pickles and
    logs (None: beside the store); ``poll_s``: how often the driver asks Slurm about its jobs."""

    partition: str | None = None
    time: int = 60
    cpus_per_task: int = 1
    gpus_per_task: int = 0
    # one run's processes: tasks on each of ``nodes`` nodes (None: one per GPU of --gpus-per-task)
    tasks_per_node: int | None = None
    nodes: int = 1
    mem: str | None = None
    array_parallelism: int | None = None
    extra: dict[str, str] = field(default_factory=dict)
    folder: str | None = None
    poll_s: float = 5.0

    @property
    def tasks(self) -> int:
        """Tasks per node, each one process of a point's run (``--gpus-per-task N`` > 1 alone: N
        processes, one GPU each)."""
        return self.tasks_per_node or (self.gpus_per_task if self.gpus_per_task > 1 else 1)

    def validate(self) -> "SlurmOptions":
        """Refuse what sbatch would refuse later (or silently misread), naming the flag."""
        validate.integer(self.time, "--time (minutes)")
        if self.time < 3:  # submitit signals 90 s before the limit: a shorter job would requeue before it trains
            raise UsageError(
                f"--time must be at least 3 minutes (a job is told to checkpoint 90 s before its "
                f"limit), got {self.time}"
            )
        validate.integer(self.cpus_per_task, "--cpus-per-task")
        validate.integer(self.gpus_per_task, "--gpus-per-task", minimum=0)
        if self.tasks_per_node is not None:
            validate.integer(self.tasks_per_node, "--tasks-per-node")
        validate.integer(self.nodes, "--nodes")
        if self.array_parallelism is not None:
            validate.integer(self.array_parallelism, "--array-parallelism")
        validate.number(self.poll_s, "the Slurm poll interval")
        if self.mem is not None and not re.fullmatch(r"[1-9][0-9]*[KMGT]?", str(self.mem)):
            raise UsageError(f"--mem must be a size as sbatch takes it (e.g. 4G, 8000M), got {self.mem!r}")
        if self.partition is not None and not re.fullmatch(r"[\w.-]+", self.partition):
            raise UsageError(f"--partition must be one partition's name, got {self.partition!r}")
        for key in self.extra:
            if key in _SLURM_OWN:
                instead = _SLURM_OWN[key]
                raise UsageError(
                    f"--slurm-option {key}=...: "
                    + (f"use {instead}" if instead else "the Slurm engine sets this itself")
                )
        return self

    @staticmethod
    def parse_extra(items: list[str] | None) -> dict[str, str]:
        """``--slurm-option KEY=VALUE`` (repeatable) as a dict, refusing what is not KEY=VALUE."""
        out: dict[str, str] = {}
        for item in items or []:
            key, sep, value = item.partition("=")
            key = key.strip().lstrip("-")
            if not sep or not re.fullmatch(r"[A-Za-z][A-Za-z0-9_-]*", key) or not value.strip():
                raise UsageError(
                    f"--slurm-option takes KEY=VALUE, an sbatch option without its dashes "
                    f"(e.g. account=myproject, qos=normal, constraint=a100), got {item!r}"
                )
            out[key] = value.strip()
        return out


@dataclass
class EngineOptions:
    """How to run a grid. ``jobs``/``threads``: local only (None: 1 job, the thread rule's share
    of the cores); ``threads_source``: who chose ``threads``, recorded with each run (None with
    ``threads`` given: ``--threads``); ``address`` to ``storage``: Ray only (see ``run_ray``;
    ``cpus_per_trial`` None: one per process of the trial; ``procs_per_trial``: the processes of
    each trial's run, None: one per GPU of a whole ``gpus_per_trial`` above 1, else one);
    ``retry_failed``: train failed points again; ``slurm``: Slurm only."""

    engine: str = "local"
    jobs: int | None = None
    threads: int | None = None
    threads_source: str | None = None
    address: str | None = None
    cpus_per_trial: float | None = None
    gpus_per_trial: float = 0.0
    procs_per_trial: int | None = None
    max_failures: int = 2
    storage: str | None = None
    retry_failed: bool = False
    slurm: SlurmOptions = field(default_factory=SlurmOptions)

    @property
    def procs(self) -> int:
        """Processes of each Ray trial's run: ``procs_per_trial``, else one per GPU when a trial
        has several whole GPUs, else one."""
        if self.procs_per_trial is not None:
            return self.procs_per_trial
        return int(self.gpus_per_trial) if self.gpus_per_trial > 1 else 1

    @property
    def cpus(self) -> float:
        """CPUs of each Ray trial, shared by its processes: ``cpus_per_trial``, else one each."""
        return float(self.procs) if self.cpus_per_trial is None else self.cpus_per_trial

    def validate_ray(self) -> "EngineOptions":
        """Refuse trial shapes Ray would accept and the run could not use: a GPU shared by two
        processes (NCCL refuses it), part of a GPU beside whole ones, a process without a CPU."""
        if self.cpus_per_trial is not None:
            validate.number(self.cpus_per_trial, "--cpus-per-trial")
        validate.number(self.gpus_per_trial, "--gpus-per-trial", strict=False)
        if self.procs_per_trial is not None:
            validate.integer(self.procs_per_trial, "--procs-per-trial")
        g = self.gpus_per_trial
        if g > 1 and g != int(g):
            raise UsageError(
                f"--gpus-per-trial above 1 must be a whole number (each of the trial's processes takes "
                f"one GPU), got {g:g}"
            )
        n = self.procs
        if n > 1 and g and g != n:
            raise UsageError(
                f"--procs-per-trial {n} with --gpus-per-trial {g:g}: each process of a GPU run takes its own "
                f"GPU; give --gpus-per-trial {n}"
            )
        if self.cpus < n:
            raise UsageError(
                f"--cpus-per-trial {self.cpus:g} is less than one CPU for each of the trial's {n} "
                f"processes; give at least --cpus-per-trial {n}"
            )
        return self
