"""The ``sambench train`` flags, generated from the run config so they cannot drift from it.

Every row of the field table (:data:`bench.config.FIELDS`) is a flag:

- a top-level field ``name`` -> ``--name`` (``_`` -> ``-``); a boolean -> ``--name`` / ``--no-name``;
- the base optimizer (``base.*``) -> ``--optimizer`` (``base.name``) and ``--lr``, ``--momentum``,
  ``--weight-decay``, ... (every option of every base optimizer, bench.config.optimizers; naming
  an optimizer starts from its defaults there, as a suite's ``base: {name: ...}`` does);
- the options of every registered variant (``variant_opts.*``, read from the variant registry's
  signatures, plug-in variants included) -> ``--p``, ``--adaptive``, ``--k``, ...; an option
  whose name a config field already has gets ``--variant-<option>`` (esam's ``--variant-seed``);
- ``mask_opts`` -> ``--mask-opt KEY=VALUE`` (options depend on the mask: ``sambench list masks``);
- ``logging`` -> ``--log tensorboard,wandb,mlflow`` (or ``none``);
- any other block of options (a mapping) -> ``--name KEY=VALUE``, repeatable.

Help lines and choices come from the table's rows; each shows the field's default. Any field, nested
ones included, can also be given as ``--set path=value``.
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Any, Callable

from bench.errors import InvalidInput, load_yaml, parse_set

OTHER_DESTS = {"mask_opt", "log", "set", "out", "help"}  # train's flags that are not one config field


@dataclass
class Flag:
    path: str                  # config path, e.g. "base.lr"
    dest: str                  # argparse dest
    kind: Callable | None      # argparse type (None: a boolean flag)
    default: Any               # the config's default (shown in the help; argparse's default is None)
    help: str
    choices: list | None = None

    @property
    def option(self) -> str:
        return "--" + self.dest.replace("_", "-")


def yaml_scalar(text: str) -> Any:
    """A flag value as a YAML scalar (``0.5`` -> 0.5, ``inf`` -> "inf", ``null`` -> None); text
    that is not YAML stays text (validation then names the flag)."""
    try:
        value = load_yaml(text, "value")
    except InvalidInput:
        return text
    return text if value is None and text.strip().lower() not in ("null", "none", "~") else value


def number_list(text: str) -> list:
    """``0.9,0.999`` or ``[0.9, 0.999]`` -> [0.9, 0.999]."""
    value = yaml_scalar(text if text.strip().startswith("[") else f"[{text}]")
    if not isinstance(value, list):
        raise argparse.ArgumentTypeError(f"expected a list like 0.9,0.999, got {text!r}")
    return value


def _kind(default: Any) -> Callable | None:
    if isinstance(default, bool):
        return None
    if isinstance(default, int):
        return int
    if isinstance(default, float):
        return float
    if isinstance(default, (list, tuple)):
        return number_list
    if isinstance(default, str):
        return str
    return yaml_scalar


def _show(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "none"
    if isinstance(value, (list, tuple)):
        return ",".join(map(str, value))
    return str(value)


def _help(path: str, field_help: dict[str, str], default_text: str) -> str:
    text = field_help.get(path) or f"run config field {path}"
    return f"{text} (default: {default_text})"


def _base_flags(field_help) -> list[Flag]:
    """``--optimizer`` and one flag per option of any base optimizer (bench.config.optimizers)."""
    from bench.config import optimizers

    base_name = optimizers.DEFAULT
    defaults = optimizers.effective_defaults()
    flags = [Flag("base.name", "optimizer", str, base_name,
                  _help("base.name", field_help, base_name), sorted(optimizers.OPTIONS))]
    for opt in sorted({opt for opts in optimizers.OPTIONS.values() for opt in opts}):
        users = [name for name, opts in sorted(optimizers.OPTIONS.items()) if opt in opts]
        shown = ", ".join(f"{_show(defaults[u][opt])} for {u}" if opt in defaults[u] else f"none for {u}"
                          for u in users)
        text = field_help.get(f"base.{opt}") or f"base optimizer option {opt}"
        example = next((defaults[u][opt] for u in users if defaults[u].get(opt) is not None), None)
        kind = _kind(example) if example is not None else float
        flags.append(Flag(f"base.{opt}", opt, kind, example, f"{text} (default: {shown})"))
    return flags


def _variant_flags(taken: set[str]) -> list[Flag]:
    """One flag per option of any registered variant (``registries.variant_options``: the
    signatures); an option whose name a config field already has is ``--variant-<option>``."""
    from bench.registries import VARIANTS, variant_options

    users: dict[str, dict[str, Any]] = {}  # option -> {variant: default}
    for name in VARIANTS.names():
        for opt, default in variant_options(name).items():
            users.setdefault(opt, {})[name] = default
    flags = []
    for opt, defaults in sorted(users.items()):
        first = next(iter(defaults.values()))
        shown = {_show(d) for d in defaults.values()}
        shown = shown.pop() if len(shown) == 1 else ", ".join(f"{_show(d)} for {v}" for v, d in defaults.items())
        dest = f"variant_{opt}" if opt in taken else opt
        flags.append(Flag(f"variant_opts.{opt}", dest, None if isinstance(first, bool) else yaml_scalar, first,
                          f"variant option of {', '.join(defaults)} (default: {shown})"))
    return flags


def train_flags() -> list[Flag]:
    """Every run-config field as a flag (``mask_opts`` and ``logging`` are handled apart)."""
    from bench import config

    field_help = config.FIELD_HELP
    flags: list[Flag] = []
    for key, row in config.FIELDS.items():  # the field table, one row per field
        default = row.default
        if key in ("mask_opts", "logging", "variant_opts"):
            continue
        if key == "base":
            flags += _base_flags(field_help)
        elif isinstance(default, dict):  # a block of options: --name KEY=VALUE, repeatable
            flags.append(Flag(key, key, dict, default, _help(key, {key: row.help}, _show(default or None))))
        else:
            flags.append(Flag(key, key, _kind(default), default, _help(key, {key: row.help}, _show(default)),
                              list(row.choices) if row.choices else None))
    flags += _variant_flags({f.dest for f in flags} | OTHER_DESTS)
    dests = [f.dest for f in flags]
    clash = sorted({d for d in dests if dests.count(d) > 1})
    if clash:
        raise RuntimeError(f"two config fields give the same train flag: {clash}")
    return flags


METAVARS = {int: "N", float: "X", str: "NAME", number_list: "A,B"}


def add_train_flags(parser: argparse.ArgumentParser) -> None:
    from bench import loggers

    group = parser.add_argument_group("run config (every field of the run config; see also --set)")
    for f in train_flags():
        if f.kind is None:
            group.add_argument(f.option, dest=f.dest, action=argparse.BooleanOptionalAction, default=None,
                               help=f.help)
        elif f.kind is dict:
            group.add_argument(f.option, dest=f.dest, action="append", default=None, metavar="KEY=VALUE",
                               help=f"{f.help[:f.help.rindex(' (default')]}: one option, repeatable"
                                    f"{f.help[f.help.rindex(' (default'):]}")
        else:
            # choices are listed, not enforced here: validation names the field and the allowed values
            text = f"{f.help[:f.help.rindex(' (default')]}: one of {', '.join(map(str, f.choices))}" \
                   f"{f.help[f.help.rindex(' (default'):]}" if f.choices else f.help
            group.add_argument(f.option, dest=f.dest, type=f.kind, default=None, help=text,
                               metavar=METAVARS.get(f.kind, "VALUE"))
    group.add_argument("--mask-opt", action="append", metavar="KEY=VALUE", default=None,
                       help="a mask strategy option, repeatable, e.g. num_samples=128 "
                            "(`sambench list masks` shows each mask's options; default: none)")
    on = [b for b, v in loggers.DEFAULTS.items() if v]
    group.add_argument("--log", metavar="LOGGERS", default=None,
                       help=f"loggers to use, comma-separated from {', '.join(loggers.BACKENDS)}, or none; "
                            f"options with --set logging.wandb.project=NAME etc. (default: {','.join(on)})")


def train_overrides(args: argparse.Namespace) -> dict:
    """The config overrides a ``train`` command line asks for (dotted paths -> values)."""
    from bench import loggers

    over: dict[str, Any] = {}
    for f in train_flags():
        value = getattr(args, f.dest, None)
        if value is not None and f.kind is dict:
            over.update({f"{f.path}.{k}": v for k, v in parse_set(value).items()})
        elif value is not None:
            over[f.path] = value
    for key, value in parse_set(args.mask_opt).items():
        over[f"mask_opts.{key}"] = value
    if args.log is not None:
        over["logging"] = loggers.from_flag(args.log)  # LoggingError names the flag
    over.update(parse_set(args.set))
    return over


def option_for(field: str) -> str:
    """The train flag that sets a config field path (for error messages): ``base.lr`` -> ``--lr``."""
    if field.startswith("logging"):
        return "--log"
    if field.startswith("mask_opts"):
        return "--mask-opt"
    if field == "variant_opts":  # an option the variant does not have
        return "--variant"
    by_path = {f.path: f.option for f in train_flags()}
    while field:
        if field in by_path:
            return by_path[field]
        field = field.rpartition(".")[0]
    return "--set"
