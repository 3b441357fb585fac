"""The field table: one row per run-config field, with its default, help line, choices and check.

Everything else is derived from :data:`FIELDS`: the defaults (``EXPERIMENT``, ``RUNTIME``), the
help lines (``FIELD_HELP``), the choices (``CHOICES``), the checks :func:`bench.config.validate`
runs, the ``sambench train`` flags (bench.cli.flags) and docs/config.md.

``experiment`` rows define the experiment and go into the run id; runtime rows (where data
lives, which device, logging) do not, so moving a run between machines keeps its identity.
``id_omits_default``: a field added after run ids existed, left out of the id while at its
default, so every earlier run keeps its id.

A new field is one row here (see docs/config.md, "Adding a field").
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from bench.config import checks, optimizers
from bench.config.checks import Check
from bench.loggers.settings import DEFAULTS as LOGGING_DEFAULTS

MAX_PROCESSES = 65_536
MAX_EPOCHS = 100_000
MAX_VAL_SPLIT = 0.9   # at least a tenth of the training set trains


@dataclass(frozen=True)
class Field:
    name: str
    default: Any
    help: str
    check: Check | None = None     # check(value, field) raises ConfigError; default from choices / a bool
    choices: tuple | None = None
    experiment: bool = True        # False: a runtime field (not in the run id)
    id_omits_default: bool = False

    def checker(self) -> Check | None:
        if self.check is not None:
            return self.check
        if self.choices is not None:
            return checks.one_of(self.choices)
        if isinstance(self.default, bool):
            return checks.boolean
        return None


def _rows(*rows: Field) -> dict[str, Field]:
    return {row.name: row for row in rows}


FIELDS: dict[str, Field] = _rows(
    # --- the experiment (in the run id) ---
    Field("dataset", "digits", "data set (`sambench list datasets`)", checks.dataset_name),
    Field("model", "resnet20", "architecture (`sambench list models`, or timm:<name>)", checks.model_name),
    Field("variant", "sam", "SAM variant, or none for the plain base optimizer (`sambench list variants`)",
          checks.variant_name),
    Field("variant_opts", {}, "options of the variant, e.g. {p: inf} or {adaptive: layerwise, eta: 0.01} "
          "(`sambench list variants`)", checks.mapping),
    Field("mask", "all", "mask strategy: which parameters the ascent step perturbs, or none for the plain "
          "base optimizer (`sambench list masks`)", checks.mask_name),
    Field("sparsity", None, "fraction of parameter elements NOT perturbed, in [0, 1), or match:<mask>, for masks "
          "that take one", checks.sparsity),
    Field("mask_opts", {}, "options of the mask strategy, e.g. {num_samples: 128, update_every: 1} "
          "(`sambench list masks`)", checks.mapping),
    Field("rho", 0.05, "perturbation radius", checks.number(0)),
    Field("rho_norm", "subset", "gradient norm over the perturbed entries (subset, SAM-ON) or over all (full, SSAM)",
          choices=("subset", "full")),
    Field("freeze_bn_second", False, "do not update BatchNorm running statistics in SAM's second pass"),
    Field("epochs", 10, "training epochs", checks.integer(1, MAX_EPOCHS)),
    Field("batch_size", 128, "global batch size", checks.integer(1)),
    Field("base", optimizers.start(optimizers.DEFAULT), "base optimizer and its options (docs/config.md: "
          "each optimizer's defaults)", optimizers.check_base),
    Field("schedule", "cosine", "learning-rate schedule after the warm-up", choices=("cosine", "constant")),
    Field("warmup_epochs", 0, "epochs of linear learning-rate warm-up", checks.integer(0)),
    Field("label_smoothing", 0.1, "label smoothing of the training loss, in [0, 1)", checks.fraction()),
    Field("augment", True, "random crop and flip of the training images"),
    Field("amp", "none", "mixed precision on CUDA: bf16 autocast, or fp16 autocast with a loss scaler",
          choices=("none", "bf16", "fp16")),
    Field("channels_last", False, "channels-last memory format"),
    Field("label_noise", 0.0, "fraction of training labels replaced by wrong ones, in [0, 1)",
          checks.fraction("a fraction "), id_omits_default=True),
    Field("label_noise_type", "symmetric", "symmetric (a uniformly drawn other class) or asymmetric "
          "(class c -> c+1 mod K)", choices=("symmetric", "asymmetric"), id_omits_default=True),
    Field("val_split", 0.0, "fraction of the training set held out for validation, stratified by class and "
          "drawn with the seed, in [0, 0.9]; or folder (the data set's own val/ folder: --set val_split=folder)",
          checks.val_split(MAX_VAL_SPLIT), id_omits_default=True),
    Field("val_noisy", False, "the held-out validation labels get the label noise too (else they stay clean)",
          id_omits_default=True),
    Field("seed", 0, "random seed (data order, augmentation, initialization, random masks)", checks.integer(0)),
    Field("ascent", "synced", "across processes: synced (the one-process perturbation of the global batch) or "
          "local (each process its own shard's: m-sharpness with m = batch_size / processes)",
          choices=("synced", "local"), id_omits_default=True),
    Field("sync_bn", True, "across processes: BatchNorm statistics over the global batch (SyncBatchNorm, CUDA)",
          id_omits_default=True),
    Field("accumulate", 1, "batches of batch_size per optimizer step (gradient accumulation)", checks.integer(1),
          id_omits_default=True),
    # --- runtime (not in the run id) ---
    Field("device", "auto", "auto, cpu, cuda or cuda:N", checks.device, experiment=False),
    Field("data_root", None, "folder holding the data sets", checks.path_or_none, experiment=False),
    Field("download", False, "download the data set if it is missing", experiment=False),
    Field("eval_batch_size", 1024, "batch size for evaluation", checks.integer(1), experiment=False),
    Field("log_every", 50, "steps between progress updates (no per-step host sync)", checks.integer(1),
          experiment=False),
    Field("compile", False, "torch.compile the model", experiment=False),
    Field("compile_step", False, "run SAM steps through bench.engine.fast_step: fused update, whole step under "
          "torch.compile (sam and asam; other steps run the reference)", experiment=False),
    Field("save_gamma", True, "store the final norm-layer weights in result.json", experiment=False),
    Field("logging", dict(LOGGING_DEFAULTS), "loggers: tensorboard, wandb, mlflow (bench.loggers)",
          checks.logging_block, experiment=False),
    Field("sharpness", None, "measure sharpness after training: {} or options (bench.measure.sharpness)",
          checks.sharpness_block, experiment=False),
    Field("nproc", 1, "processes per node (one per GPU); batch_size is the global batch",
          checks.integer(1, MAX_PROCESSES), experiment=False),
    Field("nodes", 1, "nodes (SLURM suites, torchrun); world size = nproc x nodes",
          checks.integer(1, MAX_PROCESSES), experiment=False),
    Field("data_workers", None, "DataLoader workers per process for image-folder data (default: cores / nproc, "
          "at most 8)", checks.integer(0, none_ok=True), experiment=False),
)

# --- derived (read these; edit the rows) ----------------------------------------------------------

EXPERIMENT: dict[str, Any] = {f.name: f.default for f in FIELDS.values() if f.experiment}
RUNTIME: dict[str, Any] = {f.name: f.default for f in FIELDS.values() if not f.experiment}
ID_OMITS_DEFAULT: tuple[str, ...] = tuple(f.name for f in FIELDS.values() if f.id_omits_default)
CHOICES: dict[str, list] = {f.name: list(f.choices) for f in FIELDS.values() if f.choices}
FIELD_HELP: dict[str, str] = {**{f.name: f.help for f in FIELDS.values()},
                              "base.name": "base optimizer",
                              **{f"base.{k}": h for k, h in optimizers.HELP.items()}}
OPTION_MAPS = ("base", "variant_opts", "mask_opts", "logging")  # mappings merged field by field


def field_checks() -> list[tuple[str, Check]]:
    """(field, check) of every row with a check, in table order."""
    return [(f.name, f.checker()) for f in FIELDS.values() if f.checker() is not None]
