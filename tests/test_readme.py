"""The README's suite example is a valid suite (54 runs: 3 + 3 + 9 + 2 configurations + SGD, x 3 seeds)."""
import re
from pathlib import Path

from bench.orchestration.suite import load_suite

ROOT = Path(__file__).resolve().parents[1]


def test_readme_suite_example_validates(tmp_path):
    text = (ROOT / "README.md").read_text()
    example = re.search(r"```yaml\n(.*?)```", text, re.S).group(1)
    path = tmp_path / "example.yaml"
    path.write_text(example)
    suite = load_suite(path)
    assert suite.name == "fmnist-sparsity"
    assert len(suite.runs) == (3 + 3 + 9 + 2 + 1) * 3
    asam = [r for r in suite.runs if r["variant"] == "asam"]
    assert len(asam) == 6 and all(r["variant_opts"] == {"normalize_bias": True} for r in asam)


def test_readme_logging_block_validates_and_is_runtime():
    import yaml

    from bench import config

    text = (ROOT / "README.md").read_text()
    block = next(b for b in re.findall(r"```yaml\n(.*?)```", text, re.S) if b.startswith("logging:"))
    logging = yaml.safe_load(block)["logging"]
    cfg = config.resolve({"logging": logging})
    assert cfg["logging"]["wandb"]["mode"] == "offline" and cfg["logging"]["tensorboard"] is True
    assert config.run_id(cfg) == config.run_id(config.resolve({}))  # not part of the run id
