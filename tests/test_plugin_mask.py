"""A new mask strategy is one file: the README's example, from a folder of its own, used by a suite."""
import os
import re
import subprocess
import sys
from pathlib import Path

from bench import io

ROOT = Path(__file__).resolve().parents[1]


def readme_example() -> str:
    text = (ROOT / "README.md").read_text()
    block = re.search(r"```python\n(# masks/every_other\.py\n.*?)```", text, re.S)
    assert block, "the README lost its 'Adding a mask strategy' example"
    return block.group(1)


def sambench(*args, env):
    return subprocess.run([sys.executable, "-m", "bench", *args], capture_output=True, text=True, env=env,
                          cwd=ROOT, timeout=300)


def test_one_new_file_is_listed_and_usable_from_a_suite(tmp_path):
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    (plugins / "every_other.py").write_text(readme_example())
    env = {**os.environ, "SAMBENCH_MASK_PATH": str(plugins), "OMP_NUM_THREADS": "2"}

    listed = sambench("list", "masks", env=env)
    assert listed.returncode == 0, listed.stderr
    assert "every_other" in listed.stdout and "every second element" in listed.stdout

    suite = tmp_path / "plugin.yaml"
    suite.write_text(
        "name: plugin\n"
        "defaults: {dataset: digits, model: resnet_ci, epochs: 1, variant: sam, rho: 0.1, device: cpu}\n"
        "grid: {mask: [every_other], mask_opts.offset: [0, 1]}\n"
    )
    out = tmp_path / "out"
    run = sambench("run", str(suite), "--out", str(out), "--executor", "debug", env=env)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    results = [io.read_json(p) for p in sorted((out / "plugin").glob("*/result.json"))]
    assert len(results) == 2 and all(r["status"] == "done" for r in results)

    # it perturbed exactly what the file says: every second element of each weight tensor
    from bench import models as M

    model = M.create_model("resnet_ci", num_classes=10, in_chans=1, img_size=8)
    want = {0: 0, 1: 0}
    for n, p in model.named_parameters():
        if n.endswith("weight"):
            want[0] += (p.numel() + 1) // 2
            want[1] += p.numel() // 2
    got = {r["config"]["mask_opts"]["offset"]: r["n_perturbed"] for r in results}
    assert got == want
    assert all(r["test_acc"] is not None for r in results)

    # without the folder on the path the name is unknown, and the suite is rejected (exit 2)
    env.pop("SAMBENCH_MASK_PATH")
    rejected = sambench("run", str(suite), "--out", str(tmp_path / "out2"), "--executor", "debug", env=env)
    assert rejected.returncode == 2 and "every_other" in rejected.stderr
    assert not (tmp_path / "out2").exists()
