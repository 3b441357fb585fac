"""A new SAM variant is one file: docs/masks-and-variants.md's example, from a folder of its own, listed, trained."""
import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import torch
from torch import nn

from bench import io
from bench.engine.amp import autocast_factory
from bench.engine.sam import SAM
from bench.engine.step import train_step
from bench.registries import VARIANTS

ROOT = Path(__file__).resolve().parents[1]


def documented_example() -> str:
    text = (ROOT / "docs/masks-and-variants.md").read_text()
    block = re.search(r"```python\n(# my_variants/gcsam\.py\n.*?)```", text, re.S)
    assert block, "docs/masks-and-variants.md lost its 'Adding a SAM variant' example"
    return block.group(1)


def sambench(*args, env):
    return subprocess.run([sys.executable, "-m", "bench", *args], capture_output=True, text=True, env=env,
                          cwd=ROOT, timeout=300)


def test_one_new_file_is_listed_and_trains(tmp_path):
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    (plugins / "gcsam.py").write_text(documented_example())
    env = {**os.environ, "SAMBENCH_VARIANT_PATH": str(plugins), "OMP_NUM_THREADS": "2"}

    listed = sambench("list", "variants", env=env)
    assert listed.returncode == 0, listed.stderr
    assert "gcsam" in listed.stdout and "min_dim=2" in listed.stdout and "centralized ascent" in listed.stdout

    out = tmp_path / "run"
    run = sambench("train", "--dataset", "digits", "--model", "resnet_ci", "--variant", "gcsam", "--mask",
                   "norm_only", "--rho", "0.5", "--epochs", "1", "--device", "cpu", "--set",
                   "variant_opts.min_dim=1", "--out", str(out), env=env)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    result = io.read_json(out / "result.json")
    assert result["status"] == "done" and result["config"]["variant_opts"] == {"min_dim": 1}

    env.pop("SAMBENCH_VARIANT_PATH")  # without the folder the name is unknown: exit 2
    rejected = sambench("train", "--variant", "gcsam", "--epochs", "1", "--out", str(tmp_path / "no"), env=env)
    assert rejected.returncode == 2 and "gcsam" in rejected.stderr


def test_the_example_rule_is_what_a_step_does(tmp_path):
    """In process: one step of the example equals SAM along the centralized gradient, by hand."""
    path = tmp_path / "gcsam.py"
    path.write_text(documented_example())
    spec = importlib.util.spec_from_file_location("readme_gcsam", path)
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(4, 3), nn.LayerNorm(3), nn.ReLU(), nn.Linear(3, 2))
        ref = [p.detach().clone() for p in model.parameters()]
        g = torch.Generator().manual_seed(1)
        x, y = torch.randn(8, 4, generator=g), torch.randint(0, 2, (8,), generator=g)
        crit = nn.CrossEntropyLoss()
        opt = SAM(model, torch.optim.SGD(model.parameters(), lr=0.1), rho=0.3, variant="gcsam")
        train_step(model, opt, x, y, crit, autocast_factory("none", "cpu"))

        hand = nn.Sequential(nn.Linear(4, 3), nn.LayerNorm(3), nn.ReLU(), nn.Linear(3, 2))
        with torch.no_grad():
            for p, r in zip(hand.parameters(), ref):
                p.copy_(r)
        grads = torch.autograd.grad(crit(hand(x), y), list(hand.parameters()))
        d = [gr - gr.mean(dim=1, keepdim=True) if gr.dim() == 2 else gr for gr in grads]
        nrm = torch.sqrt(sum((t ** 2).sum() for t in d))
        with torch.no_grad():
            for p, t in zip(hand.parameters(), d):
                p.add_(0.3 * t / nrm)
        desc = torch.autograd.grad(crit(hand(x), y), list(hand.parameters()))
        for p, r, gd in zip(model.parameters(), ref, desc):
            torch.testing.assert_close(p.detach(), r - 0.1 * gd, rtol=1e-5, atol=1e-6)
    finally:
        VARIANTS.unregister("gcsam")
