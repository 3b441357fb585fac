"""The engine's shape: dependencies point down (no module imports the CLI, no import cycles),
every module imports alone, one model-name rule, variant options read from the registry."""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest
from analysis_fixtures import VARIANT_DEFAULTS

from bench import config, registries
from bench.errors import InvalidInput

REPO = Path(__file__).resolve().parents[1]
MODULES = sorted(f"bench.{p.stem}" for p in (REPO / "bench").glob("*.py") if p.stem != "__init__")


def _imports(module: str) -> set[str]:
    """Every bench module ``module`` imports, at the top or inside a function."""
    path = REPO / (module.replace(".", "/") + ".py")
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        else:
            continue
        found |= {n for n in names if n in MODULES}
    return found - {module}


def test_no_engine_module_imports_the_cli():
    importers = sorted(m for m in MODULES if "bench.cli" in _imports(m))
    assert importers == ["bench.__main__"], importers


def test_the_import_graph_has_no_cycles():
    graph = {m: _imports(m) for m in MODULES}
    state: dict[str, str] = {}

    def visit(m: str, path: list[str]) -> None:
        state[m] = "open"
        for dep in sorted(graph[m]):
            assert state.get(dep) != "open", " -> ".join(path + [m, dep])
            if dep not in state:
                visit(dep, path + [m])
        state[m] = "done"

    for m in MODULES:
        if m not in state:
            visit(m, [])
    assert graph["bench.errors"] == set()  # the leaf every layer may use
    assert graph["bench.registries"] == set()  # providers are imported by name, on first lookup


def test_each_module_imports_alone_in_a_fresh_interpreter():
    code = "import importlib, sys; importlib.import_module(sys.argv[1])"
    modules = [m for m in MODULES if m != "bench.__main__"]  # __main__ runs the command line
    for start in range(0, len(modules), 4):  # four interpreters at a time
        procs = {m: subprocess.Popen([sys.executable, "-c", code, m], cwd=REPO, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE, text=True) for m in modules[start:start + 4]}
        for module, proc in procs.items():
            err = proc.communicate(timeout=180)[1]
            assert proc.returncode == 0, f"{module}:\n{err[-2000:]}"


def test_one_model_name_rule():
    from bench.models import create_model

    for name in ("wrn4_1", "wrn16_0", "wrn17_2", "resnet99", "timm:no_such_model_xyz"):
        assert not registries.model_exists(name), name
        with pytest.raises(config.ConfigError) as info:
            config.resolve({"model": name})
        assert info.value.field == "model"
        with pytest.raises(registries.UnknownNameError):
            create_model(name, num_classes=10)
    for name in ("wrn10_1", "resnet_ci"):
        assert registries.model_exists(name)
        create_model(name, num_classes=10, in_chans=1, img_size=8)


def test_variant_options_come_from_the_registered_signatures():
    assert registries.variant_options("none") == {}
    for name, defaults in VARIANT_DEFAULTS.items():
        assert registries.variant_options(name) == defaults, name

    class Toy:
        def __init__(self, alpha: float = 0.5, *, mode: str = "a", required=None):
            pass

    registries.VARIANTS.register("toy_options")(Toy)
    try:
        assert registries.variant_options("toy_options") == {"alpha": 0.5, "mode": "a", "required": None}
    finally:
        registries.VARIANTS.unregister("toy_options")


def test_default_variant_options_are_one_experiment():
    plain = config.resolve({"variant": "sam"})
    spelled = config.resolve({"variant": "sam", "variant_opts": {"p": 2}})
    as_float = config.resolve({"variant": "sam", "variant_opts": {"p": 2.0}})
    other = config.resolve({"variant": "sam", "variant_opts": {"p": "inf"}})
    assert spelled["variant_opts"] == as_float["variant_opts"] == {} and other["variant_opts"] == {"p": "inf"}
    assert config.run_id(plain) == config.run_id(spelled) == config.run_id(as_float) != config.run_id(other)
    asam = config.resolve({"variant": "asam", "variant_opts": {"adaptive": "layerwise", "eta": 0.01}})
    assert asam["variant_opts"] == {"adaptive": "layerwise"}
    assert config.variant_options(asam) == {**VARIANT_DEFAULTS["asam"], "adaptive": "layerwise"}


def test_errors_carry_their_field_as_data():
    cases = {"rho": {"rho": -1}, "variant_opts.adaptive": {"variant": "asam", "variant_opts": {"adaptive": "x"}},
             "sparsity": {"mask": "random", "sparsity": "match:nope"}, "base.lr": {"base": {"lr": "fast"}},
             "mask_opts.num_samples": {"mask": "fisher", "sparsity": 0.9, "mask_opts": {"num_samples": -3}}}
    for field, over in cases.items():
        with pytest.raises(config.ConfigError) as info:
            config.resolve(over)
        assert isinstance(info.value, InvalidInput)
        assert info.value.field == field, (field, str(info.value))
        assert str(info.value).startswith(f"{field}: ")


def test_validation_is_a_list_of_named_steps():
    names = [step.__name__ for step in config.STEPS]
    assert len(names) == len(set(names)) >= 10
    assert {"_keys", "_finite", "_rho", "_seed", "_device", "_base", "_variant_opts", "_sparsity"} <= set(names)
