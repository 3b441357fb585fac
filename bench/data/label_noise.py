"""Label noise on the training labels (``label_noise``, ``label_noise_type``), drawn with the run's seed; test labels stay clean."""
from __future__ import annotations

from dataclasses import replace

import torch
from torch import Tensor

from bench.data.datasets import DataSpec
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

LABEL_NOISE_TYPES = ("symmetric", "asymmetric")


TRAIN_STREAM = 0x1AB3   # the random stream of the training labels' noise (one per labelled part)


def noisy_labels(labels: Tensor, fraction: float, kind: str, num_classes: int,
                 seed: int, stream: int = TRAIN_STREAM) -> tuple[Tensor, Tensor]:
    """(new labels, bool mask of the changed ones): exactly round(fraction * N) labels changed.

    The changed samples are a uniform random subset of that size (drawn without replacement
    from a generator seeded by ``seed`` and ``stream`` only: the held-out validation part has a
    stream of its own, bench.data.split). ``symmetric``: each gets a class drawn uniformly
    from the K - 1 *other* classes; ``asymmetric`` (class-pair flipping): class c becomes
    (c + 1) mod K. Either way every selected label really changes, so the fraction of wrong
    training labels is exactly the one asked for. ``labels`` is not modified.
    """
    if kind not in LABEL_NOISE_TYPES:
        raise ValueError(f"label noise type must be one of {', '.join(LABEL_NOISE_TYPES)}, got {kind!r}")
    if not 0.0 <= float(fraction) < 1.0:
        raise ValueError(f"label noise fraction must be in [0, 1), got {fraction!r}")
    if num_classes < 2:
        raise ValueError(f"label noise needs at least 2 classes, got {num_classes}")
    n = len(labels)
    k = int(round(float(fraction) * n))
    g = torch.Generator().manual_seed(int(seed) * 7_777 + int(stream))  # its own stream, fixed by the seed
    picked = torch.randperm(n, generator=g)[:k]
    old = labels.cpu()[picked]
    if kind == "symmetric":  # an offset in 1..K-1 never maps a class onto itself
        offset = torch.randint(1, num_classes, (k,), generator=g)
    else:
        offset = torch.ones(k, dtype=torch.long)
    out = labels.cpu().clone()
    out[picked] = (old + offset) % num_classes
    changed = torch.zeros(n, dtype=torch.bool)
    changed[picked] = True
    return out.to(labels.device), changed


def with_label_noise(spec: DataSpec, fraction: float, kind: str = "symmetric", seed: int = 0) -> DataSpec:
    """The same data set with a fraction of its *training* labels replaced (see :func:`noisy_labels`).

    The test split is shared, untouched. ``fraction == 0`` returns ``spec`` itself.
    """
    if not fraction:
        return spec
    train_y, _ = noisy_labels(spec.train_y, fraction, kind, spec.num_classes, seed)
    return replace(spec, train_y=train_y)
