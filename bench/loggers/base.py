"""What every logger shares: the scalars of an epoch and of the result, the flat config, the rank."""
from __future__ import annotations

import math
import os
import sys
from typing import Any

# metrics.jsonl keys -> logger tags; other numeric keys are logged under their own name
TAGS = {"train_loss": "train/loss", "train_acc": "train/acc", "test_loss": "test/loss",
        "test_acc": "test/acc", "val_loss": "val/loss", "val_acc": "val/acc", "lr": "lr", "perturbed_fraction": "perturbed_fraction",
        "epoch_time_s": "time/epoch_s"}


# result.json keys logged once at the end as final/<key>
FINAL_KEYS = ("test_acc", "test_loss", "train_acc", "train_loss", "best_test_acc", "perturbed_fraction",
              "seconds_per_epoch", "wall_time_s", "val_acc", "val_loss", "best_val_acc", "best_val_epoch",
              "test_acc_at_best_val")


def flat_config(cfg: dict, prefix: str = "") -> dict[str, Any]:
    """{"base": {"lr": 0.1}} -> {"base.lr": 0.1}; the logging block itself is left out."""
    out: dict[str, Any] = {}
    for k, v in cfg.items():
        if not prefix and k == "logging":
            continue
        if isinstance(v, dict):
            out.update(flat_config(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def epoch_scalars(record: dict) -> dict[str, float]:
    """The finite numeric values of a metrics.jsonl line, under their logger tags."""
    out = {}
    for k, v in record.items():
        if k == "epoch" or isinstance(v, bool) or not isinstance(v, (int, float)):
            continue
        if math.isfinite(v):
            out[TAGS.get(k, k)] = float(v)
    return out


def final_scalars(result: dict) -> dict[str, float]:
    """final/<key> of result.json's numbers, and sharpness/<measure> of its sharpness block."""
    out = {f"final/{k}": float(result[k]) for k in FINAL_KEYS
           if isinstance(result.get(k), (int, float)) and math.isfinite(result[k])}
    return {**out, **sharpness_scalars(result.get("sharpness"))}


def sharpness_scalars(block: Any) -> dict[str, float]:
    """sharpness/<measure> for the finite numbers of a result's ``sharpness`` block."""
    if not isinstance(block, dict):
        return {}
    return {f"sharpness/{k}": float(v) for k, v in block.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)}


def hyperparameters(config: dict, result: dict) -> dict[str, Any]:
    """The run config (flat) with every option of its SAM variant, defaults included
    (``variant_options.<option>``, from result.json's ``variant_options``)."""
    options = result.get("variant_options") if isinstance(result.get("variant_options"), dict) else {}
    return {**flat_config(config), **{f"variant_options.{k}": v for k, v in options.items()}}


def process_rank(rank: int | None = None) -> int:
    """The given rank, else torch.distributed's (when initialized), else $RANK, else 0."""
    if rank is not None:
        return int(rank)
    dist = sys.modules.get("torch.distributed")
    if dist is not None and dist.is_available() and dist.is_initialized():
        return int(dist.get_rank())
    return int(os.environ.get("RANK", "0") or 0)


def _warn(msg: str) -> None:
    from bench.console import warn

    warn(msg)


class Logger:
    """One backend. ``start`` opens (or reopens) the logger run; steps are epochs (1-based)."""

    name = "logger"

    def start(self, ctx: dict, state: dict) -> None:
        raise NotImplementedError

    def log_epoch(self, epoch: int, scalars: dict[str, float]) -> None:
        raise NotImplementedError

    def log_step(self, step: int, scalars: dict[str, float]) -> None:
        """Scalars of training step ``step`` (1-based, counted over the whole run)."""
        raise NotImplementedError

    def log_final(self, hparams: dict[str, Any], final: dict[str, float], step: int) -> None:
        raise NotImplementedError

    def log_summary(self, scalars: dict[str, float], step: int) -> None:
        """Numbers of the finished run (its sharpness measures), at its last epoch."""
        raise NotImplementedError

    def finish(self, status: str) -> None:
        raise NotImplementedError
