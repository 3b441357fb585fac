"""ImageNet-scale data: an image folder read as it goes (``dataset: imagefolder``).

    <root>/train/<class>/*.JPEG      <root>/val/<class>/*.JPEG      [<root>/test/<class>/*.JPEG]

``<root>`` is ``data_root`` (or $SAMBENCH_DATA_ROOT, or ./data), or its ``imagenet/`` sub-folder.
``val/`` is the test set (ImageNet's convention: its test labels are not public); a validation split
is then held out of ``train/`` (``val_split: 0.1``, stratified by class, bench.data.split). A data set
with a labelled ``test/`` folder of the same classes has a validation folder of its own:
``val_split: folder`` validates on ``val/`` and tests on ``test/``.
torchvision's ImageFolder reads the files in DataLoader worker processes (``data_workers`` per
process), into pinned memory when the run is on a GPU. Training images get the standard
RandomResizedCrop(224) + horizontal flip, evaluation images resize(256) + center-crop(224), both
normalized with the ImageNet mean and std. Each training image's random crop and flip come from a
key of (seed, epoch, sample index) alone, and the batches follow :func:`bench.data.datasets.plan_steps`
(process r takes shard r of every global batch), so 1 and N processes see the same inputs.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

from bench.data.augment import sample_keys
from bench.data.datasets import DataError, shaped
from bench.data.files import find_root
from bench.data.loader import StepLoader
from bench.registries import DATASETS

IMG_SIZE = 224
RESIZE = 256
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)
MAX_WORKERS = 8


def default_workers() -> int:
    """DataLoader workers per process: the cores shared by this node's processes, at most 8."""
    per_node = int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1)
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:
        cores = os.cpu_count() or 1
    return max(1, min(MAX_WORKERS, cores // max(1, per_node)))


def transforms(train: bool, img_size: int = IMG_SIZE):
    from torchvision import transforms as T

    if train:
        steps = [T.RandomResizedCrop(img_size), T.RandomHorizontalFlip()]
    else:
        steps = [T.Resize(int(round(img_size * RESIZE / IMG_SIZE))), T.CenterCrop(img_size)]
    return T.Compose(steps + [T.ToTensor(), T.Normalize(MEAN, STD)])


class KeyedImages(torch.utils.data.Dataset):
    """``(index, epoch) -> (image tensor, label)``; random transforms seeded by (seed, epoch, index)."""

    def __init__(self, folder, transform, seed: int, random: bool, transform_size: int = IMG_SIZE):
        self.folder, self.transform, self.seed, self.random = folder, transform, int(seed), random
        self.transform_size = transform_size

    def __len__(self) -> int:
        return len(self.folder.samples)

    def __getitem__(self, key: tuple[int, int]):
        index, epoch = key
        path, label = self.folder.samples[index]
        try:
            image = self.folder.loader(path)
        except Exception as exc:  # noqa: BLE001 -- truncated, not an image, unreadable: name the file
            raise DataError(f"{path}: not a readable image ({type(exc).__name__}: {exc}); remove or "
                            f"replace it") from None
        if not self.random:
            return self.transform(image), label
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(sample_keys(self.seed, epoch, torch.tensor([index]))[0]))
            return self.transform(image), label


class _PlanSampler:
    """The batch sampler of a FolderLoader: this process's indices of each step, with the epoch."""

    def __init__(self, loader: FolderLoader):
        self.loader = loader

    def __iter__(self):
        epoch = self.loader.epoch
        for step in self.loader.plan():
            if len(step.index):  # (an evaluation batch may give this process nothing)
                yield [(i, epoch) for i in step.index.tolist()]

    def __len__(self) -> int:
        return sum(1 for s in self.loader.plan() if len(s.index))


class FolderLoader(StepLoader):
    """A StepLoader over image files: DataLoader workers decode and transform, batches land on ``device``."""

    def __init__(self, images: KeyedImages, batch_size: int, *, shuffle: bool, seed: int, device,
                 drop_last: bool = False, accumulate: int = 1, shard: tuple[int, int] = (0, 1),
                 workers: int | None = None, every_sample: bool = False):
        self.images, self.batch_size = images, int(batch_size)
        self.every_sample = every_sample
        self.shuffle, self.seed, self.drop_last = shuffle, int(seed), drop_last
        self.accumulate, self.shard = int(accumulate), (int(shard[0]), int(shard[1]))
        self.device = torch.device(device)
        self.epoch = 0
        self.workers = default_workers() if workers is None else int(workers)
        self._loader = None

    @property
    def num_samples(self) -> int:
        return len(self.images)

    def _order(self, device=None):
        return super()._order(torch.device("cpu"))

    def _data_loader(self):
        if self._loader is None:
            self._loader = torch.utils.data.DataLoader(
                self.images, batch_sampler=_PlanSampler(self), num_workers=self.workers,
                pin_memory=self.device.type == "cuda", persistent_workers=self.workers > 0)
        return self._loader

    def steps(self):
        batches = iter(self._data_loader())  # the same plan, read by the workers (empty steps skipped)
        size = self.images.transform_size
        for step in self.plan():
            if not len(step.index):
                xb, yb = torch.zeros(0, 3, size, size), torch.zeros(0, dtype=torch.long)
            else:
                xb, yb = _next(batches)
            yield (xb.to(self.device, non_blocking=True), yb.to(self.device, non_blocking=True),
                   step.sizes, step.total)

    def __iter__(self):
        for xb, yb, _, _ in self.steps():
            yield xb, yb


def _next(batches):
    """The next batch; an unreadable image (a DataError in a DataLoader worker, which torch re-raises
    with the worker's traceback as its message) raised again with its own one-line message."""
    try:
        return next(batches)
    except DataError as exc:
        last = str(exc).strip().splitlines()[-1]
        raise DataError(last.split("DataError: ", 1)[-1]) from None


@dataclass
class FolderPart:
    """Some samples of an image folder (what KeyedImages reads: ``samples`` and ``loader``)."""

    samples: list
    loader: object = field(repr=False)

    @property
    def targets(self) -> list[int]:
        return [label for _, label in self.samples]


def _part(folder, index) -> FolderPart:
    return FolderPart([folder.samples[i] for i in index.tolist()], folder.loader)


@dataclass
class FolderSpec:
    """An image-folder data set: its folders and classes (the images stay on disk)."""

    name: str
    root: Path
    classes: tuple[str, ...]
    train_folder: object = field(repr=False)   # what trains (train/, less the held-out part)
    val_folder: object = field(repr=False)     # val/: the test set, unless test_folder is set
    in_chans: int = 3
    img_size: int = IMG_SIZE
    test_folder: object = field(default=None, repr=False)   # test/ (val_split: folder)
    holdout: object = field(default=None, repr=False)       # the validation images, or None

    @property
    def test_images(self):
        return self.val_folder if self.test_folder is None else self.test_folder

    def with_holdout(self, fraction: float, seed: int) -> FolderSpec:
        """A stratified part of train/ held out for validation (bench.data.split.stratified_split)."""
        from bench.data.split import stratified_split

        train, val = stratified_split(torch.tensor(self.train_folder.targets), fraction, seed)
        return replace(self, train_folder=_part(self.train_folder, train), holdout=_part(self.train_folder, val))

    def with_val_folder(self) -> FolderSpec:
        """val/ validates and test/ tests (a labelled test/ folder with train/'s classes is needed)."""
        from torchvision.datasets import ImageFolder

        test_dir = self.root / "test"
        if not test_dir.is_dir():
            raise DataError(f"imagefolder {self.root}: no test/ folder, so val/ is this data set's test set; "
                            f"hold out part of train/ instead (val_split: a fraction, e.g. 0.1)")
        test = ImageFolder(str(test_dir))
        if test.classes != list(self.classes):
            extra = sorted(set(test.classes) ^ set(self.classes))[:5]
            raise DataError(f"imagefolder {self.root}: test/ and train/ have different classes (e.g. {extra})")
        return replace(self, test_folder=test, holdout=self.val_folder)

    def make_val_loader(self, eval_batch_size, seed, device, *, shard=(0, 1), workers=None):
        if self.holdout is None:
            return None
        return FolderLoader(KeyedImages(self.holdout, transforms(False, self.img_size), seed, False),
                            eval_batch_size, shuffle=False, seed=seed, device=device, shard=shard, workers=workers,
                            every_sample=True)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def make_loaders(self, batch_size, eval_batch_size, seed, device, augment, *, drop_last=False,
                     accumulate=1, shard=(0, 1), workers=None):
        train = FolderLoader(KeyedImages(self.train_folder, transforms(augment, self.img_size), seed, augment),
                             batch_size, shuffle=True, seed=seed, device=device, drop_last=drop_last,
                             accumulate=accumulate, shard=shard, workers=workers)
        test = FolderLoader(KeyedImages(self.test_images, transforms(False, self.img_size), seed, False),
                            eval_batch_size, shuffle=False, seed=seed, device=device, shard=shard, workers=workers,
                            every_sample=True)
        return train, test

    def make_mask_loader(self, batch_size, seed, device, workers=None):
        return FolderLoader(KeyedImages(self.train_folder, transforms(False, self.img_size), seed, False),
                            batch_size, shuffle=True, seed=seed, device=device, workers=workers)


@DATASETS.register("imagefolder")
@shaped(1000, 3, IMG_SIZE)
def imagefolder(root: str | None = None, download: bool = False) -> FolderSpec:
    """Image folder root/train/<class>/*, root/val/<class>/* (ImageNet layout), 224x224, read by workers."""
    from torchvision.datasets import ImageFolder

    if download:
        raise DataError("imagefolder: nothing to download; point --data-root at a folder holding train/ and val/")
    base = find_root(root)
    try:
        train, val = ImageFolder(str(base / "train")), ImageFolder(str(base / "val"))
    except FileNotFoundError as exc:  # a class folder without images (torchvision: "Found no valid file ...")
        raise DataError(f"imagefolder {base}: {exc}") from None
    if train.classes != val.classes:
        extra = sorted(set(train.classes) ^ set(val.classes))[:5]
        raise DataError(f"imagefolder {base}: train/ and val/ have different classes (e.g. {extra})")
    return FolderSpec("imagefolder", base, tuple(train.classes), train, val)


imagefolder.has_val_folder = True  # val_split: folder is allowed (a labelled test/ beside val/: config checks)
