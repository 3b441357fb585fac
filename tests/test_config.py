"""The run config's one rule per thing (issue 22): run ids that do not move, one table of
per-optimizer defaults that the command line and suites share, grid axes inside option maps, a
config resolved once, the registered ``none`` baseline, one writer of the run-folder files, and
docs/config.md generated from the field table."""
from __future__ import annotations

import ast
import hashlib
import json
import textwrap
from pathlib import Path

import pytest
import torch

import masks
from bench import config, registries, rundir
from bench.cli import app as cli
from bench.cli import flags
from bench.config import docs
from bench.orchestration.suite import load_suite

REPO = Path(__file__).resolve().parents[1]

# run ids computed before the config was split into modules (issue 22); a change here moves
# existing results to new folders
PINNED = {
    "2d48988c4681": {},
    "b28d08b84d8d": {"mask": "norm_only", "rho": 0.5},
    "3b8ba1175f4c": {"variant": "none"},
    "155c293efb32": {"mask": "none"},
    "ffcd6d084ec7": {"variant": "asam", "variant_opts": {"adaptive": "layerwise"}, "rho": 2.0},
    "b452229efbaa": {"mask": "random", "sparsity": "match:norm_only"},
    "07547e8b572a": {"mask": "fisher", "sparsity": 0.99, "mask_opts": {"num_samples": 64, "update_every": 1}},
    "686b1ef21342": {"label_noise": 0.2, "label_noise_type": "asymmetric"},
    "d901eddd517c": {"ascent": "local", "nproc": 2, "sync_bn": False},
    "7ade2be4681a": {"base": {"name": "lion", "lr": 1e-4, "weight_decay": 1.0}},
    "b52003484d21": {"base": {"name": "lion"}},
    "48b88e7ebbf2": {"base": {"name": "adamw", "lr": 1e-3, "weight_decay": 0.1}, "model": "vit_ci"},
    "e08d6de543dc": {"mask": "layerwise", "mask_opts": {"blocks": [2], "norm_only": True}, "model": "resnet_ci"},
    "d106a446cc9a": {"base": {"name": "adamw", "lr": 1e-3, "weight_decay": 0.05}},  # --optimizer adamw
}
# suites/smoke.yaml's 76 run ids, in order, from the same time (sha1 of their comma-joined list)
SMOKE_IDS = "9ed2794872bec6e84fce64375920f680282e63e4"


def train_parser():
    return cli.build_parser()._subparsers._group_actions[0].choices["train"]


def cli_config(*argv: str) -> dict:
    return config.resolve(flags.train_overrides(train_parser().parse_args(list(argv))))


def suite_runs(tmp_path, text: str):
    path = tmp_path / "s.yaml"
    path.write_text(textwrap.dedent(text))
    return load_suite(path)


def test_existing_run_ids_do_not_move():
    moved = {rid: config.run_id(config.resolve(over)) for rid, over in PINNED.items()}
    assert moved == {rid: rid for rid in PINNED}


def test_the_smoke_suite_keeps_its_run_ids():
    ids = load_suite(REPO / "suites" / "smoke.yaml").run_ids
    assert len(ids) == 76
    assert hashlib.sha1(",".join(ids).encode()).hexdigest() == SMOKE_IDS


@pytest.mark.parametrize("name", ["adamw", "lion", "sgd"])
def test_the_command_line_and_a_suite_give_one_run_per_optimizer(tmp_path, name):
    by_flag = cli_config("--optimizer", name)
    by_set = cli_config("--set", f"base.name={name}")
    by_suite = suite_runs(tmp_path, f"name: s\ndefaults: {{base: {{name: {name}}}}}\n").runs[0]
    by_dict = config.resolve({"base": {"name": name}})
    assert by_flag == by_set == by_suite == by_dict
    assert len({config.run_id(c) for c in (by_flag, by_set, by_suite, by_dict)}) == 1
    assert by_flag["base"] == {"name": name, **config.optimizers.DEFAULTS[name]}


def test_adamw_starts_from_the_table_and_options_given_later_win(tmp_path):
    s = suite_runs(tmp_path, """
        name: s
        defaults: {base: {name: sgd, lr: 0.2, momentum: 0.8}}
        grid:
          - {base: {name: adamw}}
          - {base.name: adamw, base.lr: 3.0e-4}
          - {base: {name: adamw, weight_decay: 0.1}}
        """)
    assert [r["base"] for r in s.runs] == [
        {"name": "adamw", "lr": 1e-3, "weight_decay": 0.05},
        {"name": "adamw", "lr": 3e-4, "weight_decay": 0.05},
        {"name": "adamw", "lr": 1e-3, "weight_decay": 0.1}]
    assert cli_config("--optimizer", "adamw", "--lr", "3e-4")["base"] == s.runs[1]["base"]
    defaults = config.optimizers.effective_defaults()["adamw"]
    assert defaults["eps"] == torch.optim.AdamW([torch.zeros(1)]).defaults["eps"]  # the class's own


def test_lists_inside_option_maps_are_grid_axes(tmp_path):
    nested = suite_runs(tmp_path, """
        name: s
        defaults: {model: resnet_ci, mask: fisher, sparsity: 0.9, variant: asam}
        grid: {mask_opts: {num_samples: [16, 64], update_every: 1}, variant_opts: {adaptive: [elementwise, layerwise]},
               base: {lr: [0.1, 0.05]}}
        """)
    dotted = suite_runs(tmp_path, """
        name: s
        defaults: {model: resnet_ci, mask: fisher, sparsity: 0.9, variant: asam}
        grid: {mask_opts.num_samples: [16, 64], mask_opts.update_every: 1, variant_opts.adaptive: [elementwise, layerwise],
               base.lr: [0.1, 0.05]}
        """)
    assert len(nested.runs) == 8 and nested.run_ids == dotted.run_ids and nested.runs == dotted.runs
    assert {r["mask_opts"]["num_samples"] for r in nested.runs} == {16, 64}
    wrapped = suite_runs(tmp_path, """
        name: s
        defaults: {model: resnet_ci}
        grid: {mask: layerwise, mask_opts: {blocks: [[2, 3]], norm_only: true}}
        """)
    assert [r["mask_opts"] for r in wrapped.runs] == [{"blocks": [2, 3], "norm_only": True}]


def test_a_config_is_resolved_once_and_its_mask_is_the_one_sam_uses():
    from bench.engine.build import build_optimizer

    cfg = config.resolve({"model": "resnet_ci", "mask": "random", "sparsity": 0.99})
    assert isinstance(cfg, config.ResolvedConfig) and config.resolve(cfg) is cfg
    assert json.loads(json.dumps(cfg)) == dict(cfg)  # written as plain JSON
    from bench.models import create_model_for

    model = create_model_for("resnet_ci", "digits")
    opt = build_optimizer(cfg, model)
    assert opt.mask is cfg.mask and opt.n_perturbed > 0
    changed = {**cfg, "rho": 0.5}
    again = config.resolve(changed)
    assert again is not cfg and again.mask is not cfg.mask and again["rho"] == 0.5
    cfg["rho"] = -1.0  # changed in place: resolved again, so checked again
    with pytest.raises(config.ConfigError, match="rho"):
        config.resolve(cfg)


def test_none_is_a_registered_mask_and_variant_and_a_baseline_either_way():
    from bench.engine.build import build_optimizer
    from bench.models import create_model_for

    assert "none" in masks.list_masks() and "none" in registries.VARIANTS.names()
    for kind, registry in (("mask", masks.MASKS), ("variant", registries.VARIANTS)):
        plain = {name for name, cls in registry.items() if getattr(cls, "perturbs", True) is False}
        assert plain == {config.PLAIN[kind]}, kind  # the declared names are the registered classes'
    model = create_model_for("resnet_ci", "digits")
    for over in ({"variant": "none"}, {"mask": "none"}, {"variant": "none", "mask": "fisher"}):
        cfg = config.resolve({"model": "resnet_ci", **over})
        opt = build_optimizer(cfg, model)
        assert config.is_baseline(cfg) and not opt.is_sam and opt.mask is None and opt.n_perturbed == 0
    assert not config.is_baseline(config.resolve({"mask": "norm_only"}))


def test_the_field_table_gives_defaults_choices_and_checks():
    from bench.data.label_noise import LABEL_NOISE_TYPES
    from bench.engine.sam import SAM

    assert config.default_config() == {**config.EXPERIMENT, **config.RUNTIME}
    assert list(config.default_config()) == list(config.FIELDS)
    assert config.CHOICES["label_noise_type"] == list(LABEL_NOISE_TYPES)
    for field, choices in config.CHOICES.items():
        with pytest.raises(config.ConfigError) as info:
            config.resolve({field: "no-such-choice"})
        assert info.value.field == field and info.value.allowed == choices
    model = torch.nn.Sequential(torch.nn.Linear(2, 2))
    with pytest.raises(ValueError, match="allowed values are synced, local"):
        SAM(model, torch.optim.SGD(model.parameters(), lr=0.1), ascent="both")


def test_docs_config_md_is_generated_from_the_table():
    page = docs.PAGE.read_text()
    assert docs.render(page) == page, "docs/config.md is stale: run `python -m bench.config.docs`"
    for name in config.FIELDS:
        assert f"| `{name}` |" in page


# --- run-folder files: one writer --------------------------------------------------------------------

RUN_FILES = ("config.json", "result.json")
# failed results are recorded by their own writers (issue 21 makes rundir.record_failure the one)
FAILURE_WRITERS = {("bench/engine/train.py", "run"), ("bench/orchestration/launch.py", "record_failure")}


def _writes_run_files() -> set[tuple[str, str]]:
    """(module, function) of every call to a write function whose arguments name a run file."""
    found = set()
    for path in sorted((REPO / "bench").rglob("*.py")):
        rel = str(path.relative_to(REPO))
        tree = ast.parse(path.read_text())
        for fn in ast.walk(tree):
            if not isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            for node in ast.walk(fn):
                if not isinstance(node, ast.Call):
                    continue
                name = getattr(node.func, "attr", getattr(node.func, "id", ""))
                named = {c.value for c in ast.walk(node) if isinstance(c, ast.Constant) and c.value in RUN_FILES}
                if name.startswith("write") and named:
                    found.add((rel, fn.name))
    return found


def test_rundir_is_the_one_writer_of_config_json_and_finished_results(tmp_path):
    writers = _writes_run_files() - FAILURE_WRITERS
    assert {rel for rel, _ in writers} == {"bench/rundir.py"}, writers
    cfg = config.resolve({"mask": "norm_only"})
    rid = config.run_id(cfg)
    rundir.write_config(tmp_path, rid, "s", cfg, config.variant_options(cfg))
    doc = json.loads((tmp_path / "config.json").read_text())
    assert doc == {"run_id": rid, "suite": "s", "config": dict(cfg), "variant_options": config.variant_options(cfg)}
    assert rundir.owner(tmp_path) == rid
    rundir.write_config(tmp_path, "other", "s", cfg, {}, keep=True)  # keep: the folder's own stays
    assert rundir.owner(tmp_path) == rid
    with pytest.raises(ValueError, match="finished"):
        rundir.write_result(tmp_path, {"status": "failed"})
    rundir.write_result(tmp_path, {"status": "done", "run_id": rid})
    assert rundir.read_result(tmp_path).kind == "final"
