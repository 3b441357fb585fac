"""Suite files: expansion rules, run identity, and validation (exit 2, nothing written)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from torch import nn

from bench import config
from bench.cli import app as cli
from bench.orchestration.suite import SuiteError, load_suite
from bench.registries import MODELS

REPO = Path(__file__).resolve().parents[1]
SUITES = sorted((REPO / "suites").glob("*.yaml"))

torch.set_num_threads(2)


def write(tmp_path: Path, text: str, name: str = "s.yaml") -> Path:
    path = tmp_path / name
    if text.startswith(BASE):  # BASE + an indented block
        text = BASE + textwrap.dedent(text[len(BASE):])
    path.write_text(textwrap.dedent(text))
    return path


BASE = """\
name: t
defaults: {dataset: digits, model: resnet_ci, epochs: 1}
"""


# --- expansion ----------------------------------------------------------------------------------

def test_product_union_include_seeds(tmp_path):
    s = load_suite(write(tmp_path, BASE + """\
        grid:
          - {mask: [all, norm_only], rho: [0.1, 0.2, 0.5]}
          - {mask: random, sparsity: ["match:norm_only", 0.9], rho: 1.0}
        include:
          - {variant: none}
        seeds: [0, 1]
        """))
    assert len(s.runs) == (2 * 3 + 2 + 1) * 2
    assert s.name == "t" and s.source.name == "s.yaml"
    # insertion order: grid entries in order, seeds innermost
    first = [(r["mask"], r["rho"], r["seed"]) for r in s.runs[:4]]
    assert first == [("all", 0.1, 0), ("all", 0.1, 1), ("all", 0.2, 0), ("all", 0.2, 1)]
    assert s.runs[-1]["variant"] == "none" and s.runs[-2]["variant"] == "none"
    assert {r["seed"] for r in s.runs} == {0, 1}
    assert all(r["epochs"] == 1 and r["dataset"] == "digits" for r in s.runs)
    assert len(set(s.run_ids)) == len(s.runs) == len(s.run_ids)
    assert s.run_ids == [config.run_id(r) for r in s.runs]


def test_grid_mapping_scalars_and_no_grid(tmp_path):
    s = load_suite(write(tmp_path, BASE + "grid: {mask: norm_only, rho: [1.0, 2.0]}\n"))
    assert [(r["mask"], r["rho"]) for r in s.runs] == [("norm_only", 1.0), ("norm_only", 2.0)]
    s = load_suite(write(tmp_path, BASE))  # defaults alone: one run, seed 0
    assert len(s.runs) == 1 and s.runs[0]["seed"] == 0
    s = load_suite(write(tmp_path, BASE + "include: [{variant: none}, {rho: 0.3}]\n"))
    assert [r["variant"] for r in s.runs] == ["none", "sam"]  # only includes, no extra default run


def test_nested_and_dotted_keys_merge(tmp_path):
    s = load_suite(write(tmp_path, """\
        name: t
        defaults:
          dataset: digits
          model: resnet_ci
          base: {name: sgd, lr: 0.1, momentum: 0.9}
          variant: asam
          variant_opts: {adaptive: layerwise}
        grid:
          - {base.lr: [0.05], variant_opts.p: inf}
          - {base: {weight_decay: 0.0}, variant_opts: {eta: 0.1}}
          - {base: {name: adamw, lr: 0.001}}
        """))
    a, b, c = s.runs
    assert a["base"] == {"name": "sgd", "lr": 0.05, "momentum": 0.9, "weight_decay": 5e-4, "nesterov": False}
    assert a["variant_opts"] == {"adaptive": "layerwise", "p": "inf"}
    assert b["base"]["lr"] == 0.1 and b["base"]["weight_decay"] == 0.0 and b["base"]["momentum"] == 0.9
    assert b["variant_opts"] == {"adaptive": "layerwise", "eta": 0.1}
    # another optimizer drops SGD's fields and starts from its own defaults (bench.config.optimizers)
    assert c["base"] == {"name": "adamw", "lr": 0.001, "weight_decay": 0.05}


def test_overrides(tmp_path):
    path = write(tmp_path, BASE + """\
        grid: {mask: [all, norm_only], rho: [0.1, 0.2]}
        seeds: [0, 1]
        slurm: {partition: cpu, timeout_min: 10}
        """)
    s = load_suite(path, {"epochs": 3, "base.lr": 0.05, "slurm.partition": "gpu", "slurm.runs_per_job": 4,
                          "name": "other"})
    assert s.name == "other"
    assert all(r["epochs"] == 3 and r["base"]["lr"] == 0.05 for r in s.runs)
    assert s.slurm == {"partition": "gpu", "timeout_min": 10, "runs_per_job": 4}
    # an override of a grid axis collapses it; duplicates are removed, order kept
    s = load_suite(path, {"rho": 0.5})
    assert [(r["mask"], r["seed"]) for r in s.runs] == [("all", 0), ("all", 1), ("norm_only", 0), ("norm_only", 1)]
    s = load_suite(path, {"seeds": [7]})
    assert {r["seed"] for r in s.runs} == {7}


def test_dedup_keeps_first(tmp_path):
    s = load_suite(write(tmp_path, BASE + """\
        grid:
          - {mask: all, rho: [0.1, 0.2]}
          - {mask: all, rho: [0.2, 0.3]}
        include: [{mask: all, rho: 0.1}, {mask: all, rho: 0.1, log_every: 5}]
        """))
    assert [r["rho"] for r in s.runs] == [0.1, 0.2, 0.3]  # the runtime field does not make a new run


def test_match_sparsity_resolved(tmp_path):
    import masks
    from bench.models import create_model_for

    s = load_suite(write(tmp_path, BASE + """\
        grid:
          - {model: [resnet_ci, vit_ci], mask: [random, random_tensor], sparsity: "match:norm_only"}
        """))
    assert len(s.runs) == 4
    for rid, cfg in s.items():
        model = create_model_for(cfg["model"], "digits")
        n_norm = masks.selection_count(masks.create_mask("norm_only").build(model))
        total = masks.n_trainable(model)
        assert s.resolved_sparsity[rid] == pytest.approx(1 - n_norm / total)
        if cfg["mask"] == "random":  # match: gives identical counts
            sel = masks.create_mask("random", sparsity=cfg["sparsity"], seed=cfg["seed"]).build(model)
            assert masks.selection_count(sel) == n_norm
        assert cfg["sparsity"] == "match:norm_only"  # the config (and the id) keeps the request


def test_run_ids_stable(tmp_path):
    text_a = BASE + "grid: {mask: [all, norm_only], rho: [0.1, 0.2]}\nseeds: [0, 1]\n"
    # same runs, keys and grid written in another order
    text_b = """\
        grid: {rho: [0.2, 0.1], mask: [norm_only, all]}
        seeds: [1, 0]
        defaults: {epochs: 1, model: resnet_ci, dataset: digits}
        name: t
        """
    a = load_suite(write(tmp_path, text_a, "a.yaml"))
    b = load_suite(write(tmp_path, text_b, "b.yaml"))
    assert sorted(a.run_ids) == sorted(b.run_ids)
    # another process computes the same ids
    code = "import json,sys; from bench.orchestration.suite import load_suite; print(json.dumps(load_suite(sys.argv[1]).run_ids))"
    env = dict(os.environ, OMP_NUM_THREADS="2", HF_HUB_OFFLINE="1", PYTHONHASHSEED="123")
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path / "a.yaml")], capture_output=True, text=True,
                         env=env, cwd=REPO, timeout=120, check=False)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == a.run_ids
    # runtime fields do not change the id; any experiment field does
    cfg = a.runs[0]
    rid = config.run_id(cfg)
    for key, value in {"device": "cpu", "data_root": "/x", "log_every": 7, "eval_batch_size": 64,
                       "compile": True, "download": True, "save_gamma": False, "sharpness": {"m": 8},
                       "nproc": 2, "nodes": 3, "data_workers": 4}.items():
        assert config.run_id({**cfg, key: value}) == rid, key
    changed = {"dataset": "synthetic", "model": "vit_ci", "variant": "asam", "variant_opts": {"p": "inf"},
               "mask": "no_norm", "sparsity": 0.5, "mask_opts": {"x": 1}, "rho": 0.11, "rho_norm": "full",
               "freeze_bn_second": True, "epochs": 2, "batch_size": 64, "schedule": "constant",
               "warmup_epochs": 1, "label_smoothing": 0.0, "augment": False, "amp": "bf16",
               "channels_last": True, "seed": 5, "base": {**cfg["base"], "lr": 0.2}, "label_noise": 0.2,
               "ascent": "local", "sync_bn": False, "accumulate": 2, "val_split": 0.1}
    assert set(changed) | {"label_noise_type", "val_noisy"} == set(config.EXPERIMENT)
    for key, value in changed.items():
        assert config.run_id({**cfg, key: value}) != rid, key
    # the noise type matters once there is noise (without noise both stay out of the id)
    noisy = {**cfg, "label_noise": 0.2}
    assert config.run_id({**noisy, "label_noise_type": "asymmetric"}) != config.run_id(noisy)
    assert config.run_id({**cfg, "label_noise_type": "asymmetric"}) == rid
    # val_noisy matters once there is noise and a held-out part (tests/test_validation_split.py)
    held = {**noisy, "val_split": 0.1}
    assert config.run_id({**held, "val_noisy": True}) != config.run_id(held)
    assert config.run_id({**cfg, "val_noisy": True}) == rid


@pytest.mark.parametrize("path", SUITES, ids=[p.name for p in SUITES])
def test_every_suite_file_validates(path):
    s = load_suite(path)
    assert s.runs and s.name
    assert len(set(s.run_ids)) == len(s.runs)


def test_shipped_suites_shape():
    smoke = load_suite(REPO / "suites" / "smoke.yaml")
    masks_used = {r["mask"] for r in smoke.runs if r["variant"] != "none"}
    assert {"all", "norm_only", "no_norm", "random", "random_tensor", "fisher", "dynamic", "magnitude",
            "layerwise"} <= masks_used
    assert {r["model"] for r in smoke.runs} == {"resnet_ci", "vit_ci"}
    assert {r["variant"] for r in smoke.runs} == {"none", "sam", "asam"}
    assert len({r["seed"] for r in smoke.runs}) == 2 and all(r["epochs"] == 2 for r in smoke.runs)
    assert smoke.slurm.get("runs_per_job", 1) > 1


# --- malformed suites: exit 2, a precise message, nothing written ---------------------------------

class NoNorm(nn.Module):
    def __init__(self, num_classes=10, in_chans=3, img_size=32):
        super().__init__()
        self.conv = nn.Conv2d(in_chans, 4, 3, padding=1)
        self.fc = nn.Linear(4, num_classes)

    def forward(self, x):
        return self.fc(self.conv(x).mean((2, 3)))


def _nonorm(num_classes, in_chans=3, img_size=32):
    return NoNorm(num_classes, in_chans, img_size)


@pytest.fixture(autouse=True, scope="module")
def nonorm_model():
    """A model without norm layers, registered only while this module's tests run."""
    MODELS.register("test_nonorm")(_nonorm)
    yield
    MODELS.unregister("test_nonorm")

MALFORMED = {
    "top_key": ("name: t\nfoo: 1\n",
                "foo: unknown key (allowed: defaults, grid, include, logging, name, reference, seeds, slurm)"),
    "defaults_key": (BASE.replace("epochs: 1", "epochs: 1, lr: 0.1"), "defaults.lr: unknown key (allowed: accumulate, amp, ascent, "),
    "grid_key": (BASE + "grid: [{rho: [1]}, {mask: all, bar: [1]}]\n", "grid[1].bar: unknown key (allowed: "),
    "include_key": (BASE + "include: [{variant: none}, {foo: 1}]\n", "include[1].foo: unknown key"),
    "mask": (BASE + "grid:\n  - {mask: all}\n  - {mask: norm_only}\n  - {mask: randm}\n",
             "grid[2].mask: unknown mask 'randm' (did you mean 'random'?); a mask of your own: its file in a "
             "folder named in SAMBENCH_MASK_PATH"),
    "model": (BASE + "grid: {model: [resnet_ci, resnet99]}\n", "grid.model: unknown model 'resnet99' (allowed: "),
    "dataset": ("name: t\ndefaults: {dataset: mnist}\n", "defaults.dataset: unknown dataset 'mnist' (allowed: cifar10"),
    "variant": (BASE + "include: [{variant: asm}]\n", "include[0].variant: unknown variant 'asm' (did you mean 'asam' or "
                "'sam'?); a variant of your own: its file in a folder named in SAMBENCH_VARIANT_PATH"),
    "sparsity_one": (BASE + "grid: {mask: random, sparsity: 1.0}\n", "grid.sparsity: sparsity 1.0 must be a number in [0, 1)"),
    "sparsity_negative": ("name: t\ndefaults: {dataset: digits, model: resnet_ci, mask: random, sparsity: -0.1}\n",
                          "defaults.sparsity: sparsity -0.1 must be a number in [0, 1)"),
    "sparsity_baseline": (BASE + "include: [{variant: none, sparsity: 1.0}]\n", "include[0].sparsity: sparsity 1.0"),
    "rho": (BASE + "include: [{rho: -0.5}]\n", "include[0].rho: must be a number >= 0, got -0.5"),
    "seeds_type": (BASE + "seeds: 3\n", "seeds: must be a non-empty list of integers >= 0, got 3"),
    "grid_type": (BASE + "grid: 5\n", "grid: must be a mapping or a list of mappings, got 5"),
    "epochs_type": ("name: t\ndefaults: {epochs: ten}\n", "defaults.epochs: must be an integer >= 1 and <= 100,000, got 'ten'"),
    "yaml": ("name: t\ndefaults: {dataset: digits\ngrid: [\n", "line 3, column 5: YAML syntax error"),
    "empty_grid": (BASE + "grid: []\n", "grid: empty list: the suite has no runs"),
    "empty_axis": (BASE + "grid: [{mask: all}, {rho: []}]\n", "grid[1].rho: empty list: the grid has no runs"),
    "norm_only_no_norms": (BASE + "grid: {model: test_nonorm, mask: [all, norm_only]}\n",
                           "grid.mask: 'norm_only' on 'test_nonorm': mask 'norm_only' selects no parameter"),
    "match_no_norms": (BASE + "grid: {model: test_nonorm, mask: random, sparsity: 'match:norm_only'}\n",
                       "grid.sparsity: 'match:norm_only' on 'test_nonorm'"),
    "variant_option": (BASE + "grid: {variant: asam, variant_opts: {pp: 3}}\n",
                       "grid.variant_opts: variant 'asam' has no option 'pp' (did you mean 'p'?) (allowed: adaptive, p, "
                       "eta, normalize_bias, m, sam_start_epoch)"),
    "name": ("name: ../up\n", "name: must be a folder name"),
    "slurm": (BASE + "slurm: {partitoin: gpu}\n", "slurm.partitoin: unknown key (did you mean 'partition'?) (allowed: "
              "account, "),
    "logging": (BASE + "logging: {wandb: {mode: cloud}}\n",
                "logging.wandb.mode: got 'cloud' (allowed: online, offline, disabled)"),
    "logging_base": (BASE + "grid: {rho: [1], base: {name: lion, lr: 0}}\n",
                     "grid.base.lr: must be a number > 0 for lion, got 0"),
    "label_noise": (BASE + "grid: {label_noise: [0.2, 1.5]}\n", "grid.label_noise: must be a fraction in [0, 1)"),
    "label_noise_type": (BASE + "include: [{label_noise: 0.2, label_noise_type: pairs}]\n",
                         "include[0].label_noise_type: got 'pairs' (allowed: symmetric, asymmetric)"),
    "sharpness": (BASE + "include: [{sharpness: {n_sample: 5}}]\n",
                  "include[0].sharpness.n_sample: unknown option (allowed: batch_size, "),
    "sharpness_radii": ("name: t\ndefaults: {dataset: digits, model: resnet_ci, sharpness: {radii: {l2: [1]}}}\n",
                        "defaults.sharpness.radii.l2: unknown family (allowed: l2_standard, "),
    "reference_key": (BASE + "reference: {sources: x, entries: [{mean: 1}]}\n",
                      "reference.sources: unknown key (allowed: source, metric, entries)"),
    "reference_mean": (BASE + "reference: {source: x, entries: [{mask: all, mean: 1}, {mask: all, std: 1}]}\n",
                       "reference.entries[1].mean: must be a number (the published value), got None"),
    "reference_source": (BASE + "reference: {entries: [{mask: all, mean: 1}]}\n",
                         "reference.entries[0].source: missing: give it here or as reference.source"),
    "reference_field": (BASE + "reference: {source: x, entries: [{mask: all, lr: 0.1, mean: 1}]}\n",
                        "reference.entries[0].lr: not a run-config field or entry key (allowed: "),
    "reference_mask": (BASE + "reference: {source: x, entries: [{mask: randm, mean: 1}]}\n",
                       "reference.entries[0].mask: unknown mask 'randm' (allowed: all, "),
}


def _listing(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


@pytest.mark.parametrize("case", list(MALFORMED), ids=list(MALFORMED))
def test_malformed_suite_exits_2(case, tmp_path, capsys):
    text, expected = MALFORMED[case]
    suite = write(tmp_path, text, "bad.yaml")
    existing = tmp_path / "results"
    (existing / "other").mkdir(parents=True)
    (existing / "other" / "keep.txt").write_text("x")
    before = _listing(tmp_path)
    for out, extra in ((existing, []), (tmp_path / "fresh", ["--dry-run"]), (tmp_path / "fresh", [])):
        code = cli.main(["run", str(suite), "--out", str(out), "--executor", "debug", *extra])
        err = capsys.readouterr().err
        assert code == 2, err
        assert f"{suite}: {expected}" in err, err
        assert "Traceback" not in err
    assert _listing(tmp_path) == before
    assert not (tmp_path / "fresh").exists()


def test_malformed_override_exits_2(tmp_path, capsys):
    suite = write(tmp_path, BASE)
    for sets, expected in ((["rho=-1"], "--set rho: must be a number >= 0"),
                           (["foo=1"], "--set foo: unknown key (allowed: "),
                           (["slurm.cpus_per_task=0"], "--set slurm.cpus_per_task: must be an integer >= 1"),
                           (["epochs"], "expected key=value")):
        code = cli.main(["run", str(suite), "--out", str(tmp_path / "o"), "--executor", "debug",
                         *[a for s in sets for a in ("--set", s)]])
        err = capsys.readouterr().err
        assert code == 2 and expected in err, err
    assert not (tmp_path / "o").exists()


def test_missing_file_and_error_type(tmp_path, capsys):
    assert cli.main(["run", str(tmp_path / "nope.yaml"), "--out", str(tmp_path / "o")]) == 2
    assert "nope.yaml: no such suite file" in capsys.readouterr().err
    with pytest.raises(SuiteError) as info:
        load_suite(write(tmp_path, "name: t\ngrid: {mask: randm}\n"))
    assert isinstance(info.value, cli.InvalidInput)


def test_reference_block_is_checked_and_scoped(tmp_path):
    s = load_suite(REPO / "suites" / "cifar100_rho_sweep.yaml")
    by_label = {(e["match"].get("variant"), e["match"].get("variant_opts.adaptive"), e["match"].get("variant_opts.p"),
                 e["match"].get("mask")): e for e in s.reference}
    e = by_label[("asam", "elementwise", "inf", "norm_only")]
    assert e["mean"] == 84.75 and e["match"]["rho"] == 0.1 and e["std"] is None and "rho-sweep" in e["source"]
    assert by_label[("none", None, None, None)]["source"].startswith("Mueller et al., NeurIPS 2023 (SAM-ON), main")
    from bench.orchestration.reference import scoped

    scope = scoped(s.reference, s.runs)[0]["match"]
    assert scope["dataset"] == "cifar100" and scope["model"] == "wrn28_10" and scope["label_noise"] == 0.0
    mixed = load_suite(write(tmp_path, BASE + """\
        grid: {model: [resnet_ci, vit_ci]}
        reference: {source: x, entries: [{mask: all, mean: 1}]}
        """))
    assert scoped(mixed.reference, mixed.runs)[0]["match"] == {"dataset": "digits", "label_noise": 0.0,
                                                               "mask": "all"}
