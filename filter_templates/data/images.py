"""Decode many image files into one uint8 [N, H, W, 3] array, in parallel when it pays.

Decoding a 32x32 JPEG costs ~80 us, almost all of it Python overhead inside Pillow, so threads do
not help; worker processes do. The workers are plain ``python -m filter_templates.data.images``
subprocesses fed chunks over pipes, not ``multiprocessing``: spawn would re-run the caller's
``__main__`` (a script without a main guard, or stdin), and fork is unsafe once torch has started
threads. Each worker gets chunks of (name, bytes or path) and answers with the decoded array, so
nothing but our own bytes crosses the boundary. Every failure names the file it came from.

With ``resize`` every image is brought to the size asked for the way ImageNet-style pipelines do
it (shorter side to the size, then the centre square), in one Pillow call on the centre box; a
JPEG is first decoded at the smallest power-of-two reduction that is still at least that size
(``Image.draft``), which makes large photos cheap.
"""

from __future__ import annotations

import io
import os
import pickle
import queue
import subprocess
import sys
import threading
from pathlib import Path
from typing import Sequence, Union

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from filter_templates.core.errors import UsageError
from filter_templates.core.images import IMAGE_SIZE
from filter_templates.core.progress import Progress

__all__ = ["IMAGE_SUFFIXES", "decode_images", "image_size_of"]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")

# An item is (name for messages, raw bytes) or (name, path to read).
Item = tuple[str, Union[bytes, str, Path]]

_CHUNK = 2048  # images per chunk at 32 px; fewer for larger images (_CHUNK_BYTES)
_CHUNK_BYTES = 16 << 20  # decoded bytes per chunk: a worker's answer stays this small at any size
_PARALLEL_MIN = 4096  # below this, starting processes costs more than it saves


_EXIF_FORMATS = ("JPEG", "MPO", "TIFF", "WEBP")  # where cameras write an orientation tag
_ORIENTATION = 0x0112


def _orientation(im: Image.Image) -> int:
    return int(im.getexif().get(_ORIENTATION, 1)) if im.format in _EXIF_FORMATS else 1


def _square(im: Image.Image, side: int) -> Image.Image:
    """``im`` upright (EXIF), its shorter side scaled to ``side`` and the centre square kept."""
    turned = _orientation(im) != 1
    w, h = im.size
    s = min(w, h)
    if (w, h) == (side, side) and not turned:
        return im
    if im.format in ("JPEG", "MPO"):  # decode reduced by 2/4/8 where that stays at least the target
        im.draft("RGB", (-(-w * side // s), -(-h * side // s)))
    if turned:
        im = ImageOps.exif_transpose(im)
    w, h = im.size
    s = min(w, h)
    if (w, h) == (side, side):
        return im
    if im.mode != "RGB":  # palette and 1-bit images would be resized by nearest neighbour
        im = im.convert("RGB")
    left, top = (w - s) / 2, (h - s) / 2
    return im.resize((side, side), Image.Resampling.BILINEAR, box=(left, top, left + s, top + s))


def _decode_one(data: bytes, size: tuple[int, int], resize: bool) -> tuple[np.ndarray | None, str | None]:
    h, w = size
    with Image.open(io.BytesIO(data)) as opened:
        im: Image.Image = opened
        if resize:
            im = _square(im, h)
        elif im.size != (w, h):
            return None, f"image is {im.size[0]}x{im.size[1]}, expected {w}x{h}"
        if im.mode != "RGB":
            im = im.convert("RGB")
        return np.asarray(im), None


def _decode_chunk(items: Sequence[Item], size: tuple[int, int], resize: bool = False) -> tuple[np.ndarray, str | None]:
    """Decode ``items`` into [len, H, W, 3]; on the first failure return (partial, message)."""
    h, w = size
    out = np.empty((len(items), h, w, 3), dtype=np.uint8)
    for i, (name, src) in enumerate(items):
        try:
            data = src if isinstance(src, bytes) else Path(src).read_bytes()
            arr, err = _decode_one(data, size, resize)
            if err:
                return out, f"{name}: {err}"
            assert arr is not None  # _decode_one returns an array whenever it returns no error
            out[i] = arr
        except (UnidentifiedImageError, OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
            return out, f"{name}: cannot decode image ({' '.join(str(exc).split())})"
    return out, None


def image_size_of(name: str, src: Union[bytes, str, Path]) -> tuple[int, int]:
    """(width, height) of one image from its header (nothing is decoded), as it will be shown
    (EXIF rotation applied); a file Pillow cannot open raises a UsageError naming it."""
    try:
        with Image.open(io.BytesIO(src) if isinstance(src, bytes) else src) as im:
            w, h = im.size
            return (h, w) if _orientation(im) in (5, 6, 7, 8) else (w, h)
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        raise UsageError(f"{name}: cannot read image ({' '.join(str(exc).split())})") from None


def _workers(n: int) -> int:
    env = os.environ.get("FILTER_TEMPLATES_DECODE_WORKERS")
    if env is not None:
        try:
            return max(1, int(env))
        except ValueError:
            raise UsageError(f"FILTER_TEMPLATES_DECODE_WORKERS={env!r} is not an integer") from None
    if n < _PARALLEL_MIN:
        return 1
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(cpus, 8, n // _CHUNK))


class _Worker:
    """One decoding subprocess; ``decode`` sends a chunk and waits for its result."""

    def __init__(self) -> None:
        env = dict(os.environ)
        root = str(Path(__file__).resolve().parents[2])  # so a source checkout works uninstalled
        env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", __name__], stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env
        )

    def decode(self, items: Sequence[Item], size: tuple[int, int], resize: bool) -> tuple[np.ndarray, str | None]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        pickle.dump((list(items), size, resize), self.proc.stdin, protocol=pickle.HIGHEST_PROTOCOL)
        self.proc.stdin.flush()
        return pickle.load(self.proc.stdout)  # our own child's answer, not outside data

    def close(self) -> None:
        try:
            if self.proc.stdin is not None:
                self.proc.stdin.close()
            self.proc.wait(timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            self.proc.kill()
            self.proc.wait()


def _parallel(chunks: list[tuple[int, Sequence[Item]]], size: tuple[int, int], resize: bool, workers: int):
    """Yield (start, (array, error)) for every chunk, decoded by ``workers`` subprocesses (in any order).
    A chunk whose worker fails for any reason is decoded here instead."""
    todo: queue.Queue = queue.Queue()
    for c in chunks:
        todo.put(c)
    done: queue.Queue = queue.Queue()
    stop = threading.Event()

    def serve() -> None:
        worker = None
        try:
            worker = _Worker()
        except OSError:
            pass
        try:
            while not stop.is_set():
                try:
                    s, c = todo.get_nowait()
                except queue.Empty:
                    return
                result = None
                if worker is not None:
                    try:
                        result = worker.decode(c, size, resize)
                    except (OSError, EOFError, pickle.UnpicklingError):
                        worker = None  # broken pipe or dead child: finish in this thread
                done.put((s, result if result is not None else _decode_chunk(c, size, resize)))
        except BaseException as exc:  # never leave the consumer waiting
            done.put((-1, exc))
        finally:
            if worker is not None:
                worker.close()

    threads = [threading.Thread(target=serve, daemon=True) for _ in range(min(workers, len(chunks)))]
    for t in threads:
        t.start()
    try:
        for _ in chunks:
            s, result = done.get()
            if s < 0:
                raise result
            yield s, result
    finally:
        stop.set()
        for t in threads:
            t.join()


def decode_images(
    items: Sequence[Item],
    size: tuple[int, int] = (IMAGE_SIZE, IMAGE_SIZE),
    *,
    resize: bool = False,
    out: np.ndarray | None = None,
    progress_desc: str = "",
) -> np.ndarray:
    """All ``items`` decoded in order into a uint8 [N, H, W, 3] array (greyscale/RGBA become RGB).

    Without ``resize`` an image whose size is not ``size`` (H, W) is refused; with it (square
    sizes only) every image is scaled and centre-cropped to it. ``out``: the array to fill (a
    memory-mapped file, so a large dataset never sits in memory whole). A file that is not an
    image raises a :class:`UsageError` naming it. ``FILTER_TEMPLATES_DECODE_WORKERS`` overrides
    the number of processes (1: none).
    """
    n = len(items)
    if out is None:
        out = np.empty((n, *size, 3), dtype=np.uint8)
    step = max(16, min(_CHUNK, _CHUNK_BYTES // (size[0] * size[1] * 3)))
    chunks = [(s, items[s : s + step]) for s in range(0, n, step)]
    workers = _workers(n)
    bar = Progress(total=n, desc=progress_desc or "decoding images")
    try:
        if workers <= 1:
            results = ((s, _decode_chunk(c, size, resize)) for s, c in chunks)
        else:
            results = _parallel(chunks, size, resize, workers)
        errors = []
        for s, (arr, err) in results:
            if err:
                errors.append((s, err))
            out[s : s + len(arr)] = arr
            bar.update(len(arr))
        if errors:
            raise UsageError(min(errors)[1])  # the first bad file in order, whatever finished first
    finally:
        bar.close()
    return out


def _worker_main() -> None:
    """Subprocess loop: read (items, size) chunks from stdin, write (array, error) to stdout."""
    inp, out = sys.stdin.buffer, sys.stdout.buffer
    sys.stdout = sys.stderr  # nothing else may write to the result pipe
    while True:
        try:
            items, size, resize = pickle.load(inp)
        except EOFError:
            return
        pickle.dump(_decode_chunk(items, size, resize), out, protocol=pickle.HIGHEST_PROTOCOL)
        out.flush()


if __name__ == "__main__":
    _worker_main()
