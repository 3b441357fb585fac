"""The run config: one flat-ish dict that fully defines a training run.

``EXPERIMENT`` fields define the experiment and go into the run id; ``RUNTIME`` fields
(where data lives, which device, logging) do not, so moving a run between machines does
not change its identity.

:func:`resolve` = defaults + overrides, then :func:`validate` (the list ``STEPS`` of small
named checks, run in order; the first problem raises :class:`ConfigError` with the field
path as data), then the canonical form: variant options equal to the variant's defaults
are dropped, so ``{}`` and ``{p: 2}`` are one experiment with one run id.

A new field is two lines in one place: its default in ``EXPERIMENT`` or ``RUNTIME``, and
a ``@step`` function below that checks it (plus a help line in ``FIELD_HELP``: its
``sambench train`` flag is generated from the config, bench.cli.flags).
"""
from __future__ import annotations

import copy
import hashlib
import json
import math
from collections.abc import Callable
from typing import Any

from bench.errors import InvalidInput, did_you_mean, show

EXPERIMENT: dict[str, Any] = {
    "dataset": "digits",
    "model": "resnet20",
    "variant": "sam",          # a registered SAM variant (sambench list variants), or none
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
    "amp": "none",             # none | bf16 (autocast on CUDA) | fp16 (autocast on CUDA + loss scaler)
    "channels_last": False,
    "label_noise": 0.0,        # fraction of training labels replaced (bench.data.datasets.noisy_labels)
    "label_noise_type": "symmetric",  # symmetric | asymmetric (class c -> c+1 mod K)
    "val_split": 0.0,          # fraction of the training set held out for validation (bench.data.split), or folder
    "val_noisy": False,        # the held-out part's labels get the label noise too (else they stay clean)
    "seed": 0,
    "ascent": "synced",        # across processes: synced (ascent gradient averaged: the one-process
                               # perturbation of the global batch) | local (each process perturbs with
                               # its own shard's gradient: m-sharpness with m = batch_size / processes)
    "sync_bn": True,           # across processes: BatchNorm statistics over the global batch (SyncBatchNorm, CUDA)
    "accumulate": 1,           # micro-batches of batch_size per optimizer step (gradient accumulation)
}
# fields added after run ids existed: left out of the run id while at their default, so every
# earlier run keeps its id (and the noise type while there is no label noise: it changes nothing)
ID_OMITS_DEFAULT = ("label_noise", "label_noise_type", "ascent", "sync_bn", "accumulate", "val_split", "val_noisy")

RUNTIME: dict[str, Any] = {
    "device": "auto",          # auto | cpu | cuda | cuda:N
    "data_root": None,
    "download": False,
    "eval_batch_size": 1024,
    "log_every": 50,           # steps between progress updates (no per-step host sync)
    "compile": False,
    "compile_step": False,     # the SAM step fused and under torch.compile (bench.engine.fast_step)
    "save_gamma": True,        # store final norm-layer weights in result.json
    "logging": {"tensorboard": True, "wandb": False, "mlflow": False},  # bench.loggers
    "sharpness": None,         # {} or options: measure sharpness after training (bench.measure.sharpness)
    "nproc": 1,                # processes per node (one per GPU); batch_size is the global batch
    "nodes": 1,                # nodes (SLURM suites, torchrun); world size = nproc x nodes
    "data_workers": None,      # DataLoader workers per process for image-folder data (null: cores / nproc, <= 8)
}

# one help line per field (the `sambench train` flags and their --help come from these)
FIELD_HELP: dict[str, str] = {
    "dataset": "data set (`sambench list datasets`)",
    "model": "architecture (`sambench list models`, or timm:<name>)",
    "variant": "SAM variant, or none for the plain base optimizer (`sambench list variants`)",
    "mask": "mask strategy: which parameters the ascent step perturbs (`sambench list masks`)",
    "sparsity": "fraction of parameter elements NOT perturbed, in [0, 1), or match:<mask>, for masks that take one",
    "rho": "perturbation radius",
    "rho_norm": "gradient norm over the perturbed entries (subset, SAM-ON) or over all (full, SSAM)",
    "freeze_bn_second": "do not update BatchNorm running statistics in SAM's second pass",
    "epochs": "training epochs",
    "batch_size": "global batch size",
    "base.name": "base optimizer",
    "base.lr": "learning rate (peak, before the schedule)",
    "base.momentum": "SGD momentum",
    "base.weight_decay": "weight decay (decoupled for adamw and lion)",
    "base.nesterov": "Nesterov momentum",
    "base.betas": "moment coefficients beta1,beta2",
    "base.eps": "AdamW epsilon",
    "schedule": "learning-rate schedule after the warm-up",
    "warmup_epochs": "epochs of linear learning-rate warm-up",
    "label_smoothing": "label smoothing of the training loss, in [0, 1)",
    "augment": "random crop and flip of the training images",
    "amp": "mixed precision on CUDA: bf16 autocast, or fp16 autocast with a loss scaler",
    "ascent": "across processes: synced (the one-process perturbation of the global batch) or local "
              "(each process its own shard's: m-sharpness with m = batch_size / processes)",
    "sync_bn": "across processes: BatchNorm statistics over the global batch (SyncBatchNorm, CUDA)",
    "accumulate": "batches of batch_size per optimizer step (gradient accumulation)",
    "nproc": "processes per node (one per GPU); batch_size is the global batch",
    "nodes": "nodes (SLURM suites, torchrun); world size = nproc x nodes",
    "data_workers": "DataLoader workers per process for image-folder data (default: cores / nproc, at most 8)",
    "channels_last": "channels-last memory format",
    "label_noise": "fraction of training labels replaced by wrong ones, in [0, 1)",
    "label_noise_type": "symmetric (a uniformly drawn other class) or asymmetric (class c -> c+1 mod K)",
    "val_split": "fraction of the training set held out for validation, stratified by class and drawn with the "
                 "seed, in [0, 0.9]; or folder (the data set's own val/ folder: --set val_split=folder)",
    "val_noisy": "the held-out validation labels get the label noise too (else they stay clean)",
    "seed": "random seed (data order, augmentation, initialization, random masks)",
    "device": "auto, cpu, cuda or cuda:N",
    "data_root": "folder holding the data sets",
    "download": "download the data set if it is missing",
    "eval_batch_size": "batch size for evaluation",
    "log_every": "steps between progress updates",
    "compile": "torch.compile the model",
    "compile_step": "run SAM steps through bench.engine.fast_step: fused update, whole step under torch.compile "
                    "(sam and asam; other steps run the reference)",
    "save_gamma": "store the final norm-layer weights in result.json",
    "logging": "loggers: tensorboard, wandb, mlflow (bench.loggers)",
    "sharpness": "measure sharpness after training: {} or options (bench.measure.sharpness)",
}

OPTION_MAPS = ("base", "variant_opts", "mask_opts", "logging")  # merged field by field
BASE_OPTIMIZERS = {
    "sgd": {"lr", "momentum", "weight_decay", "nesterov"},
    "adamw": {"lr", "weight_decay", "betas", "eps"},
    "lion": {"lr", "weight_decay", "betas"},     # lion-pytorch's Lion (Chen et al. 2023)
}
CHOICES = {
    "rho_norm": ["subset", "full"],
    "schedule": ["cosine", "constant"],
    "amp": ["none", "bf16", "fp16"],
    "ascent": ["synced", "local"],
}
FLAGS = ("freeze_bn_second", "augment", "channels_last", "download", "compile", "compile_step", "save_gamma",
         "sync_bn", "val_noisy")
MAX_PROCESSES = 65_536
MAX_EPOCHS = 100_000
MAX_VAL_SPLIT = 0.9   # at least a tenth of the training set trains


class ConfigError(InvalidInput):
    """A bad config value. ``field`` is the dotted path, ``allowed`` what would be accepted."""

    def __init__(self, field: str, message: str, allowed: Any = None, source: str | None = None):
        super().__init__(message, field=field, allowed=allowed, source=source)

    def with_source(self, source: str, prefix: str = "") -> ConfigError:
        """The same error, addressed as ``<source>: <prefix><field>``."""
        return ConfigError(f"{prefix}{self.field}", self.message, self.allowed, source)


# --- the config ------------------------------------------------------------------------------

_IMMUTABLE = (str, int, float, bool, type(None))


def plain_copy(value: Any) -> Any:
    """A deep copy of JSON-like data (dicts, lists, scalars); much faster than copy.deepcopy."""
    if type(value) in _IMMUTABLE:
        return value
    if isinstance(value, dict):
        return {k: v if type(v) in _IMMUTABLE else plain_copy(v) for k, v in value.items()}
    if isinstance(value, list):
        return [v if type(v) in _IMMUTABLE else plain_copy(v) for v in value]
    return copy.deepcopy(value)


def default_config() -> dict[str, Any]:
    return plain_copy({**EXPERIMENT, **RUNTIME})


def is_baseline(cfg: dict[str, Any]) -> bool:
    """A plain base-optimizer run (no SAM): variant none, or mask none."""
    return cfg["variant"] == "none" or cfg["mask"] == "none"


def describe(cfg: dict[str, Any]) -> str:
    """One line naming a run's experiment (for logs and reports)."""
    if is_baseline(cfg):
        what = f"{cfg['base']['name']} (no SAM)"
    else:
        opts = ",".join(f"{k}={v}" for k, v in sorted(cfg["variant_opts"].items()))
        sparsity = "" if cfg["sparsity"] is None else f" sparsity={cfg['sparsity']}"
        mopts = ",".join(f"{k}={v}" for k, v in sorted(cfg["mask_opts"].items()))
        what = (f"{cfg['variant']}{f'({opts})' if opts else ''} mask={cfg['mask']}{f'({mopts})' if mopts else ''}"
                f"{sparsity} rho={cfg['rho']}")
    return f"{cfg['dataset']}/{cfg['model']} {what} seed={cfg['seed']}"


def set_path(cfg: dict, dotted: str, value: Any) -> None:
    """``set_path(cfg, "base.lr", 0.05)``; creates nested dicts for option maps."""
    keys = dotted.split(".")
    node = cfg
    for k in keys[:-1]:
        if not isinstance(node.get(k), dict):
            node[k] = {}
        node = node[k]
    node[keys[-1]] = value


def merge(overrides: dict[str, Any]) -> dict[str, Any]:
    """Defaults + overrides (dotted keys or nested dicts), not yet validated."""
    cfg = default_config()
    for key, value in overrides.items():
        if isinstance(value, dict) and key in OPTION_MAPS:
            if key == "base" and value.get("name", cfg["base"]["name"]) != cfg["base"]["name"]:
                cfg["base"] = {"name": value["name"]}  # another optimizer: drop SGD's fields
            for k, v in value.items():
                set_path(cfg, f"{key}.{k}", v)
        else:
            set_path(cfg, key, value)
    return cfg


def resolve(overrides: dict[str, Any]) -> dict[str, Any]:
    """Defaults + overrides -> a full, validated, canonical run config."""
    cfg = merge(overrides)
    validate(cfg)
    cfg["variant_opts"] = canonical_variant_opts(cfg["variant"], cfg["variant_opts"])
    return cfg


def world_size(cfg: dict[str, Any]) -> int:
    """Processes a run spans: nproc x nodes."""
    return int(cfg["nproc"]) * int(cfg["nodes"])


def world_changes_result(cfg: dict[str, Any]) -> bool:
    """Whether the number of processes changes what a run computes: a local ascent perturbs with
    batch_size / world samples, and BatchNorm without sync_bn normalizes over them (sync_bn false
    counts whether or not the model has BatchNorm). A synced run is the one-process run."""
    return world_size(cfg) > 1 and (cfg["ascent"] == "local" or not cfg["sync_bn"])


def experiment_part(cfg: dict[str, Any]) -> dict[str, Any]:
    """What the run id hashes: the experiment fields (those of ID_OMITS_DEFAULT only when not at
    their default; the noise type only with label noise), and ``world_size`` when it changes the
    result."""
    part = {k: cfg[k] for k in EXPERIMENT
            if not (k in ID_OMITS_DEFAULT and _same_value(cfg.get(k, EXPERIMENT[k]), EXPERIMENT[k]))}
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


# --- variant options -------------------------------------------------------------------------

def _same_value(value: Any, default: Any) -> bool:
    if _is_num(value) and _is_num(default):
        return value == default
    return type(value) is type(default) and value == default


def canonical_variant_opts(variant: str, opts: dict[str, Any]) -> dict[str, Any]:
    """The options that differ from the variant's defaults (the form that goes into the run id)."""
    from bench.registries import variant_options

    defaults = variant_options(variant)
    return {k: v for k, v in opts.items() if not (k in defaults and _same_value(v, defaults[k]))}


def variant_options(cfg: dict[str, Any]) -> dict[str, Any]:
    """Every option of the run's variant, defaults filled in (stored beside the config)."""
    from bench.registries import variant_options as defaults_of

    return {**defaults_of(cfg["variant"]), **cfg["variant_opts"]}


def make_mask(cfg: dict[str, Any], seed: int | None = None):
    """The run's mask strategy (a ``masks.Mask``), or ``"none"`` for the plain-optimizer baselines."""
    import masks

    if is_baseline(cfg):
        return "none"
    kwargs = dict(cfg["mask_opts"])
    if cfg["sparsity"] is not None:
        kwargs["sparsity"] = cfg["sparsity"]
    return masks.create_mask(cfg["mask"], seed=cfg["seed"] if seed is None else seed, **kwargs)


# --- validation: small named steps, in order ----------------------------------------------------

STEPS: list[Callable[[dict[str, Any]], None]] = []


def step(fn: Callable[[dict[str, Any]], None]) -> Callable[[dict[str, Any]], None]:
    """Add a check to ``STEPS`` (run by :func:`validate` in definition order)."""
    STEPS.append(fn)
    return fn


def validate(cfg: dict[str, Any]) -> None:
    """Raise ConfigError on the first bad field."""
    for check in STEPS:
        check(cfg)


def _is_num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _require_int(cfg: dict, key: str, low: int, high: int | None = None) -> None:
    v = cfg[key]
    if not _is_int(v) or v < low or (high is not None and v > high):
        bound = f"an integer >= {low}" + (f" and <= {high:,}" if high is not None else "")
        raise ConfigError(key, f"must be {bound}, got {show(v)}")


@step
def _keys(cfg: dict) -> None:
    allowed = list(EXPERIMENT) + list(RUNTIME)
    for key in cfg:
        if key not in allowed:
            raise ConfigError(str(key), f"unknown key{did_you_mean(key, allowed)}", sorted(allowed))


def _non_finite(value: Any) -> tuple[str, float] | None:
    """(path as ``.key`` / ``[i]`` parts, value) of a NaN or infinity inside value, or None."""
    if isinstance(value, float):
        return None if math.isfinite(value) else ("", value)
    items = value.items() if isinstance(value, dict) else (
        enumerate(value) if isinstance(value, (list, tuple)) else ())
    for k, v in items:
        if isinstance(v, (float, dict, list, tuple)):
            found = _non_finite(v)
            if found is not None:
                return (f"[{k}]" if isinstance(k, int) else f".{k}") + found[0], found[1]
    return None


@step
def _finite(cfg: dict) -> None:
    """No NaN or infinity anywhere: JSON cannot store them, so the run would change on disk."""
    found = _non_finite(cfg)
    if found is not None:
        path = found[0][1:]
        hint = "; an option that takes infinity spells it 'inf'" if "." in path else ""
        raise ConfigError(path, f"must be a finite number, got {found[1]}{hint}")


@step
def _dataset(cfg: dict) -> None:
    from bench.registries import DATASETS

    if not isinstance(cfg["dataset"], str) or cfg["dataset"] not in DATASETS:
        raise ConfigError("dataset", f"unknown dataset {show(cfg['dataset'])}"
                                     f"{did_you_mean(cfg['dataset'], DATASETS.names())}", DATASETS.names())


@step
def _model(cfg: dict) -> None:
    from bench.registries import UnknownNameError, parse_model_name

    try:
        parse_model_name(cfg["model"])
    except UnknownNameError as exc:
        names = [a for a in exc.allowed if "<" not in a]  # not the patterns (wrn<depth>_<width>)
        raise ConfigError("model", f"unknown {exc.kind} {show(exc.name)}{did_you_mean(exc.name, names)}",
                          exc.allowed) from None


@step
def _variant(cfg: dict) -> None:
    from bench.registries import VARIANTS
    from masks.registry import plugin_hint

    if not isinstance(cfg["variant"], str) or cfg["variant"] not in VARIANTS:
        raise ConfigError("variant", f"unknown variant {show(cfg['variant'])}"
                                     f"{did_you_mean(cfg['variant'], VARIANTS.names())}; "
                                     f"{plugin_hint('variant', VARIANTS.plugin_env)}", VARIANTS.names())


@step
def _mask(cfg: dict) -> None:
    import masks
    from masks.base import MASKS
    from masks.registry import plugin_hint

    masks.load_all()
    if not isinstance(cfg["mask"], str) or (cfg["mask"] != "none" and cfg["mask"] not in MASKS):
        allowed = masks.list_masks() + ["none"]
        raise ConfigError("mask", f"unknown mask {show(cfg['mask'])}{did_you_mean(cfg['mask'], allowed)}; "
                                  f"{plugin_hint('mask', MASKS.plugin_env)}", allowed)


@step
def _option_maps(cfg: dict) -> None:
    for key in ("variant_opts", "mask_opts"):
        if not isinstance(cfg[key], dict):
            raise ConfigError(key, f"must be a mapping, got {show(cfg[key])}")


@step
def _rho(cfg: dict) -> None:
    if not _is_num(cfg["rho"]) or cfg["rho"] < 0:
        raise ConfigError("rho", f"must be a number >= 0, got {show(cfg['rho'])}")


@step
def _epochs(cfg: dict) -> None:
    _require_int(cfg, "epochs", 1, MAX_EPOCHS)


@step
def _batch_sizes(cfg: dict) -> None:
    for key in ("batch_size", "eval_batch_size", "log_every"):
        _require_int(cfg, key, 1)


@step
def _seed(cfg: dict) -> None:
    _require_int(cfg, "seed", 0)


@step
def _warmup(cfg: dict) -> None:
    _require_int(cfg, "warmup_epochs", 0)


@step
def _label_smoothing(cfg: dict) -> None:
    v = cfg["label_smoothing"]
    if not _is_num(v) or not 0 <= v < 1:
        raise ConfigError("label_smoothing", f"must be in [0, 1), got {show(v)}")


@step
def _choices(cfg: dict) -> None:
    for key, choices in CHOICES.items():
        if cfg[key] not in choices:
            raise ConfigError(key, f"got {show(cfg[key])}", choices)


@step
def _flags(cfg: dict) -> None:
    for key in FLAGS:
        if not isinstance(cfg[key], bool):
            raise ConfigError(key, f"must be true or false, got {show(cfg[key])}", [True, False])


@step
def _data_root(cfg: dict) -> None:
    if cfg["data_root"] is not None and not isinstance(cfg["data_root"], str):
        raise ConfigError("data_root", f"must be a path, got {show(cfg['data_root'])}")


def check_device(value: Any, field: str = "device") -> None:
    """auto, cpu, cuda or cuda:N."""
    ok = isinstance(value, str) and (value in ("auto", "cpu", "cuda")
                                     or (value.startswith("cuda:") and value[5:].isdigit()))
    if not ok:
        raise ConfigError(field, f"got {show(value)}", ["auto", "cpu", "cuda", "cuda:N"])


@step
def _device(cfg: dict) -> None:
    check_device(cfg["device"])


@step
def _base(cfg: dict) -> None:
    base = cfg["base"]
    if not isinstance(base, dict) or base.get("name") not in BASE_OPTIMIZERS:
        got = base.get("name") if isinstance(base, dict) else base
        raise ConfigError("base.name", f"unknown base optimizer {show(got)}{did_you_mean(got, list(BASE_OPTIMIZERS))}",
                          sorted(BASE_OPTIMIZERS))
    options = BASE_OPTIMIZERS[base["name"]]
    for k, v in base.items():
        if k == "name":
            continue
        if k not in options:
            raise ConfigError(f"base.{k}", f"not an option of {base['name']}", sorted(options))
        if k == "nesterov" and not isinstance(v, bool):
            raise ConfigError("base.nesterov", f"must be true or false, got {show(v)}")
        if k == "betas" and not (isinstance(v, (list, tuple)) and len(v) == 2 and all(map(_is_num, v))
                                 and all(0 <= b <= 1 for b in v)):
            raise ConfigError("base.betas", f"must be two numbers in [0, 1], got {show(v)}")
        if k in ("lr", "momentum", "weight_decay", "eps") and (not _is_num(v) or v < 0):
            raise ConfigError(f"base.{k}", f"must be a number >= 0, got {show(v)}")
        if k == "lr" and base["name"] == "lion" and not v > 0:
            raise ConfigError("base.lr", f"must be a number > 0 for lion, got {show(v)}")



@step
def _science(cfg: dict) -> None:
    """label_noise, label_noise_type and the sharpness block (its options: bench.measure.sharpness)."""
    from bench.data.label_noise import LABEL_NOISE_TYPES
    from bench.measure.sharpness import SettingsError, check_settings

    noise = cfg["label_noise"]
    if not _is_num(noise) or not 0 <= noise < 1:
        raise ConfigError("label_noise", f"must be a fraction in [0, 1), got {show(noise)}")
    if cfg["label_noise_type"] not in LABEL_NOISE_TYPES:
        raise ConfigError("label_noise_type", f"got {show(cfg['label_noise_type'])}", list(LABEL_NOISE_TYPES))
    try:
        check_settings(cfg["sharpness"])
    except SettingsError as exc:
        raise ConfigError(f"sharpness{exc.field}", exc.message, exc.allowed) from None

@step
def _validation(cfg: dict) -> None:
    """val_split: a fraction in [0, MAX_VAL_SPLIT], or folder for a data set with a validation folder."""
    from bench.registries import DATASETS

    v = cfg["val_split"]
    if v == "folder":
        if not getattr(DATASETS.get(cfg["dataset"]), "has_val_folder", False):
            raise ConfigError("val_split", f"dataset {cfg['dataset']!r} has no validation folder of its own; "
                                           f"hold out a fraction of its training set (e.g. 0.1)")
    elif not _is_num(v) or not 0 <= v <= MAX_VAL_SPLIT:
        raise ConfigError("val_split", f"must be a fraction in [0, {MAX_VAL_SPLIT}] or folder, got {show(v)}")


@step
def _logging(cfg: dict) -> None:
    """The loggers block (bench.loggers checks it, and that each logger's package is installed)."""
    from bench import loggers

    try:
        loggers.normalize(cfg["logging"])
    except loggers.LoggingError as exc:
        raise ConfigError(exc.field, exc.message, exc.allowed) from None


def _blame(build: Callable[[dict[str, Any]], Any], given: dict[str, Any]) -> str | None:
    """The one given argument without which ``build(given)`` succeeds, or None: a constructor's
    error is put on the field at fault without reading its message."""
    for key in given:
        try:
            build({k: v for k, v in given.items() if k != key})
        except (TypeError, ValueError):
            continue
        return key
    return None


@step
def _variant_opts(cfg: dict) -> None:
    """Checked by constructing the variant: its ``__init__`` signature is the schema."""
    from bench.registries import VARIANTS, variant_options

    name, opts = cfg["variant"], cfg["variant_opts"]
    allowed = list(variant_options(name))
    for key in opts:
        if key not in allowed:
            raise ConfigError("variant_opts", f"variant {name!r} has no option {show(key)}{did_you_mean(key, allowed)}",
                              allowed or "none")
    cls = VARIANTS.get(name)
    try:
        cls(**opts)
    except (TypeError, ValueError) as exc:
        key = _blame(lambda kw: cls(**kw), opts)
        raise ConfigError("variant_opts" if key is None else f"variant_opts.{key}", str(exc)) from None
    except Exception as exc:  # noqa: BLE001 -- a plugin's constructor failing: say which file
        raise _constructor_failed("variant", name, cls, exc) from None


def _constructor_failed(kind: str, name: str, cls: Any, exc: Exception) -> ConfigError:
    """A strategy's or variant's ``__init__`` raising something other than a bad-option error."""
    from masks.registry import source_file

    return ConfigError(kind, f"{kind} {name!r} ({source_file(cls)}): creating it raised "
                             f"{type(exc).__name__}: {exc}")


@step
def _sparsity(cfg: dict) -> None:
    """A number in [0, 1) or ``match:<mask>`` (the mask then says whether it takes one)."""
    from masks.base import check_sparsity

    try:
        check_sparsity(cfg["sparsity"])
    except ValueError as exc:
        raise ConfigError("sparsity", str(exc)) from None


@step
def _mask_opts(cfg: dict) -> None:
    """Checked by constructing the mask (its signature is the schema); the error goes to the
    sparsity or the option without which the mask can be built."""
    import masks

    if is_baseline(cfg):
        return
    allowed = [o for o in masks.mask_options(cfg["mask"]) if o not in ("sparsity", "seed")]
    for key in cfg["mask_opts"]:
        if key not in allowed:
            raise ConfigError(f"mask_opts.{key}", f"mask {cfg['mask']!r} has no option {show(key)}"
                              f"{did_you_mean(key, allowed)}", allowed or "none")
    given = {f"mask_opts.{k}": v for k, v in cfg["mask_opts"].items()}
    if cfg["sparsity"] is not None:
        given["sparsity"] = cfg["sparsity"]

    def build(fields: dict[str, Any]) -> None:
        kwargs = {k.removeprefix("mask_opts."): v for k, v in fields.items()}
        masks.create_mask(cfg["mask"], seed=cfg["seed"], **kwargs)

    try:
        build(given)
    except (TypeError, ValueError) as exc:
        fallback = "mask_opts" if cfg["mask_opts"] else ("sparsity" if cfg["sparsity"] is not None else "mask")
        raise ConfigError(_blame(build, given) or fallback, str(exc)) from None
    except Exception as exc:  # noqa: BLE001 -- a plugin's constructor failing: say which file
        raise _constructor_failed("mask", cfg["mask"], masks.base.MASKS.get(cfg["mask"]), exc) from None


@step
def _processes(cfg: dict) -> None:
    _require_int(cfg, "nproc", 1, MAX_PROCESSES)
    _require_int(cfg, "nodes", 1, MAX_PROCESSES)
    _require_int(cfg, "accumulate", 1)
    workers = cfg["data_workers"]
    if workers is not None and not (_is_int(workers) and workers >= 0):
        raise ConfigError("data_workers", f"must be an integer >= 0 or null, got {show(workers)}")


@step
def _world(cfg: dict) -> None:
    """The global batch splits evenly over the processes, m-sharpness groups stay within one, and
    SyncBatchNorm (CUDA only) is not asked for on CPU."""
    world = world_size(cfg)
    if world == 1:
        return
    if cfg["batch_size"] % world:
        raise ConfigError("batch_size", f"must be divisible by the number of processes (nproc x nodes = "
                                        f"{world}), got {cfg['batch_size']}")
    m = cfg["variant_opts"].get("m")
    per_process = cfg["batch_size"] // world
    if m is not None and per_process % m:
        raise ConfigError("variant_opts.m", f"must divide the per-process batch (batch_size / processes = "
                                            f"{per_process}) so that groups stay within a process, got {m}")
    if cfg["sync_bn"] and cfg["device"] == "cpu" and _has_batchnorm(cfg):
        raise ConfigError("sync_bn", f"{cfg['model']!r} has BatchNorm, and SyncBatchNorm runs on CUDA only: "
                                     f"on CPU set sync_bn: false (BatchNorm statistics per process)", [False])


def _has_batchnorm(cfg: dict) -> bool:
    """Whether the run's model has a BatchNorm layer (built once per model and data set, on the meta device)."""
    from bench.models import has_batchnorm

    return has_batchnorm(cfg["model"], cfg["dataset"])
