"""The base optimizers a run can use (``base.name``): their options, the defaults a run starts
from, and the class behind each name. One table, read by the config (merge, checks, docs), the
``sambench train`` flags and the engine.

A run config's ``base`` block holds the optimizer's name and the options :data:`DEFAULTS` gives
it, overridden by what the run says; an option neither gives is the optimizer class's own
default (``torch.optim.AdamW``'s ``eps=1e-8``, lion-pytorch's ``betas=(0.9, 0.99)``). Naming
another optimizer (in a suite layer, ``--optimizer``, ``--set base.name=...``) starts from that
optimizer's defaults: the previous optimizer's options no longer apply (:func:`switch`).
"""
from __future__ import annotations

import inspect
from typing import Any

from bench.config.checks import ConfigError, is_num
from bench.errors import did_you_mean, show

# name -> the options it takes
OPTIONS: dict[str, tuple[str, ...]] = {
    "sgd": ("lr", "momentum", "weight_decay", "nesterov"),
    "adamw": ("lr", "weight_decay", "betas", "eps"),
    "lion": ("lr", "weight_decay", "betas"),     # lion-pytorch's Lion (Chen et al. 2023)
}
# name -> what a run of that optimizer starts from (the rest: the class's own defaults). AdamW's
# weight decay is the DeiT/ViT recipe's 0.05, not torch's 0.01 (sambench train and suites agree).
DEFAULTS: dict[str, dict[str, Any]] = {
    "sgd": {"lr": 0.1, "momentum": 0.9, "weight_decay": 5e-4, "nesterov": False},
    "adamw": {"lr": 1e-3, "weight_decay": 0.05},
    "lion": {},
}
DEFAULT = "sgd"
# one help line per option (the --lr, --momentum, ... flags)
HELP: dict[str, str] = {
    "lr": "learning rate (peak, before the schedule)",
    "momentum": "SGD momentum",
    "weight_decay": "weight decay (decoupled for adamw and lion)",
    "nesterov": "Nesterov momentum",
    "betas": "moment coefficients beta1,beta2",
    "eps": "AdamW epsilon",
}


def start(name: str) -> dict[str, Any]:
    """The ``base`` block a run of optimizer ``name`` starts from (an unknown name: the name alone)."""
    return {"name": name, **{k: list(v) if isinstance(v, tuple) else v for k, v in DEFAULTS.get(name, {}).items()}}


def switch(base: Any, name: Any) -> dict[str, Any]:
    """The ``base`` block after a layer names optimizer ``name``: unchanged for the same optimizer,
    else :func:`start` of the new one (the old one's options are dropped)."""
    if isinstance(base, dict) and base.get("name") == name:
        return base
    return start(name) if isinstance(name, str) else {"name": name}


def optimizer_class(name: str):
    """The class behind ``base.name``."""
    import torch

    if name == "lion":
        from lion_pytorch import Lion  # Chen et al. 2023, the lion-pytorch package

        return Lion
    return {"sgd": torch.optim.SGD, "adamw": torch.optim.AdamW}[name]


def class_defaults(name: str) -> dict[str, Any]:
    """The options of ``name`` that its class gives a default, as the class gives them."""
    params = inspect.signature(optimizer_class(name).__init__).parameters
    return {k: params[k].default for k in OPTIONS[name]
            if k in params and params[k].default is not params[k].empty}


def effective_defaults() -> dict[str, dict[str, Any]]:
    """{optimizer: {option: default}} as a run gets them: the table, else the class's own."""
    return {name: {**class_defaults(name), **DEFAULTS[name]} for name in sorted(OPTIONS)}


def check_base(base: Any, field: str = "base") -> None:
    """The ``base`` block: a known optimizer and only its options, each of the right kind."""
    if not isinstance(base, dict) or base.get("name") not in OPTIONS:
        got = base.get("name") if isinstance(base, dict) else base
        raise ConfigError(f"{field}.name", f"unknown base optimizer {show(got)}{did_you_mean(got, list(OPTIONS))}",
                          sorted(OPTIONS))
    name, options = base["name"], OPTIONS[base["name"]]
    for k, v in base.items():
        if k == "name":
            continue
        if k not in options:
            raise ConfigError(f"{field}.{k}", f"not an option of {name}{did_you_mean(k, list(options))}",
                              sorted(options))
        _check_option(name, k, v, f"{field}.{k}")


def _check_option(name: str, key: str, v: Any, path: str) -> None:
    if key == "nesterov" and not isinstance(v, bool):
        raise ConfigError(path, f"must be true or false, got {show(v)}")
    if key == "betas" and not (isinstance(v, (list, tuple)) and len(v) == 2 and all(map(is_num, v))
                               and all(0 <= b <= 1 for b in v)):
        raise ConfigError(path, f"must be two numbers in [0, 1], got {show(v)}")
    if key in ("lr", "momentum", "weight_decay", "eps") and (not is_num(v) or v < 0):
        raise ConfigError(path, f"must be a number >= 0, got {show(v)}")
    if key == "lr" and name == "lion" and not v > 0:
        raise ConfigError(path, f"must be a number > 0 for lion, got {show(v)}")


check_base.allowed = "mapping: name (" + ", ".join(sorted(OPTIONS)) + ") and its options"
