"""Plugins that go wrong: a mask or variant file with a syntax error, one that raises when imported,
two files registering one name, a strategy that raises or returns wrong shapes, a variant whose
direction has the wrong shapes. Each is one clear line naming the plugin file and what is wrong:
exit 2 before anything is written when it shows at validation, the run recorded as failed (and the
other runs finished) when it only shows while training."""
from __future__ import annotations

import os
import sys
import textwrap
from pathlib import Path

import pytest
import torch

import masks
from bench import config, io
from bench.engine import train
from bench.registries import VARIANTS
from masks.base import MASKS, MaskError
from masks.registry import PLUGIN_FILES, PluginError, import_modules

QUIET = {"logging": {"tensorboard": False, "wandb": False, "mlflow": False}}


def write_plugin(folder: Path, name: str, text: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.py"
    path.write_text(textwrap.dedent(text))
    return path


@pytest.fixture
def loaded(monkeypatch):
    """``loaded(folder, env)``: import a plugin folder in this process; registrations undone after."""
    masks.load_all()  # the built-in ones stay
    before_masks, before_variants = set(MASKS.names()), set(VARIANTS.names())
    prefixes = []

    def load(folder: Path, env: str = "SAMBENCH_MASK_PATH") -> None:
        monkeypatch.setenv(env, str(folder))
        prefix = f"test_plugin_faults_{len(prefixes)}_{folder.name}"
        prefixes.append(prefix)
        import_modules("masks", [], (), env, prefix)  # the plugin folder only (no package modules)

    yield load
    for name in set(MASKS.names()) - before_masks:
        MASKS.unregister(name)
    for name in set(VARIANTS.names()) - before_variants:
        VARIANTS.unregister(name)
    for mod in [m for m in sys.modules if m.startswith(tuple(prefixes))] if prefixes else []:
        module = sys.modules.pop(mod)
        PLUGIN_FILES.discard(os.path.abspath(getattr(module, "__file__", "") or ""))


# --- import time: exit 2, one line naming the file ------------------------------------------------

def test_a_plugin_with_a_syntax_error_is_one_line_naming_the_file_exit_2(tmp_path, run_sambench, sambench_env):
    bad = write_plugin(tmp_path / "plugins", "broken", "from masks import Mask\ndef oops(:\n    pass\n")
    env = {**sambench_env, "SAMBENCH_MASK_PATH": str(bad.parent)}
    for args in (["list", "masks"], ["train", "--dataset", "digits", "--model", "resnet_ci", "--epochs", "1",
                                     "--out", str(tmp_path / "run")]):
        done = run_sambench(*args, env=env)
        assert done.returncode == 2, done.stderr
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1 and "Traceback" not in done.stderr, done.stderr
        assert str(bad) in lines[0] and "line 2" in lines[0] and "SyntaxError" in lines[0]
        assert "SAMBENCH_MASK_PATH" in lines[0]
    assert not (tmp_path / "run").exists()


def test_a_plugin_raising_at_import_names_its_file_and_line_and_can_be_fixed(tmp_path, loaded):
    folder = tmp_path / "vplugins"
    bad = write_plugin(folder, "raises", """\
        import math
        RATE = math.sqrt(-1)
    """)
    with pytest.raises(PluginError) as info:
        loaded(folder, "SAMBENCH_VARIANT_PATH")
    text = str(info.value)
    assert str(bad) in text and "line 2" in text and "ValueError: math domain error" in text
    assert "SAMBENCH_VARIANT_PATH" in text
    # the broken module is not left half-imported: once fixed, the next load imports it
    bad.write_text("RATE = 2.0\n")
    loaded(folder, "SAMBENCH_VARIANT_PATH")
    assert any(m.endswith(".raises") and getattr(sys.modules[m], "RATE", None) == 2.0 for m in sys.modules)


def test_a_name_clash_names_both_files(tmp_path, loaded):
    clash = write_plugin(tmp_path / "plugins", "my_random", """\
        from masks import Mask, register_mask

        @register_mask("random")
        class Mine(Mask):
            def select(self, model, data):
                return {}
    """)
    with pytest.raises(PluginError) as info:
        loaded(clash.parent)
    text = str(info.value)
    assert str(clash) in text and str(Path(masks.__file__).parent / "random.py") in text
    assert "registered twice" in text
    assert MASKS.get("random").__module__ == "masks.random"  # the built-in one is kept


def test_an_unknown_mask_or_variant_suggests_the_plugin_path():
    with pytest.raises(config.ConfigError) as info:
        config.resolve({"mask": "every_other"})
    assert "SAMBENCH_MASK_PATH" in str(info.value) and info.value.field == "mask"
    with pytest.raises(config.ConfigError) as info:
        config.resolve({"variant": "gcsam"})
    assert "SAMBENCH_VARIANT_PATH" in str(info.value)
    with pytest.raises(masks.UnknownNameError) as info:
        masks.create_mask("every_other")
    assert "SAMBENCH_MASK_PATH" in str(info.value)


# --- strategies that raise or return wrong shapes --------------------------------------------------

BAD_MASKS = """\
    import torch
    from masks import Mask, register_mask
    from masks.base import trainable

    @register_mask("pf_wrong_shape")
    class WrongShape(Mask):
        def select(self, model, data):
            return {n: torch.ones(p.numel(), dtype=torch.bool) for n, p in trainable(model).items()}

    @register_mask("pf_float")
    class FloatMask(Mask):
        def select(self, model, data):
            return {n: torch.ones_like(p) for n, p in trainable(model).items()}

    @register_mask("pf_raises")
    class Raises(Mask):
        def select(self, model, data):
            return {"x": 1 / 0}

    @register_mask("pf_data_wrong_shape")
    class DataWrongShape(Mask):
        needs_data = True

        def select(self, model, data):
            next(iter(data))
            return {n: torch.ones(2, dtype=torch.bool) for n, p in trainable(model).items()}
"""


def test_a_strategy_returning_wrong_shapes_or_raising_is_a_mask_error_naming_its_file(tmp_path, loaded):
    path = write_plugin(tmp_path / "plugins", "bad_masks", BAD_MASKS)
    loaded(path.parent)
    model = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.LayerNorm(2))
    cases = {"pf_wrong_shape": "shape (6,) for '0.weight', whose shape is (2, 3)",
             "pf_float": "torch.float32 tensor for '0.weight'; a mask is a bool tensor",
             "pf_raises": "select() raised ZeroDivisionError: division by zero"}
    for name, what in cases.items():
        with pytest.raises(MaskError) as info:
            masks.create_mask(name).build(model)
        assert f"mask {name!r} ({path})" in str(info.value) and what in str(info.value), str(info.value)


def test_at_validation_a_bad_strategy_exits_2_and_writes_nothing(tmp_path, run_sambench, sambench_env, write_file):
    path = write_plugin(tmp_path / "plugins", "bad_masks", BAD_MASKS)
    suite = write_file("bad.yaml", """\
        name: bad
        defaults: {dataset: digits, model: resnet_ci, epochs: 1, device: cpu}
        grid: {mask: [norm_only, pf_wrong_shape]}
    """)
    env = {**sambench_env, "SAMBENCH_MASK_PATH": str(path.parent)}
    done = run_sambench("run", suite, "--out", tmp_path / "out", "--executor", "debug", env=env)
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    assert "grid.mask" in done.stderr and str(path) in done.stderr and "shape (72,) for 'stem.0.weight', whose shape is (8, 1, 3, 3)" in done.stderr
    assert not (tmp_path / "out").exists()


def test_at_training_time_the_run_is_recorded_failed_naming_the_file_and_the_others_finish(
        tmp_path, loaded, write_file, capsys):
    from bench.orchestration.runner import run_suite
    from bench.orchestration.suite import load_suite

    path = write_plugin(tmp_path / "plugins", "bad_masks", BAD_MASKS)
    loaded(path.parent)
    suite = write_file("late.yaml", """\
        name: late
        defaults: {dataset: digits, model: resnet_ci, epochs: 1, device: cpu, batch_size: 512,
                   logging: {tensorboard: false}}
        grid: {mask: [norm_only, pf_data_wrong_shape]}
    """)
    status = run_suite(load_suite(suite), tmp_path / "out", executor="debug")
    assert status == 1, capsys.readouterr()
    results = {r["config"]["mask"]: r for r in map(io.read_json, (tmp_path / "out" / "late").glob("*/result.json"))}
    assert results["norm_only"]["status"] == "done"
    bad = results["pf_data_wrong_shape"]
    assert bad["status"] == "failed"
    assert str(path) in bad["error"] and "select()" in bad["error"] and "whose shape is" in bad["error"]


BAD_VARIANTS = """\
    from bench.engine.variants import Variant, register_variant

    @register_variant("pf_flat")
    class Flat(Variant):
        \"\"\"returns flattened directions\"\"\"
        def direction(self, names, params, grads):
            return [g.flatten() for g in grads]

    @register_variant("pf_boom")
    class Boom(Variant):
        \"\"\"raises in its rule\"\"\"
        def direction(self, names, params, grads):
            raise RuntimeError("no direction today")
"""


def test_a_variant_whose_rule_fails_while_training_fails_its_run_naming_the_file(tmp_path, loaded):
    path = write_plugin(tmp_path / "vplugins", "bad_variants", BAD_VARIANTS)
    loaded(path.parent, "SAMBENCH_VARIANT_PATH")
    base = {"dataset": "digits", "model": "resnet_ci", "epochs": 1, "batch_size": 512, "device": "cpu",
            "mask": "all", **QUIET}  # flattening changes the conv weights' shapes
    errors = {}
    for name in ("pf_flat", "pf_boom"):
        run_dir = tmp_path / name
        with pytest.raises((ValueError, RuntimeError)):
            train.run({**base, "variant": name}, run_dir, progress=False, log=lambda m: None)
        result = io.read_json(run_dir / "result.json")
        assert result["status"] == "failed"
        errors[name] = result["error"]
    assert f"variant 'pf_flat' ({path}): direction() returned shape" in errors["pf_flat"]
    assert "whose shape is" in errors["pf_flat"]
    assert errors["pf_boom"].startswith("RuntimeError: no direction today (in plugin ")
    assert f"{path}, line 13)" in errors["pf_boom"]
