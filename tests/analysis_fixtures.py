"""A small hand-made results folder for tests/test_analysis.py (no torch, no training).

Layout written: <root>/<suite>/<run_id>/{config.json, metrics.jsonl, result.json}.
Expected numbers are chosen so that means/stds are easy to verify by hand.
"""
from __future__ import annotations

import copy
import hashlib
import json
import math
from pathlib import Path

import numpy as np

RUNTIME = {"device": "cuda", "data_root": "/data", "download": False, "eval_batch_size": 1024,
           "log_every": 50, "compile": False, "save_gamma": True}

BASE_CFG = {
    "dataset": "cifar10", "model": "resnet20", "variant": "sam", "variant_opts": {}, "mask": "all",
    "sparsity": None, "mask_opts": {}, "rho": 0.05, "rho_norm": "subset", "freeze_bn_second": False,
    "epochs": 10, "batch_size": 128,
    "base": {"name": "sgd", "lr": 0.1, "momentum": 0.9, "weight_decay": 5e-4, "nesterov": False},
    "schedule": "cosine", "warmup_epochs": 0, "label_smoothing": 0.1, "augment": True, "amp": "none",
    "channels_last": False, "seed": 0, **RUNTIME,
}

# what bench.registries.variant_options() gives (tests/test_layout.py checks that they agree)
_SHARED = {"m": None, "sam_start_epoch": 0}   # m-sharpness and late-phase SAM, on every perturbing variant
VARIANT_DEFAULTS = {"none": {}, "sam": {"p": 2, **_SHARED},
                    "asam": {"adaptive": "elementwise", "p": 2, "eta": 0.01, "normalize_bias": False, **_SHARED}}

ENV = {"torch": "2.5.0", "python": "3.11.9", "device": "cuda", "device_name": "NVIDIA H100",
       "git_commit": "abc123", "hostname": "node1"}


def make_cfg(**over) -> dict:
    cfg = copy.deepcopy(BASE_CFG)
    for k, v in over.items():
        cfg[k] = v
    return cfg


def run_id(cfg: dict) -> str:
    exp = {k: v for k, v in cfg.items() if k not in RUNTIME}
    return hashlib.sha1(json.dumps(exp, sort_keys=True, default=str).encode()).hexdigest()[:12]


def write_run(root: Path, suite: str | None, cfg: dict, *, status: str | None = "done",
              test_acc: float = float("nan"), spe: float = 10.0, frac: float = 1.0,
              gamma: list | None = None, n_metrics: int | None = None, result: str = "ok",
              suite_dir: str | None = None, sharpness: dict | None = None) -> Path:
    """result: "ok" (write result.json), "none" (unfinished), "corrupt" (half-written).

    As bench does: the config holds the variant options that differ from the defaults, and
    config.json/result.json hold every option as ``variant_options``.
    """
    defaults = VARIANT_DEFAULTS.get(cfg["variant"], {})
    cfg = {**cfg, "variant_opts": {k: v for k, v in cfg["variant_opts"].items()
                                   if not (k in defaults and defaults[k] == v)}}
    options = {**defaults, **cfg["variant_opts"]}
    rid = run_id(cfg)
    d = root / (suite_dir or suite or "adhoc") / rid
    d.mkdir(parents=True, exist_ok=True)
    (d / "config.json").write_text(json.dumps({"run_id": rid, "suite": suite, "config": cfg,
                                               "variant_options": options}))
    epochs = cfg["epochs"] if n_metrics is None else n_metrics
    with open(d / "metrics.jsonl", "w") as f:
        for e in range(1, epochs + 1):
            f.write(json.dumps({"epoch": e, "train_loss": 1.0 / e, "train_acc": 50 + e, "test_loss": 1.1 / e,
                                "test_acc": 40 + e, "lr": 0.1, "epoch_time_s": spe,
                                "perturbed_fraction": frac}) + "\n")
    if result == "ok":
        res = {"status": status, "run_id": rid, "test_acc": test_acc, "test_loss": 0.5,
               "train_acc": 99.0 if not math.isnan(test_acc) else float("nan"), "train_loss": 0.01,
               "best_test_acc": test_acc, "epochs": cfg["epochs"], "wall_time_s": spe * cfg["epochs"],
               "seconds_per_epoch": spe, "n_params": 270000, "n_perturbed": round(frac * 270000),
               "perturbed_fraction": frac, "env": ENV, "config": cfg, "variant_options": options}
        if status == "failed":
            res.update(error="RuntimeError: CUDA out of memory", test_acc=None, test_loss=None,
                       train_acc=None, best_test_acc=None, epochs=0)
        if gamma is not None:
            res["norm_gamma"] = gamma
        if sharpness is not None:
            res["sharpness"] = sharpness
        (d / "result.json").write_text(json.dumps(res))  # NaN written as the NaN token
    elif result == "corrupt":
        (d / "result.json").write_text('{"status": "done", "run_id": "' + rid + '", "test_acc": 8')
    return d


def gammas(center: float, spread: float, seed: int, n: int = 64) -> list:
    return [float(x) for x in np.random.default_rng(seed).normal(center, spread, n)]


# hand-computable accuracies (seed -> test_acc); see make_results
SGD = [80.0, 81.0, 82.0]                 # mean 81, std 1
ALL_005 = [82.0, 83.0, 84.0]             # mean 83, std 1
ALL_01 = [84.0, 86.0, 88.0]              # mean 86, std 2   <- dense SAM best rho
NORM_005 = [85.0, 87.0, 89.0]            # mean 87, std 2   <- best overall
NORM_01 = [83.0, 84.0, 85.0]             # mean 84, std 1
RANDOM_09 = [80.0, 83.0]                 # seeds 0,1 only (seed 2 never ran): mean 81.5, std 2.1213
RANDOM_099 = [78.0, 81.0]                # seeds 0,1; seed 2 diverged (NaN)


def make_results(root: Path) -> Path:
    root = Path(root)
    s = "s1"
    sam_asam = {"adaptive": "layerwise", "eta": 0.01}
    for seed in range(3):
        rt = {"device": f"cuda:{seed}", "data_root": f"/scratch/{seed}"}  # runtime fields differ per run
        write_run(root, s, make_cfg(variant="none", mask="none", seed=seed, **rt), test_acc=SGD[seed],
                  spe=10.0, frac=0.0, gamma=gammas(1.1, 0.1, seed), sharpness=sharpness_block(2.0, seed))
        write_run(root, s, make_cfg(rho=0.05, seed=seed, **rt), test_acc=ALL_005[seed], spe=20.0,
                  frac=1.0, gamma=gammas(1.0, 0.1, 10 + seed), sharpness=sharpness_block(1.0, seed))
        write_run(root, s, make_cfg(rho=0.1, seed=seed, **rt), test_acc=ALL_01[seed], spe=20.0,
                  frac=1.0, gamma=gammas(1.0, 0.1, 20 + seed), sharpness=sharpness_block(0.8, seed))
        write_run(root, s, make_cfg(mask="norm_only", rho=0.05, seed=seed, **rt), test_acc=NORM_005[seed],
                  spe=11.0, frac=0.003, gamma=gammas(0.8, 0.15, 30 + seed), sharpness=sharpness_block(3.0, seed))
        write_run(root, s, make_cfg(mask="norm_only", rho=0.1, seed=seed, **rt), test_acc=NORM_01[seed],
                  spe=11.0, frac=0.003, gamma=gammas(0.8, 0.15, 40 + seed), sharpness=sharpness_block(2.5, seed))
    for seed in range(2):
        write_run(root, s, make_cfg(mask="random", sparsity=0.9, rho=0.05, seed=seed), test_acc=RANDOM_09[seed],
                  spe=19.0, frac=0.1, gamma=gammas(0.95, 0.1, 50 + seed))
        write_run(root, s, make_cfg(mask="random", sparsity=0.99, rho=0.05, seed=seed),
                  test_acc=RANDOM_099[seed], spe=19.0, frac=0.01, gamma=gammas(0.9, 0.1, 60 + seed))
    # the odd ones
    write_run(root, s, make_cfg(mask="random", sparsity=0.99, rho=0.05, seed=2), status="diverged",
              test_acc=float("nan"), spe=19.0, frac=0.01)
    write_run(root, s, make_cfg(mask="norm_only", rho=0.2, seed=0), status="failed", frac=0.003)
    write_run(root, s, make_cfg(mask="norm_only", rho=0.2, seed=1), result="corrupt")
    write_run(root, s, make_cfg(rho=0.2, seed=0), n_metrics=2, result="none")          # running
    write_run(root, s, make_cfg(rho=0.2, seed=1), n_metrics=0, result="none")          # pending
    (root / s / run_id(make_cfg(rho=0.2, seed=1)) / "metrics.jsonl").unlink()
    bad = root / s / "deadbeef0000"
    bad.mkdir(parents=True)
    (bad / "config.json").write_text('{"run_id": "deadbeef0000", "suite": "s1", "conf')   # corrupt config
    with open(root / s / run_id(make_cfg(rho=0.2, seed=0)) / "metrics.jsonl", "a") as f:
        f.write('{"epoch": 3, "train_lo')                                              # half-written line
    # ASAM layerwise, one seed each
    for mask, rho, acc, spe, frac in (("all", 0.5, 85.0, 21.0, 1.0), ("all", 1.0, 86.0, 21.0, 1.0),
                                      ("norm_only", 0.5, 84.0, 12.0, 0.003),
                                      ("norm_only", 1.0, 83.0, 12.0, 0.003)):
        write_run(root, s, make_cfg(variant="asam", variant_opts=dict(sam_asam), mask=mask, rho=rho),
                  test_acc=acc, spe=spe, frac=frac)
    # a second setting (suite null), two seeds, no gamma
    s2 = {"model": "wrn16", "dataset": "cifar100"}
    for seed, (sgd, dense, norm) in enumerate(((60.0, 64.0, 65.0), (62.0, 66.0, 69.0))):
        write_run(root, None, make_cfg(variant="none", mask="none", seed=seed, **s2), test_acc=sgd,
                  spe=30.0, frac=0.0, suite_dir="adhoc")
        write_run(root, None, make_cfg(rho=0.1, seed=seed, **s2), test_acc=dense, spe=60.0, frac=1.0,
                  suite_dir="adhoc")
        write_run(root, None, make_cfg(mask="norm_only", rho=0.1, seed=seed, **s2), test_acc=norm,
                  spe=33.0, frac=0.002, suite_dir="adhoc")
    return root


def sample_std(xs) -> float:
    m = sum(xs) / len(xs)
    return math.sqrt(sum((x - m) ** 2 for x in xs) / (len(xs) - 1))


def sharpness_block(eig: float, seed: int) -> dict:
    """A result.json["sharpness"] block shaped like bench.measure.sharpness writes it (hand-made values)."""
    jitter = 0.01 * seed
    return {"hessian_max_eig": eig + jitter, "hessian_trace": 10 * eig, "hessian_max_eig_norm": eig / 10,
            "hessian_trace_norm": eig / 2, "msharp_linf_adaptive_rho0.003": 0.05 * eig + jitter,
            "msharp_l2_standard_rho0.25": 0.2 * eig,
            "time_s": {"hessian_max_eig": 1.5, "msharp_linf_adaptive_rho0.003": 2.0},
            "details": {"hessian_trace_stderr": 0.1}, "settings": {"n_samples": 1024, "m": 128}}
