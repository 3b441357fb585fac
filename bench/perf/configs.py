"""What ``sambench perf`` times: configurations (variant, mask, options, rho, step kind), the
presets, and ``--configs`` parsing. Each configuration's optimizer is built from a run config
(:meth:`PerfConfig.run_config`) through bench.engine.build, as a training run's is.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from bench import config
from bench.errors import InvalidInput


@dataclass
class PerfConfig:
    label: str
    variant: str
    mask: str
    mask_opts: dict = field(default_factory=dict)
    variant_opts: dict = field(default_factory=dict)
    rho: float = 0.05
    ascent: str = "synced"
    step: str = "reference"   # reference (bench.engine.step.train_step) | fused | compiled (bench.engine.fast_step)

    @property
    def is_loop(self) -> bool:
        """The in-repo loop baseline (:class:`LoopSAM`), not a registered variant."""
        return self.variant == LOOP

    @property
    def perturbs(self) -> bool:
        """A SAM configuration (not the base optimizer alone, not the loop baseline)."""
        return not self.is_loop and config.perturbs(self.variant, self.mask)

    @property
    def is_baseline(self) -> bool:
        """The base optimizer alone (SGD: what the ratios divide by)."""
        return not self.is_loop and not self.perturbs

    def run_config(self, model: str, dataset: str) -> dict:
        """The run config this configuration's optimizer is built from (bench.engine.build): SGD with
        lr 1e-4 (no schedule), the variant, mask and rho, no loggers."""
        mask_opts = dict(self.mask_opts)
        sparsity = mask_opts.pop("sparsity", None)
        return config.resolve({"model": model, "dataset": dataset, "variant": self.variant, "mask": self.mask,
                               "sparsity": sparsity, "mask_opts": mask_opts, "variant_opts": self.variant_opts,
                               "rho": self.rho, "ascent": self.ascent, "logging": {"tensorboard": False},
                               "base": {"name": "sgd", "lr": 1e-4, "momentum": 0.9, "weight_decay": 5e-4}})


LOOP = "loop"   # --configs name of the loop baseline


STEP_KINDS = ("fused", "compiled")  # the suffixes of a --configs item: sam:norm_only:compiled


def with_compiled(configs: list[PerfConfig]) -> list[PerfConfig]:
    """Each SAM configuration followed by the same one through the compiled step (``--compile-step``)."""
    out = []
    for c in configs:
        out.append(c)
        if c.perturbs and c.step == "reference":
            out.append(replace(c, label=f"{c.label} compiled", step="compiled"))
    return out


SGD = PerfConfig("sgd", "none", "none")  # the baseline: the registered none variant and mask


PRESETS = {
    # SGD, the loop baseline, dense SAM, SAM-ON, ASAM-ON, norm layers of blocks 2+3
    "default": [
        SGD,
        PerfConfig("loop_sam", "loop", "all"),
        PerfConfig("sam all", "sam", "all"),
        PerfConfig("sam norm_only", "sam", "norm_only", rho=0.5),
        PerfConfig("asam norm_only", "asam", "norm_only", variant_opts={"adaptive": "elementwise"}, rho=2.0),
        PerfConfig("sam layerwise[2,3]+norm", "sam", "layerwise", mask_opts={"blocks": [2, 3], "norm_only": True},
                   rho=0.5),
    ],
}

def _variants_preset() -> list[PerfConfig]:
    """SGD, then every SAM variant with mask all and norm_only (its own rho scale)."""
    rhos = {"asam": (2.0, 5.0), "msam": (3.0, 3.0)}  # (all, norm_only); others: SAM's 0.05 / 0.5
    out = [SGD]
    for variant in ("sam", "asam", "esam", "looksam", "gsam", "fsam", "msam"):
        for mask, rho in zip(("all", "norm_only"), rhos.get(variant, (0.05, 0.5))):
            out.append(PerfConfig(f"{variant} {mask}", variant, mask, rho=rho))
    return out


PRESETS["variants"] = _variants_preset()
PRESETS["ddp"] = [  # --nproc: both ascent modes, dense SAM and SAM-ON
    SGD,
    PerfConfig("sam all synced", "sam", "all"),
    PerfConfig("sam all local", "sam", "all", ascent="local"),
    PerfConfig("sam norm_only synced", "sam", "norm_only", rho=0.5),
    PerfConfig("sam norm_only local", "sam", "norm_only", rho=0.5, ascent="local"),
]
PRESETS["paper"] = PRESETS["default"] + [
    PerfConfig("sam no_norm", "sam", "no_norm"),
    PerfConfig("sam random@match:norm_only", "sam", "random", mask_opts={"sparsity": "match:norm_only"}),
    PerfConfig("asam all", "asam", "all", variant_opts={"adaptive": "elementwise"}, rho=2.0),
    PerfConfig("sam norm_only p=inf", "sam", "norm_only", variant_opts={"p": "inf"}, rho=0.1),
]


def parse_configs(text: str) -> list[PerfConfig]:
    """A preset name, or ``variant:mask[:key=value;key=value][:fused|:compiled]`` items separated
    by commas.

    Options the variant takes (its registered signature) go to the variant, ``ascent`` (synced or
    local, for --nproc) to the step, the rest to the mask. ``:fused`` / ``:compiled``: the step
    through bench.engine.fast_step (eager / under torch.compile) instead of the reference train_step.
    An unknown variant or mask raises
    InvalidInput.
    """
    import masks
    from bench.registries import VARIANTS, variant_options

    if text in PRESETS:
        return list(PRESETS[text])
    out = [SGD]
    for item in filter(None, (t.strip() for t in text.split(","))):
        body, _, kind = item.rpartition(":")
        kind = kind if body and kind in STEP_KINDS else "reference"
        parts = (body if kind != "reference" else item).split(":", 2)
        variant, mask = parts[0], parts[1] if len(parts) > 1 else "all"
        if variant not in VARIANTS and variant != LOOP:
            raise InvalidInput(f"{item!r}: unknown variant {variant!r}", field="--configs",
                               allowed=VARIANTS.names() + [LOOP] + [f"preset {p}" for p in PRESETS])
        if mask not in masks.list_masks():
            raise InvalidInput(f"{item!r}: unknown mask {mask!r}", field="--configs", allowed=masks.list_masks())
        opts: dict[str, Any] = {}
        if len(parts) > 2:
            import yaml

            for kv in parts[2].split(";"):
                if "=" not in kv:
                    raise InvalidInput(f"{item!r}: option {kv!r} is not key=value", field="--configs")
                k, v = kv.split("=", 1)
                opts[k] = yaml.safe_load(v)
        names = variant_options(variant) if variant in VARIANTS else {}
        vopts = {k: opts.pop(k) for k in list(opts) if k in names}
        ascent = opts.pop("ascent", config.EXPERIMENT["ascent"])  # --nproc: synced or local
        if ascent not in config.CHOICES["ascent"]:
            raise InvalidInput(f"{item!r}: ascent={ascent!r}", field="--configs", allowed=config.CHOICES["ascent"])
        if (variant, mask) != (SGD.variant, SGD.mask):  # the baseline itself is there already
            out.append(PerfConfig(item, variant, mask, mask_opts=opts, variant_opts=vopts, ascent=ascent,
                                  step=kind))
    return out
