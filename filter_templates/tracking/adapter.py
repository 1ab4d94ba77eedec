"""The one interface every tracker's adapter implements, and what a run tells it.

An adapter is one tracker's run: :meth:`Adapter.open` starts it or continues the one a run folder
remembers, :meth:`Adapter.epoch` logs one epoch's scalars, :meth:`Adapter.finish` the run's final
metrics, resources and files, :meth:`Adapter.close` flushes (a paused or interrupted run continues
the same tracker run later). Adapters import their tracker lazily: each is an optional extra.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Mapping, Sequence

__all__ = ["Adapter", "RunInfo", "Scalar"]

Scalar = float | int | str | bool


@dataclass(frozen=True)
class RunInfo:
    """What names a run in a tracker: its run folder's name, the group a sweep's or reduce's runs
    share (None: a run of its own), the ``log`` settings, and its identity as hyperparameters."""

    name: str
    group: str | None
    settings: Mapping[str, Any]
    hparams: Mapping[str, Scalar]


class Adapter(ABC):
    """One tracker's run of a training run."""

    name: ClassVar[str]

    @abstractmethod
    def open(self, run: RunInfo, saved: Mapping[str, Any] | None) -> str:
        """Start the tracker's run (``saved`` None) or continue the one ``saved["id"]`` names; return
        the id that finds it again (kept in the run folder)."""

    @abstractmethod
    def epoch(self, step: int, scalars: Mapping[str, float]) -> None:
        """Log one epoch's scalars at ``step`` (the epoch number), written through before returning."""

    @abstractmethod
    def finish(self, step: int, final: Mapping[str, float], files: Sequence[Path], ok: bool) -> None:
        """Log the run's final metrics and resources (at ``step``), its files as artifacts where the
        tracker keeps artifacts, and end the tracker's run as succeeded (``ok``) or failed."""

    @abstractmethod
    def close(self) -> None:
        """Flush and let go, leaving the tracker's run open for a later continuation."""
