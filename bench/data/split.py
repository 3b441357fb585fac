"""The validation split (``val_split``): a part of the *training* set held out to choose
hyperparameters on, so that the test set is never used to choose anything.

    spec = run_data(spec, val_split=0.2, val_noisy=False, label_noise=0.4,
                    label_noise_type="symmetric", seed=0)
    spec.train_x, spec.train_y     # the part that trains (80%), its labels noisy
    spec.val_x, spec.val_y         # the held-out 20%, clean labels (val_noisy: noisy like training)

The rule (docs/protocol.md):

* **stratified, exact counts**: class c with n_c training samples gives
  k_c = floor(val_split · n_c + 1/2) of them (rounded half up), at most n_c − 1, so every class
  keeps a training sample. The counts depend on the labels and ``val_split`` only.
* **seeded by the run's seed**: which k_c samples of class c are held out is drawn from a generator
  of its own seeded by the seed only, class by class in label order; the same on every process of a
  run and on every resume, and different seeds hold out different samples (seed-paired comparisons
  then pair the splits too).
* **from the clean labels, before label noise**: the split is drawn on the data set's own labels;
  then ``label_noise`` replaces exactly round(label_noise · N_train) labels of the part that trains
  (:func:`bench.data.label_noise.noisy_labels`, as without a split, on the training part). The
  held-out part keeps its clean labels unless ``val_noisy``: then exactly round(label_noise · N_val)
  of its labels are replaced the same way, from a stream of their own.
* the two parts are disjoint and their union is the training set; test data is never touched.
* ``val_split: 0`` returns the data set itself: no validation, the same numbers as before.
* ``val_split: folder``: the data set's own validation folder (``imagefolder`` with ``train/``,
  ``val/`` and ``test/``: ``val/`` validates, ``test/`` tests).

Per-channel normalization statistics of the tensor data sets are those of the whole training set
(computed when the data set is loaded, before the split): label-free, and never the test set's.
"""
from __future__ import annotations

from dataclasses import replace

import torch
from torch import Tensor

from bench.data.files import DataError
from bench.data.label_noise import noisy_labels, with_label_noise

SPLIT_STREAM = 0x5A1D       # the random stream of the held-out samples
VAL_NOISE_STREAM = 0x7E57   # the random stream of the held-out part's label noise (val_noisy)
FOLDER = "folder"           # val_split: the data set's own validation folder


def held_out_counts(labels: Tensor, fraction: float) -> dict[int, int]:
    """{class: k_c}, k_c = min(floor(fraction · n_c + 1/2), n_c − 1) for every class present."""
    classes, counts = torch.unique(labels.cpu(), return_counts=True)
    out = {}
    for c, n in zip(classes.tolist(), counts.tolist()):
        out[int(c)] = max(0, min(int(float(fraction) * n + 0.5), n - 1))
    return out


def stratified_split(labels: Tensor, fraction: float, seed: int) -> tuple[Tensor, Tensor]:
    """(train indices, validation indices), each in increasing order: :func:`held_out_counts` samples
    of every class held out, drawn from a generator seeded by ``seed`` only."""
    labels = labels.cpu()
    g = torch.Generator().manual_seed(int(seed) * 7_919 + SPLIT_STREAM)
    held = []
    for c, k in held_out_counts(labels, fraction).items():
        members = (labels == c).nonzero().flatten()
        held.append(members[torch.randperm(len(members), generator=g)[:k]])
    val = torch.sort(torch.cat(held)).values if held else torch.zeros(0, dtype=torch.long)
    keep = torch.ones(len(labels), dtype=torch.bool)
    keep[val] = False
    return keep.nonzero().flatten(), val


def with_validation(spec, val_split, seed: int):
    """The data set with its validation split (see the module docstring); ``val_split == 0``: itself."""
    if val_split == FOLDER:
        if not hasattr(spec, "with_val_folder"):
            raise DataError(f"{spec.name}: no validation folder of its own; hold out part of the training "
                            f"set instead (val_split: a fraction, e.g. 0.1)")
        return spec.with_val_folder()
    if not val_split:
        return spec
    if hasattr(spec, "with_holdout"):  # data read from files as it goes (imagefolder)
        return spec.with_holdout(float(val_split), seed)
    train, val = stratified_split(spec.train_y, float(val_split), seed)
    return replace(spec, train_x=spec.train_x[train], train_y=spec.train_y[train],
                   val_x=spec.train_x[val], val_y=spec.train_y[val])


def run_data(spec, *, val_split=0.0, val_noisy: bool = False, label_noise: float = 0.0,
             label_noise_type: str = "symmetric", seed: int = 0):
    """What a run trains, validates and tests on: the validation split drawn on the clean labels,
    then label noise on the part that trains (and on the held-out part with ``val_noisy``)."""
    spec = with_validation(spec, val_split, seed)
    spec = with_label_noise(spec, label_noise, label_noise_type, seed)
    if val_noisy and label_noise and getattr(spec, "val_y", None) is not None:
        val_y, _ = noisy_labels(spec.val_y, label_noise, label_noise_type, spec.num_classes, seed,
                                stream=VAL_NOISE_STREAM)
        spec = replace(spec, val_y=val_y)
    return spec


def run_data_of(spec, cfg: dict):
    """:func:`run_data` with a run config's fields (val_split, val_noisy, label_noise, its type, seed)."""
    return run_data(spec, val_split=cfg.get("val_split", 0.0), val_noisy=cfg.get("val_noisy", False),
                    label_noise=cfg["label_noise"], label_noise_type=cfg["label_noise_type"], seed=cfg["seed"])
