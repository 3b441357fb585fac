"""A new mask strategy is one file: docs/masks-and-variants.md's example, from a folder of its own, used by a suite."""
import re
from pathlib import Path

from bench import io

ROOT = Path(__file__).resolve().parents[1]


def documented_example() -> str:
    text = (ROOT / "docs/masks-and-variants.md").read_text()
    block = re.search(r"```python\n(# masks/every_other\.py\n.*?)```", text, re.S)
    assert block, "docs/masks-and-variants.md lost its 'Adding a mask strategy' example"
    return block.group(1)


def test_one_new_file_is_listed_and_usable_from_a_suite(tmp_path, run_sambench, sambench_env):
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    (plugins / "every_other.py").write_text(documented_example())
    env = {**sambench_env, "SAMBENCH_MASK_PATH": str(plugins)}

    listed = run_sambench("list", "masks", env=env)
    assert listed.returncode == 0, listed.stderr
    assert "every_other" in listed.stdout and "every second element" in listed.stdout

    suite = tmp_path / "plugin.yaml"
    suite.write_text(
        "name: plugin\n"
        "defaults: {dataset: digits, model: resnet_ci, epochs: 1, variant: sam, rho: 0.1, device: cpu}\n"
        "grid: {mask: [every_other], mask_opts.offset: [0, 1]}\n"
    )
    out = tmp_path / "out"
    run = run_sambench("run", str(suite), "--out", str(out), "--executor", "debug", env=env)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    results = [io.read_json(p) for p in sorted((out / "plugin").glob("*/result.json"))]
    assert len(results) == 2 and all(r["status"] == "done" for r in results)

    # it perturbed exactly what the file says: every second element of each weight tensor
    from bench.models import create_model_for

    model = create_model_for("resnet_ci", "digits")
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
    rejected = run_sambench("run", str(suite), "--out", str(tmp_path / "out2"), "--executor", "debug", env=env)
    assert rejected.returncode == 2 and "every_other" in rejected.stderr
    assert not (tmp_path / "out2").exists()
