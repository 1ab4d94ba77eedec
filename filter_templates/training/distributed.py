"""One run on several processes: who this process is, the process group, and the few collective
steps a run takes (gradients through ``DistributedDataParallel``, sums of counts, rank 0's
buffers). A single process is the case of one: every helper here is then a no-op.

The processes are started by ``torchrun`` (or ``train --nproc N``, which runs it), by Slurm tasks
or by a Ray trial; each finds its rank, the process count and the rendezvous address in the
environment (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``LOCAL_WORLD_SIZE``, ``MASTER_ADDR``,
``MASTER_PORT``, as torchrun sets them). CPU processes talk over gloo, GPU processes over NCCL,
one GPU each (``cuda:LOCAL_RANK``).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
from dataclasses import dataclass
from typing import Iterator, Mapping, Sequence

import torch
import torch.distributed as dist
from torch.distributed import run as torchrun
from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
from torch.nn.parallel import DistributedDataParallel

from filter_templates.core import validate
from filter_templates.core.errors import UsageError

__all__ = [
    "World",
    "from_env",
    "joined",
    "device_for",
    "wrap",
    "total",
    "all_finite",
    "broadcast_buffers",
    "launch",
    "die_with_parent",
    "check_sync_bn",
    "ENV_KEYS",
]

#: The environment a process of a several-process run reads (torchrun's names).
ENV_KEYS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
_PR_SET_PDEATHSIG = 1


@dataclass(frozen=True)
class World:
    """This process's place in its run: ``rank`` of ``size`` processes, ``local_rank`` of the
    ``local_size`` on its node (which picks its GPU and divides the node's memory)."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0
    local_size: int = 1

    @property
    def main(self) -> bool:
        """Whether this process writes the run's files and talks to the user."""
        return self.rank == 0


def from_env(env: Mapping[str, str] | None = None) -> World:
    """This process's :class:`World` from torchrun's variables; one process when they are absent."""
    env = os.environ if env is None else env
    if "WORLD_SIZE" not in env:
        return World()
    try:
        size = validate.parse(env["WORLD_SIZE"], int, 1)
        rank = validate.parse(env.get("RANK", "0"), int, 0)
        local_rank = validate.parse(env.get("LOCAL_RANK", str(rank)), int, 0)
        local_size = validate.parse(env.get("LOCAL_WORLD_SIZE", str(size)), int, 1)
    except UsageError as exc:
        raise UsageError(f"the process environment (RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE): {exc}") from None
    if rank >= size or local_rank >= local_size:
        raise UsageError(f"the process environment says rank {rank} of {size} (local {local_rank} of {local_size})")
    return World(rank, size, local_rank, local_size)


def device_for(device: torch.device, world: World) -> torch.device:
    """The device of this process: its own GPU (``cuda:LOCAL_RANK``) in a several-process CUDA run."""
    if world.size == 1 or device.type != "cuda":
        return device
    if device.index is not None and torch.cuda.device_count() > 1:
        raise UsageError(
            f"device {device} names one GPU, but each of the {world.size} processes takes its own "
            "(cuda:LOCAL_RANK); give --device cuda or auto"
        )
    local = torch.device("cuda", world.local_rank % max(1, torch.cuda.device_count()))
    torch.cuda.set_device(local)
    return local


@contextlib.contextmanager
def joined(world: World, device: torch.device) -> Iterator[None]:
    """The process group of ``world`` for the block (NCCL on CUDA, else gloo), left as found: one
    the caller opened is the caller's to close. A process torchrun started dies with its launcher
    (a launcher killed with SIGKILL cannot stop its workers itself)."""
    if world.size == 1 or dist.is_initialized():
        yield
        return
    if "TORCHELASTIC_RUN_ID" in os.environ:
        die_with_parent()
    dist.init_process_group(
        "nccl" if device.type == "cuda" else "gloo",
        rank=world.rank,
        world_size=world.size,
        device_id=device if device.type == "cuda" else None,
    )
    try:
        yield
    finally:
        dist.destroy_process_group()


def check_sync_bn(sync_bn: bool | None, device: torch.device, size: int) -> None:
    """Refuse ``sync_bn`` where torch cannot do it: its SyncBatchNorm runs on GPUs only."""
    if sync_bn and size > 1 and device.type != "cuda":
        raise UsageError(
            f"--sync-bn needs CUDA processes (torch's SyncBatchNorm runs on GPUs only); this run's device is {device}"
        )


def die_with_parent() -> None:
    """Ask Linux to SIGKILL this process when its parent (the launcher) ends, however it ends."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):
        return  # not Linux: the launcher's own clean-up is what there is
    if os.getppid() == 1:  # the launcher was gone before we asked
        os._exit(1)


def _active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def wrap(model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """``model`` as it takes training steps: under ``DistributedDataParallel`` (gradients averaged
    over the processes, rank 0's buffers broadcast before every forward) when there are several."""
    if not _active():
        return model
    return DistributedDataParallel(model, device_ids=[device] if device.type == "cuda" else None)


def total(*values: torch.Tensor) -> list[torch.Tensor]:
    """Each of ``values`` (scalars on the device) summed over the processes, as float64 (counts
    stay exact); the values themselves, as float64, in a single process."""
    stacked = torch.stack([v.detach().to(torch.float64) for v in values])
    if _active():
        dist.all_reduce(stacked)
    return list(stacked.unbind())


def concatenated(part: torch.Tensor) -> torch.Tensor:
    """The 1-D ``part`` of every process (its shard of an evaluation) joined in rank order; ``part``
    itself in a single process."""
    if not _active():
        return part
    sizes = [torch.zeros(1, dtype=torch.int64, device=part.device) for _ in range(dist.get_world_size())]
    dist.all_gather(sizes, torch.tensor([len(part)], dtype=torch.int64, device=part.device))
    lengths = [int(n.item()) for n in sizes]
    padded = torch.zeros(max(lengths), dtype=part.dtype, device=part.device)
    padded[: len(part)] = part
    gathered = [torch.empty_like(padded) for _ in lengths]
    dist.all_gather(gathered, padded)
    return torch.cat([g[:n] for g, n in zip(gathered, lengths)])


def all_finite(value: torch.Tensor) -> bool:
    """Whether ``value`` is finite on every process: all of them stop on the same step or none."""
    return bool(torch.isfinite(total(value)[0]).item())


def broadcast_buffers(model: torch.nn.Module) -> None:
    """Give every process rank 0's buffers (BatchNorm statistics): each process's own are updated
    by its share of the batches, and evaluating or saving must see one model."""
    if _active():
        for b in model.buffers():
            dist.broadcast(b, 0)


def launch(nproc: int, argv: Sequence[str], module: str = "filter_templates") -> int:
    """Run ``python -m <module> <argv>`` as ``nproc`` processes on this node, exactly as
    ``torchrun --standalone --nproc-per-node <nproc> -m <module> <argv>`` does (same environment,
    so the same numbers; a free port of this host, so runs side by side never meet); the exit
    status: 0, else the first failed process's (2 for a usage error, 1 otherwise). Call it from
    a process's main thread: torchrun installs signal handlers to stop its processes."""
    args = torchrun.parse_args(["--standalone", "--nproc-per-node", str(int(nproc)), "--module", module])
    args.training_script_args = list(argv)  # as given: torchrun's own parser would take ``--nproc`` for its flag
    try:
        torchrun.run(args)
    except ChildFailedError as exc:
        codes = [f.exitcode for f in exc.failures.values()]
        return 2 if 2 in codes else 1
    return 0
