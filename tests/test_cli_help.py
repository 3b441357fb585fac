"""The command line explains itself: every flag has a help line with its default, `train`'s flags
are the run config's fields, --version, `table --latex`, warnings printed once as plain lines."""
from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import pytest

from bench import config, registries
from bench.cli import app as cli
from bench.cli import flags

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).parent))


def subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    (action,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(action.choices)


def expanded_help(parser: argparse.ArgumentParser, action: argparse.Action) -> str:
    return parser._get_formatter()._expand_help(action)


def test_every_flag_of_every_subcommand_has_help_with_its_default():
    parser = cli.build_parser()
    subs = subcommands(parser)
    assert set(subs) >= {"run", "status", "collect", "plot", "table", "train", "perf", "list", "report"}
    (sub_action,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    described = {a.dest for a in sub_action._choices_actions if a.help}
    assert described == set(subs)  # every command has a one-line description in `sambench -h`
    missing, no_default = [], []
    for name, sub in subs.items():
        for action in sub._actions:
            if isinstance(action, argparse._HelpAction):
                continue
            label = f"{name} {'/'.join(action.option_strings) or action.dest}"
            if not action.help or action.help == argparse.SUPPRESS:
                missing.append(label)
            elif action.option_strings and "default" not in expanded_help(sub, action).lower():
                no_default.append(label)
    assert missing == [] and no_default == []


def config_paths() -> set[str]:
    """Every settable run-config path: top-level fields and each base optimizer's options."""
    out = set()
    for key, value in config.default_config().items():
        if key == "base":
            out |= {"base.name"} | {f"base.{o}" for opts in config.BASE_OPTIMIZERS.values() for o in opts}
        elif not isinstance(value, dict):
            out.add(key)
    return out


def test_train_flags_are_the_run_config_fields():
    train = subcommands(cli.build_parser())["train"]
    by_dest = {a.dest: a for a in train._actions}
    generated = {f.path: f for f in flags.train_flags()}
    assert config_paths() <= set(generated)
    for path, flag in generated.items():
        assert flag.dest in by_dest, path
    for special in ("mask_opt", "log", "set", "out"):
        assert special in by_dest
    assert "(default: 0.05)" in by_dest["rho"].help and "(default: true)" in by_dest["augment"].help
    assert "one of adamw, lion, sgd" in by_dest["optimizer"].help


def test_a_field_added_to_the_config_later_gets_a_flag(monkeypatch):
    """A new row of the field table is a flag with its help, default and choices."""
    for row in (config.Field("brand_new_field", 7, "a new count", experiment=False),
                config.Field("brand_new_switch", False, "a new switch", experiment=False),
                config.Field("brand_new_block", {}, "a new block", experiment=False),
                config.Field("brand_new_mode", "a", "a new mode", choices=("a", "b"), experiment=False)):
        monkeypatch.setitem(config.FIELDS, row.name, row)
    train = subcommands(cli.build_parser())["train"]
    by_dest = {a.dest: a for a in train._actions}
    assert by_dest["brand_new_field"].help == "a new count (default: 7)" and by_dest["brand_new_field"].type is int
    assert "(default: none)" in by_dest["brand_new_block"].help
    assert by_dest["brand_new_mode"].help == "a new mode: one of a, b (default: a)"
    args = train.parse_args(["--brand-new-field", "9", "--brand-new-switch", "--brand-new-block", "every=2",
                             "--brand-new-block", "on=true"])
    over = flags.train_overrides(args)
    assert over["brand_new_field"] == 9 and over["brand_new_switch"] is True
    assert over["brand_new_block.every"] == 2 and over["brand_new_block.on"] is True


def test_variant_options_are_flags_read_from_the_registry():
    class Toy:  # a variant registered later (a plug-in): its options become flags too
        def __init__(self, brand_new_knob: float = 0.5, seed: int | None = None, *, on: bool = False):
            pass

    registries.VARIANTS.register("toy_flags")(Toy)
    try:
        train = subcommands(cli.build_parser())["train"]
        options = {o for a in train._actions for o in a.option_strings}
        for name in registries.VARIANTS.names():
            for opt in registries.variant_options(name):
                assert flags.option_for(f"variant_opts.{opt}") in options, (name, opt)
        assert {"--brand-new-knob", "--on", "--no-on", "--variant-seed", "--seed"} <= options
        assert "--variant-opt" not in options  # one mechanism: the generated flags (and --set)
        assert flags.option_for("variant_opts.seed") == "--variant-seed"
        args = train.parse_args(["--variant", "toy_flags", "--brand-new-knob", "0.25", "--variant-seed", "3",
                                 "--seed", "1", "--on"])
        over = flags.train_overrides(args)
        assert over["variant_opts.brand_new_knob"] == 0.25 and over["variant_opts.seed"] == 3
        assert over["seed"] == 1 and over["variant_opts.on"] is True
    finally:
        registries.VARIANTS.unregister("toy_flags")


def test_train_flags_become_config_overrides():
    train = subcommands(cli.build_parser())["train"]
    args = train.parse_args(["--optimizer", "lion", "--lr", "3e-4", "--betas", "0.9,0.98", "--no-augment",
                             "--p", "inf", "--mask-opt", "num_samples=64", "--log", "tensorboard,mlflow",
                             "--set", "logging.mlflow.experiment=paper", "--sparsity", "match:norm_only",
                             "--mask", "fisher"])
    over = flags.train_overrides(args)
    assert {k: v for k, v in over.items() if k.startswith("base")} == {
        "base.name": "lion", "base.lr": 3e-4, "base.betas": [0.9, 0.98]}
    assert over["augment"] is False and over["variant_opts.p"] == "inf"
    assert over["mask_opts.num_samples"] == 64 and over["sparsity"] == "match:norm_only"
    cfg = config.resolve(over)
    assert cfg["base"] == {"name": "lion", "lr": 3e-4, "betas": [0.9, 0.98]}  # lion's own defaults for the rest
    assert cfg["logging"]["mlflow"] == {"experiment": "paper"} and cfg["logging"]["wandb"] is False
    assert cfg["logging"]["tensorboard"] is True


def run_cli(*args, cwd=REPO):
    return subprocess.run([sys.executable, "-m", "bench", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=300, check=False)


def test_version():
    proc = run_cli("--version")
    assert proc.returncode == 0 and proc.stdout.startswith("sambench ")
    from importlib.metadata import version

    assert proc.stdout.split()[1] == version("sambench")


def test_bad_log_flag_is_invalid_input(tmp_path):
    proc = run_cli("train", "--log", "tensorboard,neptune", "--out", str(tmp_path / "r"))
    assert proc.returncode == 2 and "neptune" in proc.stderr and "tensorboard, wandb, mlflow" in proc.stderr
    assert not (tmp_path / "r").exists()


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    import analysis_fixtures as F

    return F.make_results(tmp_path_factory.mktemp("results"))


def test_table_is_markdown_by_default_and_latex_only_with_the_flag(results):
    md = run_cli("table", str(results))
    tex = run_cli("table", str(results), "--latex")
    assert md.returncode == 0 and tex.returncode == 0
    # the selection rule's line first (these runs hold out no validation split: the oracle), then the table
    assert md.stdout.startswith("Rows: each method at the configuration chosen by test — ORACLE")
    assert md.stdout.split("\n\n")[1].startswith("| variant") and "\\begin{tabular}" not in md.stdout
    assert tex.stdout.startswith("% Rows: each method at the configuration chosen by test — ORACLE")
    assert tex.stdout.split("\n\n")[1].startswith("\\begin{tabular}") and "| variant" not in tex.stdout


def assert_warned_once(proc):
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    skipped = [ln for ln in lines if "skipped 3 unreadable" in ln]
    assert len(skipped) == 1 and skipped[0].startswith("warning: analysis.collect: skipped")
    assert all(ln.startswith("warning: ") for ln in lines), lines  # no source lines, no categories
    assert "UserWarning" not in proc.stderr and "warnings.warn" not in proc.stderr


@pytest.mark.parametrize("command", ["table", "collect"])
def test_warnings_print_once_as_plain_lines(results, tmp_path, command):
    extra = ["-o", str(tmp_path / "r.csv")] if command == "collect" else []
    proc = run_cli(command, str(results), *extra)
    assert proc.returncode == 0, proc.stderr
    assert_warned_once(proc)


def test_report_command_writes_one_page(results, tmp_path):
    out = tmp_path / "deep" / "report.html"
    proc = run_cli("report", str(results), "-o", str(out))
    assert proc.returncode == 0, proc.stderr
    assert out.read_text().startswith("<!DOCTYPE html>") and str(out) in proc.stdout
    assert_warned_once(proc)  # plot_all's and collect's warnings, once each
    proc = run_cli("report", str(tmp_path / "nothing-here"))
    assert proc.returncode == 2 and "nothing-here" in proc.stderr
