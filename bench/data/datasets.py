"""Datasets (held as tensors) and a device-side loader with batched augmentation.

Every dataset is a function ``(root, download) -> DataSpec`` registered in
``bench.registries.DATASETS``; :func:`load_dataset` looks one up by name. Images are
float32, already normalized, shape (N, C, H, W); labels are int64.

:class:`DeviceLoader` moves the whole split to the device once and does shuffling,
random crops (zero padding) and horizontal flips there, in batches, from a generator
seeded by (seed, epoch) only, so an epoch is exactly reproducible after a restart.
"""
from __future__ import annotations

import gzip
import math
import os
import pickle
from dataclasses import dataclass, field, replace
from pathlib import Path
from urllib.error import URLError

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from bench.data import files as datafiles
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
from bench.registries import DATASETS


@dataclass
class DataSpec:
    name: str
    train_x: Tensor       # (N, C, H, W) float32, normalized
    train_y: Tensor       # (N,) int64
    test_x: Tensor
    test_y: Tensor
    num_classes: int
    in_chans: int
    img_size: int
    crop_pad: int         # random-crop padding for augmentation (0 = no crop)
    flip: bool            # random horizontal flips in augmentation
    classes: tuple[str, ...] = field(default=())

    def __post_init__(self) -> None:
        for split, x, y in (("train", self.train_x, self.train_y), ("test", self.test_x, self.test_y)):
            if x.ndim != 4 or x.shape[1:] != (self.in_chans, self.img_size, self.img_size):
                raise DataError(f"{self.name}: {split} images have shape {tuple(x.shape)}, expected "
                                f"(N, {self.in_chans}, {self.img_size}, {self.img_size})")
            if y.shape != (x.shape[0],):
                raise DataError(f"{self.name}: {split} has {x.shape[0]} images but labels of "
                                f"shape {tuple(y.shape)}")

    def __repr__(self) -> str:
        return (f"DataSpec({self.name!r}, train={len(self.train_y)}, test={len(self.test_y)}, "
                f"classes={self.num_classes}, shape=({self.in_chans}, {self.img_size}, {self.img_size}))")


def shaped(num_classes: int, in_chans: int, img_size: int):
    """Declare a dataset's (num_classes, in_chans, img_size), known without loading it (how
    its files are found without reading them is :data:`bench.data.files.LOCATORS`)."""
    def deco(fn):
        fn.shape = (num_classes, in_chans, img_size)
        return fn
    return deco


def check_available(name: str, root: str | None = None, download: bool = False) -> None:
    """Raise DataError if a registered data set cannot be found (or downloaded, when asked):
    cheap for one with a locator (:mod:`bench.data.files`), others are loaded once per process."""
    if name in datafiles.LOCATORS:
        datafiles.check_available(name, root, download)
    elif (name, root) not in _AVAILABLE:
        load_dataset(name, root, download)
        _AVAILABLE.add((name, root))


_AVAILABLE: set[tuple] = set()   # (data set, root) without a locator, found in this process


def load_dataset(name: str, root: str | None = None, download: bool = False) -> DataSpec:
    """Load a registered dataset; unknown names raise ``UnknownNameError`` listing the allowed ones."""
    return DATASETS.get(name)(root, download)


def _normalize(train: np.ndarray, test: np.ndarray, mean=None, std=None) -> tuple[Tensor, Tensor]:
    """(N, C, H, W) arrays in [0, 1] -> normalized float32 tensors, per channel.

    Without ``mean``/``std`` the training split's statistics are used.
    """
    train = torch.as_tensor(train, dtype=torch.float32)
    test = torch.as_tensor(test, dtype=torch.float32)
    if mean is None:
        mean = train.mean(dim=(0, 2, 3))
        std = train.std(dim=(0, 2, 3)).clamp_min(1e-6)
    mean = torch.as_tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
    std = torch.as_tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
    return ((train - mean) / std).contiguous(), ((test - mean) / std).contiguous()


def _labels(y) -> Tensor:
    return torch.as_tensor(np.array(y, dtype=np.int64))


# --- digits (scikit-learn, ships with the package) --------------------------------------

@DATASETS.register("digits")
@shaped(10, 1, 8)
def digits(root: str | None = None, download: bool = False) -> DataSpec:
    """scikit-learn digits: 1,797 real 8x8 grey images, 10 classes; stratified 1,437/360 split."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    d = load_digits()
    x = (d.data.astype(np.float32) / 16.0).reshape(-1, 1, 8, 8)
    xtr, xte, ytr, yte = train_test_split(x, d.target, test_size=360, random_state=0, stratify=d.target)
    train_x, test_x = _normalize(xtr, xte)
    return DataSpec("digits", train_x, _labels(ytr), test_x, _labels(yte), num_classes=10,
                    in_chans=1, img_size=8, crop_pad=1, flip=False,
                    classes=tuple(str(i) for i in range(10)))


# --- synthetic (seeded, learnable; for tests) -------------------------------------------

@DATASETS.register("synthetic")
@shaped(4, 3, 8)
def synthetic(root: str | None = None, download: bool = False, *, n_train: int = 512,
              n_test: int = 256, num_classes: int = 4, in_chans: int = 3, img_size: int = 8,
              seed: int = 0) -> DataSpec:
    """Seeded random data: class-dependent smooth mean patterns plus Gaussian noise (3x8x8, 4 classes)."""
    g = torch.Generator().manual_seed(seed)
    # Smooth patterns (upsampled from 4x4), so crops and flips keep them mostly recognizable.
    coarse = torch.randn(num_classes, in_chans, 4, 4, generator=g)
    patterns = F.interpolate(coarse, size=(img_size, img_size), mode="bilinear", align_corners=False)

    def split(n: int) -> tuple[Tensor, Tensor]:
        y = torch.arange(n) % num_classes
        y = y[torch.randperm(n, generator=g)]
        x = patterns[y] + 1.0 * torch.randn(n, in_chans, img_size, img_size, generator=g)
        return x, y

    xtr, ytr = split(n_train)
    xte, yte = split(n_test)
    train_x, test_x = _normalize(xtr, xte)
    return DataSpec("synthetic", train_x, ytr.long(), test_x, yte.long(), num_classes=num_classes,
                    in_chans=in_chans, img_size=img_size, crop_pad=1, flip=True,
                    classes=tuple(f"class{i}" for i in range(num_classes)))


# --- Fashion-MNIST (the original idx .gz files) -------------------------------------------

FASHION_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
                   "Sneaker", "Bag", "Ankle boot")
_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: np.dtype(">i2"), 0x0C: np.dtype(">i4"),
               0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8")}


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read an idx file (``.gz`` or not): magic 0x0000TTNN (T: type code, N: number of dims)."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        raw = f.read()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise DataError(f"{path}: not an idx file (magic {raw[:4].hex()})")
    ndim = raw[3]
    dims = np.frombuffer(raw, dtype=">u4", count=ndim, offset=4).astype(np.int64)
    dtype = np.dtype(_IDX_DTYPES[raw[2]])
    count = int(np.prod(dims)) if ndim else 1
    offset = 4 + 4 * ndim
    if len(raw) - offset < count * dtype.itemsize:
        raise DataError(f"{path}: truncated idx file ({len(raw) - offset} bytes of data, "
                        f"{count * dtype.itemsize} expected for shape {tuple(dims)})")
    arr = np.frombuffer(raw, dtype=dtype, count=count, offset=offset).reshape(tuple(dims))
    return arr.astype(dtype.newbyteorder("="))  # a writable, native-endian copy


@DATASETS.register("fashion_mnist")
@shaped(10, 1, 28)
def fashion_mnist(root: str | None = None, download: bool = False) -> DataSpec:
    """Fashion-MNIST: 60,000/10,000 28x28 grey images, 10 classes, from the original idx files."""
    tried = fashion_candidates(root)
    files = next((f for f in (fashion_files(d) for d in tried) if f is not None), None)
    if files is None and download:
        target = default_roots(root)[0]
        try:
            import torchvision
            torchvision.datasets.FashionMNIST(str(target), train=True, download=True)
            torchvision.datasets.FashionMNIST(str(target), train=False, download=True)
        except (URLError, OSError, RuntimeError) as e:
            raise DataError(f"could not download Fashion-MNIST into {target / 'FashionMNIST' / 'raw'}: "
                            f"{e}. Without network, install it with `apt-get install "
                            f"dataset-fashion-mnist` or copy the four idx .gz files there.") from e
        files = fashion_files(target / "FashionMNIST" / "raw")
    if files is None:
        raise fashion_missing(tried)
    arrays = {k: read_idx(p) for k, p in files.items()}
    for split in ("train", "test"):
        x, y = arrays[f"{split}_x"], arrays[f"{split}_y"]
        if x.ndim != 3 or y.ndim != 1 or len(x) != len(y):
            raise DataError(f"Fashion-MNIST {split} files in {files[f'{split}_x'].parent} have "
                            f"shapes {x.shape} and {y.shape}; expected (N, H, W) and (N,)")
    size = arrays["train_x"].shape[1]
    train_x, test_x = _normalize(arrays["train_x"][:, None].astype(np.float32) / 255.0,
                                 arrays["test_x"][:, None].astype(np.float32) / 255.0)
    return DataSpec("fashion_mnist", train_x, _labels(arrays["train_y"]), test_x,
                    _labels(arrays["test_y"]), num_classes=10, in_chans=1, img_size=size,
                    crop_pad=2, flip=True, classes=FASHION_CLASSES)


# --- CIFAR-10 / CIFAR-100 (torchvision's on-disk format) ---------------------------------

def _unpickle(path: Path) -> dict:
    try:
        with open(path, "rb") as f:
            return pickle.load(f, encoding="latin1")
    except (pickle.UnpicklingError, EOFError, ValueError) as e:
        raise DataError(f"{path}: not a CIFAR pickle ({e})") from e


def read_cifar(fmt: CifarFormat, d: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, tuple]:
    """Read the pickled batches the way torchvision does, without its md5 check."""
    def read(files):
        xs, ys = [], []
        for name in files:
            entry = _unpickle(d / name)
            if "data" not in entry or fmt.label_key not in entry:
                raise DataError(f"{d / name}: missing 'data' or {fmt.label_key!r}")
            xs.append(np.asarray(entry["data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
            ys.append(np.asarray(entry[fmt.label_key], dtype=np.int64))
        return np.concatenate(xs), np.concatenate(ys)

    xtr, ytr = read(fmt.train)
    xte, yte = read(fmt.test)
    classes: tuple = ()
    if (d / fmt.meta).is_file():
        classes = tuple(_unpickle(d / fmt.meta).get(fmt.meta_key, ()))
    return xtr, ytr, xte, yte, classes


def _load_cifar(fmt: CifarFormat, name: str, root: str | None, download: bool) -> DataSpec:
    bases = default_roots(root)
    d = next((x for x in (cifar_dir(fmt, b) for b in bases) if x is not None), None)
    if d is None and download:
        target = bases[0]
        try:
            import torchvision
            getattr(torchvision.datasets, fmt.tv_class)(str(target), train=True, download=True)
        except (URLError, OSError, RuntimeError) as e:
            raise DataError(f"could not download {fmt.title} into {target / fmt.folder}: {e}. "
                            f"Without network, copy the extracted {fmt.folder}/ folder there "
                            f"(or point --data-root at its parent).") from e
        d = cifar_dir(fmt, target)
    if d is None:
        raise cifar_missing(fmt, bases)
    xtr, ytr, xte, yte, classes = read_cifar(fmt, d)
    if ytr.size and (ytr.min() < 0 or max(ytr.max(), yte.max()) >= fmt.num_classes):
        raise DataError(f"{d}: labels outside 0..{fmt.num_classes - 1}")
    train_x, test_x = _normalize(xtr.astype(np.float32) / 255.0, xte.astype(np.float32) / 255.0,
                                 fmt.mean, fmt.std)
    return DataSpec(name, train_x, _labels(ytr), test_x, _labels(yte), num_classes=fmt.num_classes,
                    in_chans=3, img_size=32, crop_pad=4, flip=True, classes=classes)


@DATASETS.register("cifar10")
@shaped(10, 3, 32)
def cifar10(root: str | None = None, download: bool = False) -> DataSpec:
    """CIFAR-10: 50,000/10,000 32x32 colour images, 10 classes (torchvision layout)."""
    return _load_cifar(CIFAR10, "cifar10", root, download)


@DATASETS.register("cifar100")
@shaped(100, 3, 32)
def cifar100(root: str | None = None, download: bool = False) -> DataSpec:
    """CIFAR-100: 50,000/10,000 32x32 colour images, 100 fine classes (torchvision layout)."""
    return _load_cifar(CIFAR100, "cifar100", root, download)


def dataset_shape(name: str) -> tuple[int, int, int]:
    """(num_classes, in_chans, img_size) of a registered dataset, without loading its data."""
    fn = DATASETS.get(name)
    shape = getattr(fn, "shape", None)
    if shape is None:  # a dataset registered without a declared shape: load it once
        spec = fn()
        shape = fn.shape = (spec.num_classes, spec.in_chans, spec.img_size)
    return shape


# --- label noise (training labels only) --------------------------------------------------

LABEL_NOISE_TYPES = ("symmetric", "asymmetric")


def noisy_labels(labels: Tensor, fraction: float, kind: str, num_classes: int,
                 seed: int) -> tuple[Tensor, Tensor]:
    """(new labels, bool mask of the changed ones): exactly round(fraction * N) labels changed.

    The changed samples are a uniform random subset of that size (drawn without replacement
    from a generator seeded by ``seed`` only). ``symmetric``: each gets a class drawn uniformly
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
    g = torch.Generator().manual_seed(int(seed) * 7_777 + 0x1AB3)  # its own stream, fixed by the seed
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


def describe_datasets() -> list[tuple[str, str]]:
    return [(n, (fn.__doc__ or "").strip().splitlines()[0]) for n, fn in DATASETS.items()]


# --- the loader --------------------------------------------------------------------------

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


_M32 = 0xFFFFFFFF


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


def make_mask_loader(spec, train_loader, batch_size: int, seed: int, device: str | torch.device,
                     workers: int | None = None):
    """Batches for masks that need data (Fisher, dynamic): the whole training set in a fixed order of
    its own, not augmented, not sharded (every process builds the same mask)."""
    if hasattr(spec, "make_mask_loader"):
        return spec.make_mask_loader(batch_size, seed, device, workers=workers)
    # it shares the training tensors already on the device
    return DeviceLoader(train_loader.x, train_loader.y, batch_size, shuffle=True, augment=False, crop_pad=0,
                        flip=False, seed=seed, device=device)
