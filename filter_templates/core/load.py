"""How busy the machine is: what every timing is recorded with, and what makes a timing untrustworthy.

A timing taken while other processes use the cores measures the contention as much as the code.
Two readings say so: the 1-minute load average before the timing starts (:func:`load_average`:
runnable processes, ours not yet among them), and, over the timing itself, the CPU time every
other process used (:class:`OthersMeter`: the machine's busy CPU time from ``/proc/stat`` less our
own process's), in cores. The machine is *busy* when either exceeds :data:`BUSY_SHARE` of the
cores this process may use. Torch-free.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Any

__all__ = ["BUSY_SHARE", "load_average", "usable_cores", "OthersMeter", "Load", "is_busy"]

#: Other work on more than this share of the usable cores makes the machine busy (on 2 cores: one
#: other process at half a core's use, a compile or a test run beside the timing).
BUSY_SHARE = 0.25


def usable_cores() -> int:
    """The cores this process may run on: its CPU affinity (a container's or ``taskset``'s limit),
    else every core the machine has."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # macOS, Windows
        return max(1, os.cpu_count() or 1)


def load_average() -> float | None:
    """The 1-minute load average (None where the system has none)."""
    try:
        return round(os.getloadavg()[0], 2)
    except (AttributeError, OSError):
        return None


def _machine_busy_s() -> float | None:
    """Seconds of CPU time every process has used since boot (``/proc/stat``; None elsewhere)."""
    try:
        with open("/proc/stat") as f:
            fields = f.readline().split()
    except OSError:
        return None
    if not fields or fields[0] != "cpu":
        return None
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(x) for x in (fields[1:9] + ["0"] * 8)[:8])
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


class OthersMeter:
    """The cores other processes used between its creation and :meth:`cores`: the machine's busy
    CPU time less this process's, over the wall time (None where ``/proc/stat`` is missing)."""

    def __init__(self) -> None:
        self._wall, self._own, self._all = time.perf_counter(), time.process_time(), _machine_busy_s()

    def cores(self) -> float | None:
        now = _machine_busy_s()
        wall = time.perf_counter() - self._wall
        if now is None or self._all is None or wall <= 0:
            return None
        others = (now - self._all) - (time.process_time() - self._own)
        return round(max(0.0, others) / wall, 2)


def is_busy(load: float | None, cores: int) -> bool:
    """Whether ``load`` (runnable processes, or cores used by others) is over :data:`BUSY_SHARE` of ``cores``."""
    return load is not None and load > BUSY_SHARE * cores


@dataclass(frozen=True)
class Load:
    """What the machine was doing around a timing: the load average before it, the cores others
    used during it (None: not measured), and the usable cores both are compared with."""

    before: float | None
    during: float | None
    cores: int

    @property
    def busy(self) -> bool:
        return is_busy(self.before, self.cores) or is_busy(self.during, self.cores)

    def words(self) -> str:
        """``load 0.1 before, others used 0.0 of 2 cores during: idle``."""
        parts = [f"load average {self.before:g} before" if self.before is not None else "load average unknown"]
        if self.during is not None:
            parts.append(f"other processes used {self.during:g} of {self.cores} cores during")
        else:
            parts.append(f"{self.cores} cores")
        return ", ".join(parts) + (": busy" if self.busy else ": idle")

    def to_dict(self) -> dict[str, Any]:
        return {"load_before": self.before, "others_during": self.during, "cores": self.cores, "busy": self.busy}
