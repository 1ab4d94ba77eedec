"""Training images read from where they lie (a memory-mapped cache entry) instead of a copy held
on the device: the path a training split takes when it is larger than its memory budget.

The batches come in exactly the order the resident path uses (the caller's permutation), so a
run's numbers do not depend on which path fed it. Only the reading differs: a background thread
takes a window of upcoming batches at a time, reads their images in increasing index order (one
forward sweep over that part of the file, which is what disks and the page cache serve fastest),
puts them back into the permutation's order, zero-pads each batch for the crop gather and moves it
to the device (from pinned host memory, on a side stream, on CUDA) while the model trains on the
one before.
"""

from __future__ import annotations

import queue
import threading
from typing import Iterator

import numpy as np
import torch

from filter_templates.data.rows import Rows

__all__ = ["Stream", "padded_bytes", "QUEUE_DEPTH"]

QUEUE_DEPTH = 2  # batches read ahead of the one training: enough to hide a read, a bounded footprint
_POLL_S = 0.1  # how often a blocked reader looks whether the epoch was abandoned


def padded_bytes(shape: tuple[int, ...], pad: int) -> int:
    """The bytes of ``shape`` [N, H, W, C] uint8 images zero-padded by ``pad`` on each side: what
    holding a training split on the device costs."""
    n, h, w, c = shape
    return int(n) * (h + 2 * pad) * (w + 2 * pad) * c


class Stream:
    """Padded uint8 batches [B, H + 2 pad, W + 2 pad, C] on ``device``, read from ``x`` [N, H, W, C]
    (an ``np.memmap`` or any uint8 array) in a given order, with at most ``window_bytes`` of images
    read ahead at once (at least one batch) and :data:`QUEUE_DEPTH` finished batches waiting."""

    def __init__(self, x: "np.ndarray | Rows", pad: int, device: torch.device, window_bytes: int) -> None:
        self._x = x
        self.pad = int(pad)
        self.device = torch.device(device)
        self.window_bytes = int(window_bytes)
        self._image_bytes = int(np.prod(x.shape[1:]))

    def batches(self, rows: torch.Tensor) -> Iterator[torch.Tensor]:
        """The images of ``rows`` [batches, B] (int64 indices into ``x``), one padded batch per row,
        in order. Stopping early (a failed step, an exception) ends the reader thread too."""
        out: queue.Queue = queue.Queue(maxsize=QUEUE_DEPTH)
        stop = threading.Event()
        reader = threading.Thread(target=self._read, args=(rows, out, stop), daemon=True, name="stream-reader")
        reader.start()
        try:
            for _ in range(rows.shape[0]):
                item = out.get()
                if isinstance(item, BaseException):
                    raise item
                batch, ready = item
                if ready is not None:  # CUDA: the copy ran on the reader's stream
                    torch.cuda.current_stream(self.device).wait_event(ready)
                    batch.record_stream(torch.cuda.current_stream(self.device))
                yield batch
        finally:
            stop.set()
            reader.join()

    def _read(self, rows: torch.Tensor, out: queue.Queue, stop: threading.Event) -> None:
        """The reader thread: every window of batches, sorted read, batches handed out in order.
        It works in numpy, one thread that releases the GIL while it copies: torch's parallel
        copies would compete with the training step's threads for the same cores."""
        try:
            order = rows.numpy()
            per_window = max(1, self.window_bytes // max(1, order.shape[1] * self._image_bytes))
            side = torch.cuda.Stream(self.device) if self.device.type == "cuda" else None
            for w0 in range(0, order.shape[0], per_window):
                window = order[w0 : w0 + per_window]
                where = np.argsort(window.reshape(-1), kind="stable")
                block = self._x[window.reshape(-1)[where]]  # increasing offsets: one sweep of the file
                back = np.empty_like(where)
                back[where] = np.arange(len(where))  # permutation position -> row of block
                for j in range(window.shape[0]):
                    item = self._batch(block, back[j * window.shape[1] : (j + 1) * window.shape[1]], side)
                    if not _put(out, item, stop):
                        return
                del block
        except BaseException as exc:  # handed to the training thread, which raises it
            _put(out, exc, stop)

    def _batch(
        self, block: np.ndarray, take: np.ndarray, side: "torch.cuda.Stream | None"
    ) -> tuple[torch.Tensor, "torch.cuda.Event | None"]:
        """One batch: ``block``'s rows ``take``, zero-padded, on the device."""
        b, (h, w, c), p = len(take), block.shape[1:], self.pad
        if side is None:
            on_host = np.zeros((b, h + 2 * p, w + 2 * p, c), dtype=np.uint8)
            on_host[:, p : p + h, p : p + w] = block[take]
            return torch.from_numpy(on_host), None
        host = torch.empty((b, h, w, c), dtype=torch.uint8, pin_memory=True)
        np.take(block, take, axis=0, out=host.numpy())
        with torch.cuda.stream(side):
            padded = torch.zeros((b, h + 2 * p, w + 2 * p, c), dtype=torch.uint8, device=self.device)
            padded[:, p : p + h, p : p + w] = host.to(self.device, non_blocking=True)
            ready = torch.cuda.Event()
            ready.record(side)
        return padded, ready


def _put(out: queue.Queue, item: object, stop: threading.Event) -> bool:
    """Hand ``item`` over unless the consumer has stopped; whether it was handed over."""
    while not stop.is_set():
        try:
            out.put(item, timeout=_POLL_S)
            return True
        except queue.Full:
            continue
    return False
