"""Random crop and flip on the device, every sample's randomness keyed to (seed, epoch, index), so 1 and N processes see the same inputs."""
from __future__ import annotations

import torch
from torch import Tensor

from bench.data.datasets import _M32
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


def _epoch_seed(seed: int, epoch: int) -> int:
    # A fixed mix of (seed, epoch) into 63 bits; depends on nothing else.
    return (int(seed) * 1_000_003 + int(epoch) * 7_919 + 0x5DEECE66D) % (2**63 - 1)


def _crop_flip_gather(x: Tensor, index: Tensor | None, offsets: Tensor | None, flips: Tensor | None,
                      pad: int) -> Tensor:
    """``out[s]`` = image ``x[index[s]]``, zero-padded by ``pad``, cropped at ``offsets[s]`` (row,
    column in the padded image), mirrored left-right where ``flips[s]``: one gather kernel.

    Same as ``F.pad`` then slicing then ``flip(3)``, without the padded copy: indices outside the
    image are clamped and their values replaced by zeros.
    """
    n = x.shape[0] if index is None else index.shape[0]
    _, c, h, w = x.shape
    dev = x.device
    rows = torch.arange(h, device=dev).expand(n, h)
    cols = torch.arange(w, device=dev).expand(n, w)
    if flips is not None:
        cols = torch.where(flips[:, None], (w - 1) - cols, cols)
    if offsets is not None:
        rows = rows + (offsets[:, :1] - pad)
        cols = cols + (offsets[:, 1:] - pad)
    inside = ((rows >= 0) & (rows < h))[:, None, :, None] & ((cols >= 0) & (cols < w))[:, None, None, :]
    src = torch.arange(n, device=dev) if index is None else index
    out = x[src[:, None, None, None], torch.arange(c, device=dev)[None, :, None, None],
            rows.clamp(0, h - 1)[:, None, :, None], cols.clamp(0, w - 1)[:, None, None, :]]
    return out.masked_fill_(~inside, 0)


def _mul32(x: Tensor, c: int) -> Tensor:
    """(x * c) mod 2^32 for int64 x in [0, 2^32), without int64 overflow."""
    return ((x & 0xFFFF) * c + (((x >> 16) * c) & 0xFFFF) * 65536) & _M32


def hash32(x: Tensor) -> Tensor:
    """A 32-bit integer hash (two multiply-xorshift rounds), elementwise on int64 tensors."""
    x = x & _M32
    x = x ^ (x >> 16)
    x = _mul32(x, 0x7FEB352D)
    x = x ^ (x >> 15)
    x = _mul32(x, 0x846CA68B)
    return x ^ (x >> 16)


def sample_keys(seed: int, epoch: int, index: Tensor) -> Tensor:
    """A random 32-bit key per sample, a function of (seed, epoch, sample index) only: the
    augmentation of a sample does not depend on its batch, its position or the process."""
    base = _epoch_seed(seed, epoch)
    return hash32(hash32(index.long() ^ (base & _M32)) ^ ((base >> 32) & _M32))


def key_augmentation(keys: Tensor, crop_pad: int, flip: bool,
                     flip_p: float) -> tuple[Tensor | None, Tensor | None]:
    """Crop offsets (n, 2) in [0, 2 * crop_pad] and flip flags (n,) from each sample's key."""
    offsets = flips = None
    if crop_pad > 0:
        span = 2 * int(crop_pad) + 1
        offsets = torch.stack([(keys & 0xFFFF) % span, ((keys >> 16) & 0xFFFF) % span], 1)
    if flip:
        flips = (hash32(keys) & 0xFFFF).float() / 65536.0 < flip_p
    return offsets, flips


def augment_samples(x: Tensor, keys: Tensor, crop_pad: int = 0, flip: bool = False, flip_p: float = 0.5) -> Tensor:
    """Random crop (zero padding ``crop_pad``) and horizontal flip (probability ``flip_p``), each
    image's offsets and flip drawn from its own key (:func:`sample_keys`); one gather kernel."""
    offsets, flips = key_augmentation(keys.to(x.device), crop_pad, flip, flip_p)
    if offsets is None and flips is None:
        return x
    return _crop_flip_gather(x, None, offsets, flips, int(crop_pad))


def augment_batch(x: Tensor, generator: torch.Generator, crop_pad: int = 0, flip: bool = False,
                  flip_p: float = 0.5) -> Tensor:
    """:func:`augment_samples` with keys drawn from ``generator`` (one per image)."""
    keys = torch.randint(0, 2**32, (x.shape[0],), generator=generator, device=generator.device)
    return augment_samples(x, keys, crop_pad, flip, flip_p)
