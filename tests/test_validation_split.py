"""The validation split (val_split, val_noisy; bench.data.split) and its per-epoch evaluation.

Asserts: run ids of existing configs do not move (pinned at the commit before the split existed);
the split is disjoint, covers the training set, holds out exactly floor(v·n_c + 1/2) samples of every
class and depends on the seed only; label noise replaces exactly round(f·N) labels of the part that
trains and none of the held-out part (unless val_noisy, then exactly round(f·N_val) there); the
validation loader yields the held-out images as they are, in order; config checks; a run records
val_acc/val_loss per epoch, in result.json (final, best epoch and the test accuracy at it) and in
TensorBoard; 2 processes (DDP) evaluate the same split as one; image folders hold out part of train/
or validate on val/ beside a test/ folder.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from bench import config, io
from bench.data import split
from bench.data.datasets import load_dataset
from bench.data.label_noise import with_label_noise
from bench.data.loader import make_val_loader
from bench.engine import train

ROOT = Path(__file__).resolve().parents[1]

# computed at 3339d19, before val_split existed: these configs keep their ids (val_split 0 is omitted)
PINNED_IDS = {
    "2d48988c4681": {},
    "e9101967f378": {"dataset": "digits", "model": "resnet20", "epochs": 20, "batch_size": 128,
                     "base": {"name": "sgd", "lr": 0.1, "momentum": 0.9, "weight_decay": 5e-4},
                     "schedule": "cosine", "warmup_epochs": 1, "label_smoothing": 0.0, "augment": False,
                     "label_noise": 0.4, "label_noise_type": "symmetric", "variant": "sam", "mask": "norm_only",
                     "rho": 1.0, "seed": 2},
    "4a59beeccf4e": {"variant": "none", "mask": "none", "seed": 1},
    "f8c68d73503b": {"variant": "asam", "variant_opts": {"adaptive": "layerwise"}, "mask": "random",
                     "sparsity": "match:norm_only", "rho": 0.5},
    "ba2e1cd97717": {"dataset": "fashion_mnist", "model": "wrn16_4", "mask": "fisher", "sparsity": 0.9,
                     "mask_opts": {"num_samples": 64, "update_every": 1}},
}


def test_existing_run_ids_do_not_move():
    for rid, over in PINNED_IDS.items():
        assert config.run_id(config.resolve(over)) == rid, over
        assert config.run_id(config.resolve({**over, "val_split": 0, "val_noisy": False})) == rid


def test_run_id_follows_what_changes_the_run():
    noisy = {"label_noise": 0.4}
    base = config.run_id(config.resolve(noisy))
    held = config.run_id(config.resolve({**noisy, "val_split": 0.2}))
    assert held != base
    assert config.run_id(config.resolve({**noisy, "val_split": 0.2, "val_noisy": True})) not in (base, held)
    # val_noisy changes nothing without label noise or without a held-out part: the same run
    assert config.run_id(config.resolve({"val_split": 0.2, "val_noisy": True})) == \
        config.run_id(config.resolve({"val_split": 0.2}))
    assert config.run_id(config.resolve({**noisy, "val_noisy": True})) == base


@pytest.mark.parametrize("over,field", [({"val_split": -0.1}, "val_split"), ({"val_split": 0.95}, "val_split"),
                                        ({"val_split": "half"}, "val_split"), ({"val_noisy": "yes"}, "val_noisy"),
                                        ({"val_split": "folder"}, "val_split")])   # digits has no val folder
def test_bad_values_name_the_field(over, field):
    with pytest.raises(config.ConfigError) as info:
        config.resolve(over)
    assert info.value.field == field


def test_split_is_disjoint_stratified_exact_and_seed_stable():
    y = torch.tensor([0] * 15 + [1] * 7 + [2] * 2 + [3] * 1)[torch.randperm(25, generator=torch.Generator().manual_seed(3))]
    for frac, want in ((0.1, {0: 2, 1: 1, 2: 0, 3: 0}), (0.5, {0: 8, 1: 4, 2: 1, 3: 0}),
                       (0.9, {0: 14, 1: 6, 2: 1, 3: 0})):   # floor(v·n + 1/2), at most n − 1
        assert split.held_out_counts(y, frac) == want
        train_idx, val_idx = split.stratified_split(y, frac, seed=5)
        assert set(train_idx.tolist()).isdisjoint(val_idx.tolist())
        assert sorted(train_idx.tolist() + val_idx.tolist()) == list(range(25))
        assert {c: int((y[val_idx] == c).sum()) for c in want} == want
        assert train_idx.tolist() == sorted(train_idx.tolist()) and val_idx.tolist() == sorted(val_idx.tolist())
    digits = load_dataset("digits").train_y
    a, b, c = (split.stratified_split(digits, 0.2, s)[1] for s in (0, 0, 1))
    assert torch.equal(a, b) and not torch.equal(a, c) and len(a) == len(c) == 287


def test_label_noise_on_the_part_that_trains_only_unless_val_noisy():
    spec = load_dataset("digits")
    train_idx, val_idx = split.stratified_split(spec.train_y, 0.2, seed=0)
    clean_train, clean_val = spec.train_y[train_idx], spec.train_y[val_idx]
    held = split.run_data(spec, val_split=0.2, label_noise=0.4, seed=0)
    assert torch.equal(held.train_x, spec.train_x[train_idx]) and torch.equal(held.val_x, spec.train_x[val_idx])
    assert int((held.train_y != clean_train).sum()) == round(0.4 * len(train_idx))   # exactly the fraction
    assert torch.equal(held.val_y, clean_val)                                         # clean labels held out
    noisy = split.run_data(spec, val_split=0.2, val_noisy=True, label_noise=0.4, seed=0)
    assert torch.equal(noisy.train_y, held.train_y)        # the same noise where it trains
    assert int((noisy.val_y != clean_val).sum()) == round(0.4 * len(val_idx))
    assert torch.equal(held.test_y, spec.test_y) and torch.equal(held.test_x, spec.test_x)
    # val_split 0: the data set itself, its noise exactly as without the split
    plain = split.run_data(spec, label_noise=0.4, seed=0)
    assert plain.val_y is None and torch.equal(plain.train_y, with_label_noise(spec, 0.4, seed=0).train_y)
    assert split.run_data(spec, seed=0) is spec


def test_validation_loader_is_the_held_out_images_in_order_not_augmented():
    spec = split.run_data(load_dataset("digits"), val_split=0.2, seed=0)
    loader = make_val_loader(spec, 100, seed=0, device="cpu")
    loader.set_epoch(3)
    xs, ys = zip(*loader)
    assert torch.equal(torch.cat(xs), spec.val_x) and torch.equal(torch.cat(ys), spec.val_y)
    shards = [make_val_loader(spec, 100, seed=0, device="cpu", shard=(r, 2)) for r in range(2)]
    got = [torch.cat([y for _, y in s]) for s in shards]
    assert sum(len(g) for g in got) == len(spec.val_y)     # every sample once over the 2 processes
    assert make_val_loader(load_dataset("digits"), 100, seed=0, device="cpu") is None


TINY = {"dataset": "digits", "model": "resnet_ci", "epochs": 2, "batch_size": 128, "variant": "sam",
        "mask": "norm_only", "rho": 0.5, "device": "cpu", "val_split": 0.2, "label_noise": 0.3}


def test_a_run_records_validation_per_epoch_and_early_stopping(tmp_path):
    from logger_readers import tensorboard_scalars

    result = train.run(TINY, tmp_path / "r", progress=False)
    lines = io.read_jsonl(tmp_path / "r" / "metrics.jsonl")
    assert all(0 <= m["val_acc"] <= 100 and m["val_loss"] > 0 for m in lines)
    assert result["val_acc"] == lines[-1]["val_acc"] and result["val_loss"] == lines[-1]["val_loss"]
    best = max(lines, key=lambda m: m["val_acc"])
    assert result["best_val_acc"] == best["val_acc"] and result["best_val_epoch"] == best["epoch"]
    assert result["test_acc_at_best_val"] == best["test_acc"] and result["val_size"] == 287
    # accuracy on 287 samples is a multiple of 100/287
    assert abs(result["val_acc"] * 287 / 100 - round(result["val_acc"] * 287 / 100)) < 1e-6
    scalars = tensorboard_scalars(tmp_path / "r")
    assert [v for _, v in scalars["val/acc"]] == pytest.approx([m["val_acc"] for m in lines])
    assert scalars["final/best_val_acc"][0][1] == pytest.approx(result["best_val_acc"])


def test_two_processes_evaluate_the_same_split_as_one(tmp_path, sambench_env):
    cfg = {**TINY, "model": "vit_ci", "epochs": 1, "batch_size": 64, "label_noise": 0.0}
    one = train.run({**cfg, "logging": {"tensorboard": False}}, tmp_path / "one", progress=False)
    args = [f"--set={k}={json.dumps(v)}" for k, v in cfg.items()] + ["--log", "none"]
    proc = subprocess.run([sys.executable, "-m", "bench", "train", *args, "--nproc", "2", "--out",
                           str(tmp_path / "two")], env=sambench_env, cwd=ROOT, capture_output=True, text=True,
                          timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    two = io.read_json(tmp_path / "two" / "result.json")
    assert two["run_id"] == one["run_id"] and two["world_size"] == 2 and two["val_size"] == one["val_size"]
    assert two["val_loss"] == pytest.approx(one["val_loss"], rel=1e-4)
    assert abs(two["val_acc"] - one["val_acc"]) <= 100 / one["val_size"] + 1e-9   # at most one sample's flip


@pytest.fixture(scope="module")
def image_root(tmp_path_factory):
    """ROOT/{train,val,test}/<class>/*.png: 10, 2 and 2 images of each of 2 classes."""
    from PIL import Image

    root = tmp_path_factory.mktemp("folder")
    rng = np.random.default_rng(0)
    for part, n in (("train", 10), ("val", 2), ("test", 2)):
        for c in ("ant", "bee"):
            (root / part / c).mkdir(parents=True)
            for i in range(n):
                Image.fromarray(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(root / part / c / f"{i}.png")
    return root


def test_image_folder_holds_out_part_of_train_or_validates_on_val(image_root):
    spec = load_dataset("imagefolder", root=str(image_root))
    held = split.run_data(spec, val_split=0.2, seed=0)
    train_files = {p for p, _ in held.train_folder.samples}
    val_files = {p for p, _ in held.holdout.samples}
    assert len(val_files) == 4 and len(train_files) == 16 and train_files.isdisjoint(val_files)
    assert sorted(held.holdout.targets) == [0, 0, 1, 1]                       # two of each class
    assert held.test_images is spec.val_folder                                 # val/ stays the test set
    assert {p for p, _ in split.run_data(spec, val_split=0.2, seed=0).holdout.samples} == val_files
    loader = make_val_loader(held, 3, seed=0, device="cpu")
    loader.workers = 0
    assert sum(len(y) for _, y in loader) == 4
    own = split.run_data(spec, val_split="folder", seed=0)
    assert own.holdout is spec.val_folder and Path(own.test_images.root).name == "test"
    cfg = config.resolve({"dataset": "imagefolder", "val_split": "folder"})   # allowed for image folders
    assert config.run_id(cfg) != config.run_id(config.resolve({"dataset": "imagefolder"}))


def test_val_split_folder_needs_a_test_folder(tmp_path, image_root):
    import shutil

    from bench.data.files import DataError

    shutil.copytree(image_root / "train", tmp_path / "train")
    shutil.copytree(image_root / "val", tmp_path / "val")
    with pytest.raises(DataError, match="no test/ folder"):
        split.run_data(load_dataset("imagefolder", root=str(tmp_path)), val_split="folder")
