"""Progress bars: tqdm, on stderr, shown only when stderr is a terminal (silent in logs, CI and
under ``--json``, whose stdout must hold one document)."""

from __future__ import annotations

import sys
from typing import Any, Iterable

from tqdm import tqdm

__all__ = ["Progress"]


class Progress(tqdm):
    """``for x in Progress(items, desc="epoch 3")`` with ``bar.set(loss=...)`` for live stats.

    ``enabled``: None (the default) shows the bar only when stderr is a terminal.
    """

    def __init__(
        self,
        iterable: Iterable[Any] | None = None,
        total: int | None = None,
        desc: str = "",
        enabled: bool | None = None,
        **kwargs: Any,
    ) -> None:
        on = sys.stderr.isatty() if enabled is None else enabled
        kwargs.setdefault("mininterval", 0.2)
        super().__init__(
            iterable, total=total, desc=desc, file=sys.stderr, disable=not on, dynamic_ncols=True, **kwargs
        )

    @property
    def enabled(self) -> bool:
        return not self.disable

    def set(self, **stats: Any) -> None:
        """Live statistics after the bar (``loss=0.41 acc=0.87``)."""
        self.set_postfix(stats)
