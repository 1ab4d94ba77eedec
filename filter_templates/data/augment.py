"""The batched data path of training: augmentation as a few whole-batch tensor ops on the device.

The common CIFAR scripts crop, flip and normalise one PIL image at a time in DataLoader workers.
Here the split lives on the training device as uint8, zero-padded once; each batch is then one
gather (crop and flip together: a flipped crop is the same window read right to left), one
conversion and one multiply-add. All randomness for an epoch is drawn up front on the CPU from a
generator seeded by (seed, epoch), so epoch e is the same on any device and whether or not the
process restarted in between (bit-exact resume).

A training split larger than the options' ``memory`` budget is not copied: its batches are read in
the same order from where the split lies (:mod:`.stream`), so both paths give the same batches. One
of several processes training one run takes its ``share`` of every batch (the same permutation on
every process) and evaluates its shard of a test split.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Sequence

import numpy as np
import torch

from filter_templates.core import validate
from filter_templates.core.errors import UsageError
from filter_templates.core.images import IMAGE_SIZE
from filter_templates.data.rows import Rows
from filter_templates.data.stream import Stream, padded_bytes

__all__ = ["Loader", "LoaderOptions", "epoch_seed", "scale_pixels", "REFERENCE_SIZE"]

REFERENCE_SIZE = IMAGE_SIZE  # the image side the recipes' pixel settings (crop padding, test shifts) are given at

_COPY_CHUNK = 8192  # samples copied to the device per step at construction (bounded host memory)


def epoch_seed(seed: int, epoch: int) -> int:
    """A well-mixed 63-bit seed for (seed, epoch), independent of Python's hash randomisation."""
    return int(
        np.random.SeedSequence([int(seed) & 0xFFFFFFFFFFFFFFFF, int(epoch)]).generate_state(2, np.uint64)[0] >> 1
    )


def scale_pixels(pixels: int, image_size: int) -> int:
    """A recipe's shift of ``pixels`` at 32 px, for ``image_size`` px images: the same fraction of
    the image (the paper's 4 px crop padding is N/8), so a 64 px photo is not augmented half as much."""
    return int(round(pixels * image_size / REFERENCE_SIZE))


@dataclass(frozen=True)
class LoaderOptions:
    """How a :class:`Loader` hands batches out: on ``device`` as ``dtype`` NCHW (channels_last
    memory format unless ``channels_last=False``), shuffled and augmented from ``seed``, training
    crops from images zero-padded by ``pad`` pixels, flipped at random unless ``flip=False``.
    ``memory``: the bytes the padded training split may take on the device (None: no limit);
    above it, it is streamed. ``share``: (rank, processes) when several processes train one run:
    this one takes its contiguous part of every training batch and of an evaluation split."""

    device: torch.device | str = "cpu"
    seed: int = 0
    channels_last: bool = True
    dtype: torch.dtype = torch.float32
    pad: int = 4
    flip: bool = True
    memory: int | None = None
    share: tuple[int, int] = (0, 1)


class Loader:
    """Iterates (x, y) batches of a split resident on the options' device.

    ``train=True``: a per-epoch seeded shuffle, zero padding by ``pad``, a random crop back to
    the image size with a per-sample offset, a random horizontal flip (unless ``flip=False``), then
    normalisation with ``mean`` and ``std``; ``drop_last`` so every batch has the same shape.
    ``train=False``: normalisation only, stored order, the last batch may be short. ``x`` comes out
    as described by :class:`LoaderOptions`, ``y`` as int64.

    Each ``iter()`` runs the current epoch and then advances it; :meth:`set_epoch` pins it (do so
    when resuming): batches of epoch e are a pure function of (seed, e).
    """

    def __init__(
        self,
        x_uint8_nhwc: "np.ndarray | Rows",
        y: np.ndarray,
        batch_size: int,
        *,
        train: bool,
        mean: Sequence[float],
        std: Sequence[float],
        options: LoaderOptions = LoaderOptions(),
    ) -> None:
        if not isinstance(x_uint8_nhwc, (np.ndarray, Rows)) or x_uint8_nhwc.dtype != np.uint8 or x_uint8_nhwc.ndim != 4:
            raise ValueError("x must be a uint8 numpy array [N, H, W, C]")
        n, h, w, c = x_uint8_nhwc.shape
        if len(y) != n:
            raise ValueError(f"{n} images but {len(y)} labels")
        if len(mean) != c or len(std) != c:
            raise ValueError(f"mean/std need {c} entries each")
        for s in std:
            validate.number(s, "a channel's standard deviation")
        validate.integer(batch_size, "batch size")
        validate.integer(options.pad, "crop padding", minimum=0)
        device, seed, channels_last, dtype, pad, flip = (
            options.device,
            options.seed,
            options.channels_last,
            options.dtype,
            options.pad,
            options.flip,
        )
        rank, world = options.share
        validate.integer(world, "processes")
        validate.integer(rank, "rank", minimum=0, maximum=world - 1)
        if train and n < batch_size:
            raise UsageError(f"the training split has {n} samples, fewer than one batch of {batch_size}")
        if train and batch_size < world:
            raise UsageError(
                f"a batch of {batch_size} cannot be shared by {world} processes; give a batch size of at least {world}"
            )
        if not train and world > 1:  # evaluation: this process's shard of the split
            lo, hi = _part(n, rank, world)
            x_uint8_nhwc, y, n = x_uint8_nhwc[lo:hi], y[lo:hi], hi - lo
        self.device = torch.device(device)
        self.batch_size = int(batch_size)
        self.train = bool(train)
        self.seed = int(seed)
        self.epoch = 0
        self.channels_last = channels_last
        self.dtype = dtype
        self.num_samples = n
        self.image_shape = (h, w, c)
        self.pad = int(pad) if train else 0
        self.flip = bool(flip)
        self.share = _part(self.batch_size, rank, world) if train else (0, self.batch_size)
        # normalise as x * scale + shift over whole [H*W*C] images: a per-channel [C] vector would
        # make the innermost loop 3 long and the op ~6x slower on CPU
        std_t = torch.tensor([float(s) for s in std], dtype=torch.float32)
        mean_t = torch.tensor([float(m) for m in mean], dtype=torch.float32)
        self._scale = (1.0 / (255.0 * std_t)).repeat(h * w).to(self.device)
        self._shift = (-mean_t / std_t).repeat(h * w).to(self.device)
        self._y = torch.from_numpy(np.asarray(y, dtype=np.int64).copy()).to(self.device)
        p = self.pad
        need = padded_bytes((n, h, w, c), p)
        #: reads batches from ``x`` as they are needed instead of holding the split (None: resident)
        self.stream = (
            Stream(x_uint8_nhwc, p, self.device, window_bytes=options.memory // 2)
            if train and options.memory is not None and need > options.memory
            else None
        )
        if self.stream is None:
            self._images = torch.zeros((n, h + 2 * p, w + 2 * p, c), dtype=torch.uint8, device=self.device)
            for s in range(0, n, _COPY_CHUNK):  # memmap -> device in chunks, padding in place
                block = torch.from_numpy(np.array(x_uint8_nhwc[s : s + _COPY_CHUNK], copy=True))
                self._images[s : s + len(block), p : p + h, p : p + w] = block.to(self.device)
        if self.train:
            hp, wp = h + 2 * p, w + 2 * p
            self._row_offsets = (torch.arange(h, device=self.device) * wp).view(1, h, 1)
            cols = torch.arange(w, device=self.device)
            self._cols = torch.stack([cols, cols.flip(0)])  # [2, W]: forward, mirrored
            self._image_stride = hp * wp

    def __len__(self) -> int:
        if self.train:
            return self.num_samples // self.batch_size
        return -(-self.num_samples // self.batch_size)

    def set_epoch(self, epoch: int) -> None:
        """The next ``iter()`` runs epoch ``epoch``."""
        self.epoch = int(epoch)

    def _epoch_plan(self, epoch: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(sample, crop origin within its padded image, flip flag) of this process's part of every
        batch of the epoch, on the CPU: drawn for the whole epoch, so every share sees one plan."""
        g = torch.Generator().manual_seed(epoch_seed(self.seed, epoch))
        n, span = self.num_samples, 2 * self.pad + 1
        order = torch.randperm(n, generator=g)
        offsets = torch.randint(0, span, (2, n), generator=g)
        flips = torch.randint(0, 2, (n,), generator=g)  # drawn either way: one random stream
        if not self.flip:
            flips.zero_()
        crop = offsets[0] * (self.image_shape[1] + 2 * self.pad) + offsets[1]
        lo, hi = self.share
        if (lo, hi) != (0, self.batch_size):  # this process's positions in every batch
            mine = (torch.arange(len(self)).view(-1, 1) * self.batch_size + torch.arange(lo, hi)).view(-1)
            order, crop, flips = order[mine], crop[mine], flips[mine]
        return order, crop, flips

    def _normalise(self, x_nhwc: torch.Tensor) -> torch.Tensor:
        b = x_nhwc.shape[0]
        out = torch.empty(x_nhwc.shape, dtype=torch.float32, device=self.device)
        flat = out.view(b, -1)
        torch.mul(x_nhwc.reshape(b, -1), self._scale, out=flat)
        flat.add_(self._shift)
        if self.dtype != torch.float32:
            out = out.to(self.dtype)
        out = out.permute(0, 3, 1, 2)  # NHWC memory seen as NCHW: channels_last for free
        return out if self.channels_last else out.contiguous()

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        epoch = self.epoch
        self.epoch += 1
        return self._train_batches(epoch) if self.train else self._test_batches()

    def _train_batches(self, epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        order, crop, flips = self._epoch_plan(epoch)
        b = self.share[1] - self.share[0]
        batches = len(self)
        flips = flips.to(self.device)
        labels = self._y.index_select(0, order.to(self.device))
        if self.stream is None:  # crop origins in the whole resident split
            start = (order * self._image_stride + crop).to(self.device)
            sources: Iterator[torch.Tensor] = (self._images for _ in range(batches))
        else:  # crop origins in each streamed batch of b padded images
            start = (torch.arange(b).repeat(batches) * self._image_stride + crop[: batches * b]).to(self.device)
            sources = self.stream.batches(order[: batches * b].view(batches, b))
        for i, images in enumerate(sources):
            sl = slice(i * b, (i + 1) * b)
            yield self._normalise(self._crop(images, start[sl], flips[sl])), labels[sl]

    def _crop(self, images: torch.Tensor, start: torch.Tensor, flips: torch.Tensor) -> torch.Tensor:
        """The crops (mirrored where ``flips``) whose first pixels are ``start`` in the padded
        ``images``: one gather of every output pixel's index (crop origin + row offset + column)."""
        b, (h, w, c) = len(start), self.image_shape
        cols = self._cols.index_select(0, flips)  # [B, W]; index_select: far cheaper than [] here
        index = (start.view(b, 1, 1) + self._row_offsets) + cols.view(b, 1, w)
        return images.view(-1, c).index_select(0, index.view(-1)).view(b, h, w, c)

    def _test_batches(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        b = self.batch_size
        for s in range(0, self.num_samples, b):
            yield self._normalise(self._images[s : s + b]), self._y[s : s + b]


def _part(n: int, rank: int, world: int) -> tuple[int, int]:
    """[lo, hi) of ``rank``'s contiguous part of ``n`` items shared by ``world`` processes (the first
    ``n % world`` get one more)."""
    base, extra = divmod(int(n), int(world))
    lo = rank * base + min(rank, extra)
    return lo, lo + base + (1 if rank < extra else 0)
