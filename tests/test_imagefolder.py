"""The imagefolder dataset on a tiny image folder written by the test (PIL), and the ImageNet suite.

Asserts: classes and counts as torchvision's ImageFolder reads them; each process's shard of every
global batch (augmented: RandomResizedCrop + flip keyed to the sample) is exactly its part of the
one-process batch, with DataLoader workers or without; evaluation images are resize + center-crop;
a missing folder is an error naming it (DataError, and exit 2 from the CLI before anything is
written); a run trains on it; suites/imagenet_vit_s.yaml expands to the paper's setting.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from bench.cli import app as cli
from bench.data.datasets import DataError, load_dataset
from bench.data.imagefolder import IMG_SIZE
from bench.engine import train
from bench.orchestration.suite import load_suite

CLASSES = ("cat", "dog", "emu")


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """ROOT/train/<class>/*.png (5 per class) and ROOT/val/<class>/*.png (2 per class), random RGB
    images of assorted sizes."""
    from PIL import Image

    root = tmp_path_factory.mktemp("imagenet")
    rng = np.random.default_rng(0)
    for split, n in (("train", 5), ("val", 2)):
        for c in CLASSES:
            (root / split / c).mkdir(parents=True)
            for i in range(n):
                h, w = int(rng.integers(40, 90)), int(rng.integers(40, 90))
                pixels = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(root / split / c / f"{i}.png")
    return root


def test_reads_the_folder_as_imagefolder(folder):
    spec = load_dataset("imagefolder", root=str(folder))
    assert spec.classes == CLASSES and spec.num_classes == 3 and spec.in_chans == 3
    assert len(spec.train_folder.samples) == 15 and len(spec.val_folder.samples) == 6
    train_loader, test_loader = spec.make_loaders(4, 4, 0, "cpu", augment=True, workers=0)
    xs, ys = zip(*test_loader)
    assert [len(y) for y in ys] == [4, 2] and xs[0].shape == (4, 3, IMG_SIZE, IMG_SIZE)
    assert torch.cat(ys).tolist() == [0, 0, 1, 1, 2, 2]  # in order
    assert len(train_loader) == 4 and sum(len(y) for _, y in train_loader) == 15


def test_eval_transform_is_resize_and_center_crop(folder):
    from PIL import Image
    from torchvision.transforms import functional as TF

    spec = load_dataset("imagefolder", root=str(folder))
    _, test_loader = spec.make_loaders(4, 6, 0, "cpu", augment=False, workers=0)
    x, _ = next(iter(test_loader))
    path = spec.val_folder.samples[0][0]
    image = TF.center_crop(TF.resize(Image.open(path).convert("RGB"), 256), 224)
    want = TF.normalize(TF.to_tensor(image), (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    assert torch.equal(x[0], want)


def steps(spec, shard, workers, epoch=1):
    loader, _ = spec.make_loaders(6, 6, 3, "cpu", augment=True, shard=shard, workers=workers)
    loader.set_epoch(epoch)
    return list(loader.steps())


@pytest.mark.parametrize("workers", [0, 2])
def test_shards_of_every_global_batch_are_the_one_process_batch(folder, workers):
    spec = load_dataset("imagefolder", root=str(folder))
    whole = steps(spec, (0, 1), 0)
    parts = [steps(spec, (r, 2), workers) for r in range(2)]
    assert len(whole) == len(parts[0]) == len(parts[1]) == 3  # 15 images, global batch 6
    for i, (x, y, _, total) in enumerate(whole):
        x0, y0, _, total0 = parts[0][i]
        x1, y1, _, total1 = parts[1][i]
        assert total == total0 == total1 == len(y)
        assert torch.equal(torch.cat([y0, y1]), y)
        assert torch.equal(torch.cat([x0, x1]), x)  # the same crops and flips: keyed to the sample
    again = steps(spec, (0, 1), 0, epoch=2)
    assert not torch.equal(again[0][0], whole[0][0])  # another epoch, another order and augmentation


def test_missing_folder_is_an_error_naming_it(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("SAMBENCH_DATA_ROOT", raising=False)
    monkeypatch.chdir(tmp_path)  # no ./data here
    (tmp_path / "ds" / "train" / "a").mkdir(parents=True)  # val/ is missing
    with pytest.raises(DataError, match=f"{tmp_path / 'ds' / 'val'}/<class>/"):
        load_dataset("imagefolder", root=str(tmp_path / "ds"))
    out = tmp_path / "out"
    code = cli.main(["train", "--dataset", "imagefolder", "--data-root", str(tmp_path / "ds"), "--out", str(out)])
    assert code == 2
    err = capsys.readouterr().err
    assert str(tmp_path / "ds" / "val") in err and "Traceback" not in err
    assert not out.exists()


def test_a_run_trains_on_the_image_folder(folder, tmp_path):
    cfg = {"dataset": "imagefolder", "data_root": str(folder), "model": "vit_ci", "epochs": 1, "batch_size": 6,
           "eval_batch_size": 6, "variant": "sam", "mask": "norm_only", "rho": 0.5, "device": "cpu",
           "data_workers": 0}
    result = train.run(cfg, tmp_path / "r", progress=False, log=lambda m: None)
    assert result["status"] == "done", result.get("error")
    assert result["epochs"] == 1 and 0.0 <= result["test_acc"] <= 100.0


def test_imagenet_suite_is_the_papers_setting(capsys):
    assert cli.main(["run", "suites/imagenet_vit_s.yaml", "--dry-run", "--out", "/nonexistent/never"]) == 0
    assert "nothing written" in capsys.readouterr().out
    suite = load_suite("suites/imagenet_vit_s.yaml")
    runs = suite.runs
    assert {r["model"] for r in runs} == {"vit_s32"} and {r["dataset"] for r in runs} == {"imagefolder"}
    assert {r["base"]["name"] for r in runs} >= {"adamw"}
    kinds = {(r["variant"], None if r["variant"] == "none" else r["mask"]) for r in runs}
    assert kinds == {("none", None), ("sam", "all"), ("sam", "norm_only")}  # the base alone, SAM, SAM-ON
    sam = sorted({r["rho"] for r in runs if r["variant"] == "sam" and r["mask"] == "all"})
    sam_on = sorted({r["rho"] for r in runs if r["variant"] == "sam" and r["mask"] == "norm_only"})
    assert min(sam) >= 0.05 and max(sam) <= 0.2 and min(sam_on) >= 0.5 and max(sam_on) <= 2.0
    assert all(r["nproc"] * r["nodes"] > 1 and r["batch_size"] % (r["nproc"] * r["nodes"]) == 0 for r in runs)
    assert suite.slurm["gpus_per_node"] == runs[0]["nproc"]
