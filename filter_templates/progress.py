"""A small progress bar on stderr, shown only when stderr is a terminal (silent in logs and CI)."""

from __future__ import annotations

import sys
import time
from typing import Iterable, Iterator, TextIO, TypeVar

T = TypeVar("T")


class Progress:
    """``for x in Progress(items, total, "epoch 3")`` with ``bar.set(loss=...)`` for live stats."""

    def __init__(self, iterable: Iterable[T] | None = None, total: int | None = None, desc: str = "",
                 stream: TextIO | None = None, enabled: bool | None = None, min_interval: float = 0.2) -> None:
        self.iterable = iterable
        self.total = total if total is not None else (len(iterable) if hasattr(iterable, "__len__") else None)  # type: ignore[arg-type]
        self.desc = desc
        self.stream = stream or sys.stderr
        self.enabled = self.stream.isatty() if enabled is None else enabled
        self.n = 0
        self.stats: dict[str, str] = {}
        self.start = time.perf_counter()
        self._last = 0.0
        self.min_interval = min_interval

    def __iter__(self) -> Iterator[T]:
        assert self.iterable is not None
        try:
            for item in self.iterable:
                yield item
                self.update()
        finally:
            self.close()

    def set(self, **stats: object) -> None:
        self.stats = {k: (f"{v:.4g}" if isinstance(v, float) else str(v)) for k, v in stats.items()}
        self._draw()

    def update(self, n: int = 1) -> None:
        self.n += n
        self._draw()

    def _draw(self, force: bool = False) -> None:
        if not self.enabled:
            return
        now = time.perf_counter()
        if not force and now - self._last < self.min_interval and self.n != self.total:
            return
        self._last = now
        elapsed = now - self.start
        if self.total:
            frac = min(1.0, self.n / self.total)
            bar = "#" * int(24 * frac) + "-" * (24 - int(24 * frac))
            eta = elapsed / frac - elapsed if frac > 0 else 0.0
            head = f"{self.desc} [{bar}] {self.n}/{self.total} {elapsed:.0f}s<{eta:.0f}s"
        else:
            head = f"{self.desc} {self.n} {elapsed:.0f}s"
        tail = " ".join(f"{k}={v}" for k, v in self.stats.items())
        self.stream.write("\r\033[K" + head + (" " + tail if tail else ""))
        self.stream.flush()

    def close(self) -> None:
        if self.enabled:
            self._draw(force=True)
            self.stream.write("\n")
            self.stream.flush()
            self.enabled = False
