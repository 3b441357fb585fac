"""The device-side loader: a plan of steps (shuffled per epoch, sharded per process, micro-batches for accumulation) over tensors on the device.

    train_loader, test_loader = make_loaders(spec, batch_size, eval_batch_size, seed, device, augment)
    val_loader = make_val_loader(spec, eval_batch_size, seed, device)   # None without a validation split
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from bench.data.augment import _crop_flip_gather, _epoch_seed, key_augmentation, sample_keys
from bench.data.files import (  # noqa: F401 -- DataError: part of this module's API
    CIFAR10,
    CIFAR100,
    FASHION_FILES,
    FASHION_SYSTEM_DIR,
    CifarFormat,
    DataError,
    cifar_dir,
    cifar_missing,
    default_roots,
    fashion_candidates,
    fashion_files,
    fashion_missing,
)


@dataclass
class Step:
    """One optimizer step's samples as one process holds them."""

    index: Tensor            # sample indices: this process's shard of each micro-batch, in order
    sizes: list[int]         # how many of them belong to each micro-batch
    total: int               # the step's samples over all processes


def shard_bounds(n: int, rank: int, world: int) -> tuple[int, int]:
    """[lo, hi) of shard ``rank`` of n samples: contiguous, sizes differing by at most one."""
    q, r = divmod(n, world)
    lo = rank * q + min(rank, r)
    return lo, lo + q + (1 if rank < r else 0)


def plan_steps(order: Tensor, batch_size: int, accumulate: int = 1, rank: int = 0, world: int = 1,
               drop_last: bool = False, every_sample: bool = False) -> list[Step]:
    """The steps of one pass over ``order`` (sample indices in epoch order).

    A step takes ``accumulate`` micro-batches of ``batch_size`` samples (the global batch of one
    forward pass); process ``rank`` of ``world`` takes the contiguous shard ``rank`` of each, so the
    union over processes is exactly the one-process step. At the end of the pass a micro-batch with
    fewer samples than processes is left out (it cannot be split; never with one process), and with
    ``drop_last`` a step shorter than ``accumulate * batch_size``. ``every_sample`` (evaluation)
    splits such a micro-batch too: some processes then get none of it.
    """
    n, step_size = len(order), batch_size * accumulate
    steps = []
    for lo in range(0, n, step_size):
        hi = min(n, lo + step_size)
        if drop_last and hi - lo < step_size:
            break
        parts, sizes, total = [], [], 0
        for m_lo in range(lo, hi, batch_size):
            m_hi = min(hi, m_lo + batch_size)
            if m_hi - m_lo < world and not every_sample:
                continue
            a, b = shard_bounds(m_hi - m_lo, rank, world)
            parts.append(order[m_lo + a:m_lo + b])
            sizes.append(b - a)
            total += m_hi - m_lo
        if total:
            steps.append(Step(torch.cat(parts) if len(parts) > 1 else parts[0], sizes, total))
    return steps


class StepLoader:
    """The order and steps of a loader (:class:`DeviceLoader`, the image-folder loader): subclasses
    set num_samples, batch_size, shuffle, seed, drop_last, accumulate, shard and device."""

    device: torch.device
    batch_size: int
    shuffle: bool
    seed: int
    drop_last: bool
    accumulate: int
    shard: tuple[int, int]
    every_sample: bool = False    # evaluation: no sample left out (some processes may get none of a batch)
    epoch: int = 0

    @property
    def num_samples(self) -> int:
        raise NotImplementedError

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def _order(self, device: torch.device | None = None) -> Tensor:
        n, device = self.num_samples, device or self.device
        if not self.shuffle:
            return torch.arange(n, device=device)
        g = torch.Generator(device=device)  # fresh per pass: nested/parallel passes agree
        g.manual_seed(_epoch_seed(self.seed, self.epoch))
        return torch.randperm(n, generator=g, device=device)

    def _plan(self, order: Tensor, rank: int) -> list[Step]:
        return plan_steps(order, self.batch_size, self.accumulate, rank, self.shard[1], drop_last=self.drop_last,
                          every_sample=self.every_sample)

    def plan(self) -> list[Step]:
        return self._plan(self._order(), self.shard[0])

    def __len__(self) -> int:
        n, step_size = self.num_samples, self.batch_size * self.accumulate
        if self.shard[1] == 1:
            return n // step_size if self.drop_last else math.ceil(n / step_size)
        return len(self._plan(torch.arange(n), self.shard[0]))

    @property
    def samples_per_epoch(self) -> int:
        """Samples one pass trains on, over all processes (all of them unless some are left out)."""
        return sum(s.total for s in self._plan(torch.arange(self.num_samples), 0))


class DeviceLoader(StepLoader):
    """Batches of whole tensors that live on ``device``.

    The order of an epoch depends only on (seed, epoch), the augmentation of a sample only on
    (seed, epoch, its index): call :meth:`set_epoch` before iterating (iterating twice without it
    repeats the epoch). Random numbers are computed on ``device`` (no host sync). Images are
    gathered, cropped and flipped a segment of steps at a time (``segment_bytes``) in one kernel,
    and each batch is a slice of its segment (no work per batch).

    Across processes (``shard=(rank, world)``) every process computes the same order and takes
    shard ``rank`` of each global batch (:func:`plan_steps`); ``accumulate`` batches make a step.
    Iterating yields (x, y) of this process per step; :meth:`steps` yields them with their
    micro-batch sizes and the step's global sample count (what ``train_step`` needs).
    """

    # bytes of images gathered and augmented at once (whole batches, at least one): few kernels
    # per epoch on a GPU; cache-sized on a CPU, where a kernel launch costs nothing
    segment_bytes = {"cpu": 2 ** 22}
    default_segment_bytes = 2 ** 26

    def __init__(self, x: Tensor, y: Tensor, batch_size: int, *, shuffle: bool = False,
                 augment: bool = False, crop_pad: int = 0, flip: bool = False, seed: int = 0,
                 device: str | torch.device = "cpu", drop_last: bool = False, flip_p: float = 0.5,
                 accumulate: int = 1, shard: tuple[int, int] = (0, 1), every_sample: bool = False):
        if len(x) != len(y):
            raise ValueError(f"{len(x)} images but {len(y)} labels")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.device = torch.device(device)
        self.x = x.to(self.device)
        self.y = y.to(self.device)
        self.batch_size = int(batch_size)
        self.shuffle, self.augment = shuffle, augment
        self.crop_pad, self.flip, self.flip_p = int(crop_pad), bool(flip), float(flip_p)
        self.seed, self.drop_last = int(seed), drop_last
        self.accumulate, self.shard = int(accumulate), (int(shard[0]), int(shard[1]))
        self.every_sample = every_sample
        self.epoch = 0

    @property
    def num_samples(self) -> int:
        """Samples in the data set (over all processes)."""
        return len(self.y)

    def _fetch(self, idx: Tensor, span: tuple[int, int] | None) -> tuple[Tensor, Tensor]:
        """Samples ``idx``: gathered, cropped and flipped (one kernel); the data itself when they
        are the range ``span`` and not augmented."""
        if self.augment and (self.crop_pad > 0 or self.flip):
            offsets, flips = key_augmentation(sample_keys(self.seed, self.epoch, idx), self.crop_pad, self.flip,
                                              self.flip_p)
            return _crop_flip_gather(self.x, idx, offsets, flips, self.crop_pad), self.y[idx]
        if span is not None:
            return self.x[span[0]:span[1]], self.y[span[0]:span[1]]
        return self.x[idx], self.y[idx]

    def steps(self):
        """(x, y, sizes, total) per step: this process's samples, its micro-batch sizes, and the
        step's sample count over all processes; fetched a segment of steps at a time."""
        plan, per_segment = self.plan(), self._segment_steps()
        in_order = not self.shuffle and self.shard[1] == 1   # steps are consecutive ranges of the data
        start = 0
        for lo in range(0, len(plan), per_segment):
            group = plan[lo:lo + per_segment]
            count = sum(len(step.index) for step in group)
            xs, ys = self._fetch(torch.cat([step.index for step in group]),
                                 (start, start + count) if in_order else None)
            start += count
            at = 0
            for step in group:
                n = len(step.index)
                yield xs[at:at + n], ys[at:at + n], step.sizes, step.total
                at += n

    def __iter__(self):
        for xb, yb, _, _ in self.steps():
            yield xb, yb

    def _segment_steps(self) -> int:
        budget = self.segment_bytes.get(self.device.type, self.default_segment_bytes)
        step_bytes = self.batch_size * self.accumulate * self.x[:1].numel() * self.x.element_size()
        return max(1, budget // max(1, step_bytes))


def make_loaders(spec, batch_size: int, eval_batch_size: int, seed: int, device: str | torch.device,
                 augment: bool, drop_last: bool = False, accumulate: int = 1, shard: tuple[int, int] = (0, 1),
                 workers: int | None = None):
    """(train loader: shuffled, augmented as the dataset says; test loader: in order, plain), each
    giving process ``shard[0]`` of ``shard[1]`` its shard of every batch. A spec that reads files
    as it goes (``imagefolder``) makes its own loaders (``spec.make_loaders``)."""
    if hasattr(spec, "make_loaders"):
        return spec.make_loaders(batch_size, eval_batch_size, seed, device, augment, drop_last=drop_last,
                                 accumulate=accumulate, shard=shard, workers=workers)
    train = DeviceLoader(spec.train_x, spec.train_y, batch_size, shuffle=True, augment=augment,
                         crop_pad=spec.crop_pad, flip=spec.flip, seed=seed, device=device,
                         drop_last=drop_last, accumulate=accumulate, shard=shard)
    test = DeviceLoader(spec.test_x, spec.test_y, eval_batch_size, shuffle=False, augment=False,
                        seed=seed, device=device, shard=shard, every_sample=True)
    return train, test


def make_val_loader(spec, eval_batch_size: int, seed: int, device: str | torch.device,
                    shard: tuple[int, int] = (0, 1), workers: int | None = None):
    """The validation split's loader (bench.data.split), evaluated exactly like the test set: in order,
    never augmented, process ``shard[0]`` of ``shard[1]`` taking its shard of every batch; None
    without a validation split."""
    if hasattr(spec, "make_val_loader"):
        return spec.make_val_loader(eval_batch_size, seed, device, shard=shard, workers=workers)
    if getattr(spec, "val_y", None) is None:
        return None
    return DeviceLoader(spec.val_x, spec.val_y, eval_batch_size, shuffle=False, augment=False, seed=seed,
                        device=device, shard=shard, every_sample=True)


def make_mask_loader(spec, train_loader, batch_size: int, seed: int, device: str | torch.device,
                     workers: int | None = None):
    """Batches for masks that need data (Fisher, dynamic): the whole training set in a fixed order of
    its own, not augmented, not sharded (every process builds the same mask)."""
    if hasattr(spec, "make_mask_loader"):
        return spec.make_mask_loader(batch_size, seed, device, workers=workers)
    # it shares the training tensors already on the device
    return DeviceLoader(train_loader.x, train_loader.y, batch_size, shuffle=True, augment=False, crop_pad=0,
                        flip=False, seed=seed, device=device)
