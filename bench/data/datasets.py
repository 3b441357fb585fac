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
import os
import pickle
from dataclasses import dataclass, field
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
    val_x: Tensor | None = None   # the validation split held out of train (bench.data.split), or None
    val_y: Tensor | None = None

    def __post_init__(self) -> None:
        splits = [("train", self.train_x, self.train_y), ("test", self.test_x, self.test_y)]
        if self.val_x is not None:
            splits.append(("validation", self.val_x, self.val_y))
        for split, x, y in splits:
            if x.ndim != 4 or x.shape[1:] != (self.in_chans, self.img_size, self.img_size):
                raise DataError(f"{self.name}: {split} images have shape {tuple(x.shape)}, expected "
                                f"(N, {self.in_chans}, {self.img_size}, {self.img_size})")
            if y.shape != (x.shape[0],):
                raise DataError(f"{self.name}: {split} has {x.shape[0]} images but labels of "
                                f"shape {tuple(y.shape)}")

    def __repr__(self) -> str:
        val = "" if self.val_y is None else f", validation={len(self.val_y)}"
        return (f"DataSpec({self.name!r}, train={len(self.train_y)}{val}, test={len(self.test_y)}, "
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


def describe_datasets() -> list[tuple[str, str]]:
    return [(n, (fn.__doc__ or "").strip().splitlines()[0]) for n, fn in DATASETS.items()]


# --- the loader --------------------------------------------------------------------------


_M32 = 0xFFFFFFFF


