"""Run ids: a short hash of the canonical experiment part of a resolved config.

The experiment part is every experiment field of the table (runtime fields are left out), but
a field marked ``id_omits_default`` only when it is not at its default, the label-noise type only
with label noise, and ``world_size`` only when the number of processes changes what the run
computes. So a field added later leaves every earlier run id as it was.
"""
from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from typing import Any

from bench.config.checks import same_value
from bench.config.fields import EXPERIMENT, ID_OMITS_DEFAULT


def world_size(cfg: dict[str, Any]) -> int:
    """Processes a run spans: nproc x nodes."""
    return int(cfg["nproc"]) * int(cfg["nodes"])


def world_changes_result(cfg: dict[str, Any]) -> bool:
    """Whether the number of processes changes what a run computes: a local ascent perturbs with
    batch_size / world samples, and BatchNorm without sync_bn normalizes over them (sync_bn false
    counts whether or not the model has BatchNorm). A synced run is the one-process run."""
    return world_size(cfg) > 1 and (cfg["ascent"] == "local" or not cfg["sync_bn"])


def experiment_part(cfg: dict[str, Any]) -> dict[str, Any]:
    """What the run id hashes (see the module docstring)."""
    part = {k: cfg[k] for k in EXPERIMENT
            if not (k in ID_OMITS_DEFAULT and same_value(cfg.get(k, EXPERIMENT[k]), EXPERIMENT[k]))}
    if not part.get("label_noise"):
        part.pop("label_noise_type", None)
    if not part.get("label_noise") or not part.get("val_split"):
        part.pop("val_noisy", None)  # no noise to put on the held-out labels, or nothing held out
    if world_changes_result(cfg):
        part["world_size"] = world_size(cfg)
    return part


def _canonical(experiment: dict[str, Any]) -> str:
    return json.dumps(experiment, sort_keys=True, separators=(",", ":"), default=str)


def _short_hash(text: str) -> str:
    return hashlib.sha1(text.encode()).hexdigest()[:12]


def run_id(cfg: dict[str, Any]) -> str:
    """Short hash of the canonical experiment config (runtime fields excluded, except the world size
    when it changes the result)."""
    return _short_hash(_canonical(experiment_part(cfg)))


_SEED_MARK = "\x00seed\x00"


def run_ids_by_seed(cfg: dict[str, Any]) -> Callable[[int], str]:
    """``ids(seed) == run_id(cfg with that seed)`` for integer seeds; the canonical JSON is
    built once and the seed written into it (``json.dumps`` of an int is its ``str``)."""
    canon = _canonical({**experiment_part(cfg), "seed": _SEED_MARK})
    parts = canon.split(json.dumps(_SEED_MARK))
    if len(parts) != 2:  # the mark also occurs in a value: no shortcut
        return lambda seed: run_id({**cfg, "seed": seed})
    head, tail = parts

    def ids(seed: int) -> str:
        if type(seed) is not int:  # bool, numpy integers...: the general rule
            return run_id({**cfg, "seed": seed})
        return _short_hash(f"{head}{seed}{tail}")
    return ids
