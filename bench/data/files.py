"""Where each data set's files are, found without reading them and without torch.

``check_available(name, root, download)`` raises :class:`DataError` naming the places it looked
when a data set's files are missing (and no download was asked for). It is what ``sambench
run`` checks before writing anything, so it stays cheap: a data set registered in
:mod:`bench.data.datasets` declares here how its files are found (:data:`LOCATORS`); one without a
locator is loaded once instead (:func:`bench.data.datasets.check_available`).
"""
from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path


class DataError(ValueError):
    """A dataset that cannot be loaded (missing files, failed download, bad format)."""


LOCATORS: dict[str, Callable[[str | None, bool], None]] = {}   # data set -> locate(root, download)


def locator(name: str):
    """Register ``locate(root, download)`` for a data set: raise DataError if its files cannot
    be found (without reading them)."""
    def deco(fn):
        LOCATORS[name] = fn
        return fn
    return deco


def check_available(name: str, root: str | None = None, download: bool = False) -> None:
    """Raise DataError if a data set with a locator cannot be found (or downloaded, when asked).

    A data set without one is checked by :func:`bench.data.datasets.check_available` (it loads it once)."""
    LOCATORS[name](root, download)


def default_roots(root: str | None) -> list[Path]:
    """Where to look, in order: the argument, $SAMBENCH_DATA_ROOT, ./data."""
    out = []
    for r in (root, os.environ.get("SAMBENCH_DATA_ROOT"), "data"):
        if r and Path(r) not in out:
            out.append(Path(r))
    return out


@locator("digits")
@locator("synthetic")
def _always(root: str | None = None, download: bool = False) -> None:
    """Data that ships with the code (or is generated): always there."""


# --- Fashion-MNIST -----------------------------------------------------------------------

# Installed by the Debian package ``dataset-fashion-mnist``.
FASHION_SYSTEM_DIR = "/usr/share/datasets/fashion-mnist"
FASHION_FILES = {
    "train_x": "train-images-idx3-ubyte",
    "train_y": "train-labels-idx1-ubyte",
    "test_x": "t10k-images-idx3-ubyte",
    "test_y": "t10k-labels-idx1-ubyte",
}


def fashion_candidates(root: str | None) -> list[Path]:
    bases: list[Path] = []
    for r in (root, os.environ.get("SAMBENCH_DATA_ROOT"), FASHION_SYSTEM_DIR, "data/fashion-mnist"):
        if r and Path(r) not in bases:
            bases.append(Path(r))
    out: list[Path] = []
    for b in bases:
        for d in (b, b / "FashionMNIST" / "raw", b / "fashion-mnist"):
            if d not in out:
                out.append(d)
    return out


def fashion_files(d: Path) -> dict[str, Path] | None:
    """The four files in directory d (preferring .gz, accepting uncompressed ones), or None."""
    found = {}
    for key, stem in FASHION_FILES.items():
        for cand in (d / f"{stem}.gz", d / stem):
            if cand.is_file():
                found[key] = cand
                break
        else:
            return None
    return found


@locator("fashion_mnist")
def _locate_fashion(root: str | None = None, download: bool = False) -> None:
    tried = fashion_candidates(root)
    if not download and all(fashion_files(d) is None for d in tried):
        raise fashion_missing(tried)


def fashion_missing(tried: list[Path]) -> DataError:
    names = ", ".join(f"{s}.gz" for s in FASHION_FILES.values())
    return DataError(
        "Fashion-MNIST not found; looked for " + names + " in:\n  "
        + "\n  ".join(str(p) for p in tried)
        + "\nGet it with `sambench data fetch fashion_mnist` (checksums verified; docs/data.md) or "
        "`apt-get install dataset-fashion-mnist` (installs " + FASHION_SYSTEM_DIR
        + "), point --data-root (or $SAMBENCH_DATA_ROOT) at a folder holding the files, "
        "or set `download: true` to fetch it with torchvision.")


# --- CIFAR ------------------------------------------------------------------------------

@dataclass(frozen=True)
class CifarFormat:
    title: str
    folder: str
    train: tuple[str, ...]
    test: tuple[str, ...]
    meta: str
    meta_key: str
    label_key: str
    num_classes: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    tv_class: str


CIFAR10 = CifarFormat("CIFAR-10", "cifar-10-batches-py", tuple(f"data_batch_{i}" for i in range(1, 6)),
                       ("test_batch",), "batches.meta", "label_names", "labels", 10,
                       (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616), "CIFAR10")
CIFAR100 = CifarFormat("CIFAR-100", "cifar-100-python", ("train",), ("test",), "meta",
                        "fine_label_names", "fine_labels", 100,
                        (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762), "CIFAR100")


def cifar_dir(fmt: CifarFormat, base: Path) -> Path | None:
    for d in (base / fmt.folder, base):
        if all((d / f).is_file() for f in fmt.train + fmt.test):
            return d
    return None


def cifar_missing(fmt: CifarFormat, bases: list[Path]) -> DataError:
    return DataError(
        f"{fmt.title} not found; expected the extracted python-version folder "
        + " or ".join(str(b / fmt.folder) for b in bases)
        + f" (holding {', '.join(fmt.train + fmt.test)}). Get it with `sambench data fetch "
        f"{fmt.tv_class.lower()}` (docs/data.md), point --data-root (or $SAMBENCH_DATA_ROOT) at its "
        "parent folder, or set `download: true`.")


def _cifar_locator(fmt: CifarFormat):
    def locate(root: str | None = None, download: bool = False) -> None:
        bases = default_roots(root)
        if not download and all(cifar_dir(fmt, b) is None for b in bases):
            raise cifar_missing(fmt, bases)
    return locate


LOCATORS["cifar10"] = _cifar_locator(CIFAR10)
LOCATORS["cifar100"] = _cifar_locator(CIFAR100)


# --- image folders (ImageNet layout) -------------------------------------------------------------

def _has_classes(d: Path) -> bool:
    return d.is_dir() and any(p.is_dir() for p in d.iterdir())


def _candidates(root: str | None) -> list[Path]:
    out: list[Path] = []
    for base in default_roots(root):
        for d in (base, base / "imagenet"):
            if d not in out:
                out.append(d)
    return out


def find_root(root: str | None) -> Path:
    """The first candidate folder holding train/<class>/ and val/<class>/; DataError naming what is missing."""
    tried = []
    for d in _candidates(root):
        missing = [sub for sub in ("train", "val") if not _has_classes(d / sub)]
        if not missing:
            return d
        tried.append(f"{d}: no {' and no '.join(str(d / m) + '/<class>/' for m in missing)}")
    raise DataError("imagefolder: no image folder found; expected <root>/train/<class>/* and "
                    "<root>/val/<class>/*. Looked in:\n  " + "\n  ".join(tried)
                    + "\nPoint --data-root (or $SAMBENCH_DATA_ROOT) at the folder holding train/ and val/.")


IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")  # torchvision's


def empty_classes(d: Path) -> list[Path]:
    """The class folders under ``d`` holding no image file (torchvision's ImageFolder refuses them)."""
    empty = []
    for cls in sorted(p for p in d.iterdir() if p.is_dir()):
        with os.scandir(cls) as it:
            if not any(e.name.lower().endswith(IMAGE_SUFFIXES) for e in it):
                empty.append(cls)
    return empty


@locator("imagefolder")
def _locate_imagefolder(root: str | None = None, download: bool = False) -> None:
    base = find_root(root)
    empty = [p for sub in ("train", "val") for p in empty_classes(base / sub)]
    if empty:
        raise DataError(f"imagefolder {base}: {len(empty)} class folder(s) hold no image "
                        f"({', '.join(IMAGE_SUFFIXES)}): {', '.join(map(str, empty[:5]))}"
                        + (" ..." if len(empty) > 5 else "") + "; remove them or add images")
