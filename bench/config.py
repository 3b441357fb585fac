"""The run config: one flat-ish dict that fully defines a training run.

``EXPERIMENT`` fields define the experiment and go into the run id; ``RUNTIME`` fields
(where data lives, which device, logging) do not, so moving a run between machines does
not change its identity.
"""
from __future__ import annotations

import copy
import hashlib
import json
from typing import Any

EXPERIMENT: dict[str, Any] = {
    "dataset": "digits",
    "model": "resnet20",
    "variant": "sam",          # none | sam | asam  (bench.sam.VARIANTS)
    "variant_opts": {},        # e.g. {p: inf} or {adaptive: layerwise, eta: 0.01, normalize_bias: true}
    "mask": "all",             # masks.list_masks()
    "sparsity": None,          # float in [0, 1) or "match:<mask>", for masks that take one
    "mask_opts": {},           # strategy options, e.g. {num_samples: 128, update_every: 1}
    "rho": 0.05,
    "rho_norm": "subset",      # subset (SAM-ON) | full (SSAM)
    "freeze_bn_second": False,  # BatchNorm running stats not updated in the second pass
    "epochs": 10,
    "batch_size": 128,
    "base": {"name": "sgd", "lr": 0.1, "momentum": 0.9, "weight_decay": 5e-4, "nesterov": False},
    "schedule": "cosine",      # cosine | constant
    "warmup_epochs": 0,
    "label_smoothing": 0.1,
    "augment": True,
    "amp": "none",             # none | bf16 (autocast on CUDA)
    "channels_last": False,
    "label_noise": 0.0,        # fraction of training labels replaced (bench.data.noisy_labels)
    "label_noise_type": "symmetric",  # symmetric | asymmetric (class c -> c+1 mod K)
    "seed": 0,
}
# experiment fields left out of the run id while they hold these values (no label noise), so
# the ids of runs made before the fields existed do not change
ID_OMITTED_AT_DEFAULT = {"label_noise": 0.0, "label_noise_type": "symmetric"}

RUNTIME: dict[str, Any] = {
    "device": "auto",          # auto | cpu | cuda | cuda:N
    "data_root": None,
    "download": False,
    "eval_batch_size": 1024,
    "log_every": 50,           # steps between progress updates (no per-step host sync)
    "compile": False,
    "save_gamma": True,        # store final norm-layer weights in result.json
    "sharpness": None,         # {} or options: measure sharpness after training (bench.sharpness)
}

BASE_OPTIMIZERS = {
    "sgd": {"lr", "momentum", "weight_decay", "nesterov"},
    "adamw": {"lr", "weight_decay", "betas", "eps"},
}
CHOICES = {
    "rho_norm": ["subset", "full"],
    "schedule": ["cosine", "constant"],
    "amp": ["none", "bf16"],
}


class ConfigError(ValueError):
    """A bad config value. ``field`` is the dotted path, ``allowed`` what would be accepted."""

    def __init__(self, field: str, message: str, allowed: Any = None, source: str | None = None):
        self.field, self.message, self.allowed, self.source = field, message, allowed, source
        super().__init__(self.render())

    def render(self) -> str:
        where = f"{self.source}: " if self.source else ""
        text = f"{where}{self.field}: {self.message}"
        if self.allowed is not None:
            allowed = ", ".join(map(str, self.allowed)) if isinstance(self.allowed, (list, tuple)) else self.allowed
            text += f" (allowed: {allowed})"
        return text

    def with_source(self, source: str, prefix: str = "") -> "ConfigError":
        field = f"{prefix}{self.field}" if prefix else self.field
        return ConfigError(field, self.message, self.allowed, source)


def default_config() -> dict[str, Any]:
    return {**copy.deepcopy(EXPERIMENT), **copy.deepcopy(RUNTIME)}


def set_path(cfg: dict, dotted: str, value: Any) -> None:
    """``set_path(cfg, "base.lr", 0.05)``; creates nested dicts for option maps."""
    keys = dotted.split(".")
    node = cfg
    for k in keys[:-1]:
        if not isinstance(node.get(k), dict):
            node[k] = {}
        node = node[k]
    node[keys[-1]] = value


def resolve(overrides: dict[str, Any]) -> dict[str, Any]:
    """Defaults + overrides (dotted keys or nested dicts) -> a full run config (validated)."""
    cfg = default_config()
    for key, value in overrides.items():
        if isinstance(value, dict) and key in ("base", "variant_opts", "mask_opts"):
            if key == "base" and value.get("name", cfg["base"]["name"]) != cfg["base"]["name"]:
                cfg["base"] = {"name": value["name"]}  # another optimizer: drop SGD's fields
            for k, v in value.items():
                set_path(cfg, f"{key}.{k}", v)
        else:
            set_path(cfg, key, value)
    validate(cfg)
    return cfg


def experiment_part(cfg: dict[str, Any]) -> dict[str, Any]:
    part = {k: cfg[k] for k in EXPERIMENT}
    if not part.get("label_noise"):  # no noise: the noise type changes nothing
        for k in ID_OMITTED_AT_DEFAULT:
            part.pop(k, None)
    return part


def run_id(cfg: dict[str, Any]) -> str:
    """Short hash of the canonical experiment config (runtime fields excluded)."""
    canon = json.dumps(experiment_part(cfg), sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha1(canon.encode()).hexdigest()[:12]


# --- validation ----------------------------------------------------------------------------

def _is_num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def validate(cfg: dict[str, Any]) -> None:
    """Raise ConfigError on the first bad field. Registries are imported lazily."""
    from bench import registries

    registries.load()
    allowed_keys = list(EXPERIMENT) + list(RUNTIME)
    for key in cfg:
        if key not in allowed_keys:
            raise ConfigError(key, "unknown key", sorted(allowed_keys))

    for key, reg in (("dataset", registries.DATASETS), ("model", None), ("variant", registries.VARIANTS)):
        value = cfg[key]
        if not isinstance(value, str):
            raise ConfigError(key, f"must be a name, got {value!r}",
                              registries.names(key))
        if key == "model":
            if not registries.model_exists(value):
                raise ConfigError(key, f"unknown model {value!r}", registries.names("model") + ["timm:<name>"])
        elif value not in reg:
            raise ConfigError(key, f"unknown {key} {value!r}", reg.names())

    import masks

    if not isinstance(cfg["mask"], str) or cfg["mask"] not in masks.list_masks() + ["none"]:
        raise ConfigError("mask", f"unknown mask {cfg['mask']!r}", masks.list_masks() + ["none"])

    for key in ("variant_opts", "mask_opts"):
        if not isinstance(cfg[key], dict):
            raise ConfigError(key, f"must be a mapping, got {cfg[key]!r}")

    rho = cfg["rho"]
    if not _is_num(rho) or rho < 0:
        raise ConfigError("rho", f"must be a number >= 0, got {rho!r}")
    for key in ("epochs", "batch_size", "eval_batch_size", "log_every"):
        if not _is_int(cfg[key]) or cfg[key] < 1:
            raise ConfigError(key, f"must be an integer >= 1, got {cfg[key]!r}")
    for key in ("seed", "warmup_epochs"):
        if not _is_int(cfg[key]) or cfg[key] < 0:
            raise ConfigError(key, f"must be an integer >= 0, got {cfg[key]!r}")
    if not _is_num(cfg["label_smoothing"]) or not 0 <= cfg["label_smoothing"] < 1:
        raise ConfigError("label_smoothing", f"must be in [0, 1), got {cfg['label_smoothing']!r}")
    for key, choices in CHOICES.items():
        if cfg[key] not in choices:
            raise ConfigError(key, f"got {cfg[key]!r}", choices)
    for key in ("freeze_bn_second", "augment", "channels_last", "download", "compile", "save_gamma"):
        if not isinstance(cfg[key], bool):
            raise ConfigError(key, f"must be true or false, got {cfg[key]!r}", [True, False])
    if cfg["data_root"] is not None and not isinstance(cfg["data_root"], str):
        raise ConfigError("data_root", f"must be a path, got {cfg['data_root']!r}")
    if not isinstance(cfg["device"], str) or not (
        cfg["device"] in ("auto", "cpu", "cuda") or cfg["device"].startswith("cuda:")
    ):
        raise ConfigError("device", f"got {cfg['device']!r}", ["auto", "cpu", "cuda", "cuda:N"])

    base = cfg["base"]
    if not isinstance(base, dict) or base.get("name") not in BASE_OPTIMIZERS:
        got = base.get("name") if isinstance(base, dict) else base
        raise ConfigError("base.name", f"unknown base optimizer {got!r}", sorted(BASE_OPTIMIZERS))
    for k, v in base.items():
        if k == "name":
            continue
        if k not in BASE_OPTIMIZERS[base["name"]]:
            raise ConfigError(f"base.{k}", f"not an option of {base['name']}",
                              sorted(BASE_OPTIMIZERS[base["name"]]))
        if k == "nesterov" and not isinstance(v, bool):
            raise ConfigError("base.nesterov", f"must be true or false, got {v!r}")
        if k == "betas" and not (isinstance(v, (list, tuple)) and len(v) == 2 and all(map(_is_num, v))):
            raise ConfigError("base.betas", f"must be two numbers, got {v!r}")
        if k in ("lr", "momentum", "weight_decay", "eps") and (not _is_num(v) or v < 0):
            raise ConfigError(f"base.{k}", f"must be a number >= 0, got {v!r}")

    validate_science_fields(cfg)

    # variant and mask options: checked by constructing them (their signatures are the schema)
    from bench.sam import check_variant_opts

    try:
        check_variant_opts(cfg["variant"], cfg["variant_opts"])
    except (TypeError, ValueError) as exc:
        bad = next((k for k in cfg["variant_opts"] if str(exc).startswith(f"{k}=")), None)
        raise ConfigError(f"variant_opts.{bad}" if bad else "variant_opts", str(exc)) from None
    try:
        make_mask(cfg)
    except (TypeError, ValueError) as exc:
        field = "sparsity" if "sparsity" in str(exc) else "mask_opts"
        raise ConfigError(field, str(exc)) from None


def validate_science_fields(cfg: dict[str, Any]) -> None:
    """label_noise, label_noise_type and the sharpness block (its options: bench.sharpness)."""
    from bench.data import LABEL_NOISE_TYPES
    from bench.sharpness import SettingsError, check_settings

    noise = cfg["label_noise"]
    if not _is_num(noise) or not 0 <= noise < 1:
        raise ConfigError("label_noise", f"must be a fraction in [0, 1), got {noise!r}")
    if cfg["label_noise_type"] not in LABEL_NOISE_TYPES:
        raise ConfigError("label_noise_type", f"got {cfg['label_noise_type']!r}", list(LABEL_NOISE_TYPES))
    try:
        check_settings(cfg["sharpness"])
    except SettingsError as exc:
        raise ConfigError(f"sharpness{exc.field}", exc.message, exc.allowed) from None


def make_mask(cfg: dict[str, Any], seed: int | None = None):
    """The run's mask strategy (a ``masks.Mask``), or ``"none"`` for the plain-optimizer baselines."""
    import masks

    if cfg["variant"] == "none" or cfg["mask"] == "none":
        return "none"
    kwargs = dict(cfg["mask_opts"])
    if cfg["sparsity"] is not None:
        kwargs["sparsity"] = cfg["sparsity"]
    return masks.create_mask(cfg["mask"], seed=cfg["seed"] if seed is None else seed, **kwargs)
