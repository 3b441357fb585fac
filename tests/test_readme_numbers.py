"""The README's demo numbers tell the truth about HEAD (analysis/readme_numbers.py).

Fast checks of `make test`: README.md's demo blocks are what docs/demo_numbers.json gives; the
committed runs are the runs suites/demo.yaml expands to at HEAD; one of them, trained again here,
gives its committed numbers bit for bit (same torch, CPU and thread count; else skipped, saying
why). `make check-readme` reruns the whole demo and compares every run. The generator's own rules
(blocks, stale results, what counts as a difference) on small hand-made results.
"""
from __future__ import annotations

import copy
import json
import platform
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
import analysis_fixtures as F  # noqa: E402

from analysis import readme_numbers as rn  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def committed() -> dict:
    return rn.load_numbers()


def test_readme_blocks_are_what_the_committed_numbers_give(committed):
    assert rn.check_readme(committed, (REPO / "README.md").read_text()) == []
    for path in committed["figures"]:
        assert (REPO / path).is_file() and (REPO / path).stat().st_size < 400_000, path


def test_the_committed_runs_are_the_runs_of_suites_demo_yaml_at_head(committed):
    """A changed demo (or a changed default that moves run ids) needs `make readme-figures`."""
    from bench.orchestration.suite import load_suite

    suite = load_suite(REPO / "suites" / "demo.yaml")
    want = {rid: cfg for rid, cfg in suite.items()}
    have = {r["run_id"]: {**committed["common_config"], **r["config"]} for r in committed["runs"]}
    assert sorted(have) == sorted(want), "suites/demo.yaml runs other runs: make readme-figures"
    for rid, cfg in want.items():
        assert json.loads(json.dumps(cfg)) == have[rid], rid


def _comparable(committed: dict) -> str | None:
    """Why this machine cannot give the committed numbers bit for bit, or None."""
    import torch

    machine = committed["machine"]
    if torch.__version__ != machine["torch"]:
        return f"torch {torch.__version__} here, {machine['torch']} for the committed numbers"
    if machine.get("cpu") and rn._cpu() != machine["cpu"]:
        return f"CPU {rn._cpu()} here, {machine['cpu']} for the committed numbers"
    if platform.machine() != machine.get("device_name"):
        return f"{platform.machine()} here, {machine.get('device_name')} for the committed numbers"
    return None


def test_a_demo_run_trains_again_to_its_committed_numbers(committed, tmp_path):
    """The cheapest run that perturbs (SAM's code path, not only the base optimizer's), trained at
    HEAD with the committed thread count (sharpness and loggers off: runtime fields, same run id)."""
    import torch

    from bench import config
    from bench.engine import train

    reason = _comparable(committed)
    if reason:
        pytest.skip(f"not comparable bit for bit: {reason}; make check-readme there, or make readme-figures")
    sam = [r for r in committed["runs"] if {**committed["common_config"], **r["config"]}["variant"] != "none"]
    run = min(sam, key=lambda r: r["wall_time_s"])
    cfg = {**committed["common_config"], **run["config"], "sharpness": None, "device": "cpu",
           "logging": {"tensorboard": False, "wandb": False, "mlflow": False}}
    assert config.run_id(config.resolve(cfg)) == run["run_id"]
    before = torch.get_num_threads()
    torch.set_num_threads(run["threads_used"][0])
    try:
        result = train.run(cfg, tmp_path / run["run_id"], progress=False, log=lambda msg: None)
    finally:
        torch.set_num_threads(before)
    assert result["threads_used"] == run["threads_used"]
    assert {k: result[k] for k in rn.EXACT} == {k: run[k] for k in rn.EXACT}


# --- the generator's rules, on hand-made results ----------------------------------------------------

def _demo_like(root: Path, commit: str = "abc123") -> Path:
    """A finished suite: SGD, dense SAM at two rhos and SAM-ON, 3 seeds, with sharpness."""
    accs = {("none", "all", 0.05): [60, 61, 62], ("sam", "all", 0.05): [63, 64, 66],
            ("sam", "all", 0.1): [65, 66, 67], ("sam", "norm_only", 1.0): [70, 72, 71]}
    env = {**F.ENV, "git_commit": commit}
    for (variant, mask, rho), values in accs.items():
        for seed, acc in enumerate(values):
            cfg = F.make_cfg(variant=variant, mask=mask, rho=rho, seed=seed, label_noise=0.4,
                             label_noise_type="symmetric", augment=False)
            d = F.write_run(root, "demo", cfg, test_acc=float(acc), sharpness={"hessian_max_eig": 100.0 - acc})
            result = json.loads((d / "result.json").read_text())
            result.update(env=env, threads_used=[1])
            (d / "result.json").write_text(json.dumps(result))
    return root / "demo"


def test_blocks_come_from_the_results_and_name_what_was_run(tmp_path):
    numbers = rn.numbers_from_results(_demo_like(tmp_path), "make readme-figures")
    numbers["figures"] = list(rn.FIGURES.values())
    blocks = rn.blocks(numbers)
    text = blocks["demo-numbers"]
    # means at each method's best rho; dense SAM's best is 0.1: 66 +- 1; SAM-ON - dense = 5, 6, 4
    assert "dense SAM (`all`, ρ = 0.1) 66.0 ± 1.0%" in text and "SGD 61.0 ± 1.0%" in text
    assert "SAM-ON (`norm_only`) − dense SAM (`all`) +5.0 [+2.5, +7.5]" in text  # t(0.975, 2) = 4.303
    assert "from the runs of commit `abc123`" in text and "3 seeds, 12 runs" in text
    assert "Spearman rank correlation" in text and "-1.00" in text  # sharpness = 100 - acc
    assert blocks["demo-compare"].startswith("```console\n$ sambench table results/demo --compare norm_only@1 all@0.1\n")
    assert "+5.000 test_acc, 95% CI [+2.516, +7.484]" in blocks["demo-compare"]


def test_stale_or_unfinished_results_are_refused(tmp_path):
    folder = _demo_like(tmp_path / "a")
    with pytest.raises(rn.NumbersError) as info:
        rn.numbers_from_results(folder, "x", head="def456")
    assert info.value.status == 1 and "abc123" in str(info.value) and "def456" in str(info.value)
    rn.numbers_from_results(folder, "x", head="abc123")  # the right commit
    F.write_run(tmp_path / "a", "demo", F.make_cfg(seed=7), result="none")  # one run not finished
    with pytest.raises(rn.NumbersError) as info:
        rn.numbers_from_results(folder, "x")
    assert info.value.status == 2 and "not every run finished" in str(info.value)


def test_a_changed_number_or_thread_count_is_a_difference(tmp_path):
    numbers = rn.numbers_from_results(_demo_like(tmp_path), "x")
    assert rn.compare_numbers(copy.deepcopy(numbers), numbers) == []
    moved = copy.deepcopy(numbers)
    moved["runs"][0]["test_acc"] += 1e-9
    moved["runs"][1]["sharpness"]["hessian_max_eig"] = 0.0
    moved["runs"][2]["threads_used"] = [2]
    problems = rn.compare_numbers(moved, numbers)
    assert len(problems) == 3 and "test_acc" in problems[0] and "hessian_max_eig" in problems[1]
    assert "not comparable" in problems[2]


def test_the_blocks_are_rewritten_in_place_and_a_missing_marker_is_an_error():
    text = "a\n<!-- demo-numbers:begin -->\nold\n<!-- demo-numbers:end -->\nb\n" \
           "<!-- demo-compare:begin -->\nx\n<!-- demo-compare:end -->\nc\n"
    new = rn.replace_blocks(text, {"demo-numbers": "new\nlines", "demo-compare": "y"})
    assert new == text.replace("old", "new\nlines").replace("\nx\n", "\ny\n")
    assert rn.read_blocks(new) == {"demo-numbers": "new\nlines", "demo-compare": "y"}
    with pytest.raises(rn.NumbersError):
        rn.read_blocks(text.replace("<!-- demo-compare:end -->", ""))


def test_check_exits_1_when_the_readme_was_edited_by_hand(tmp_path, monkeypatch, capsys):
    readme = tmp_path / "README.md"
    readme.write_text((REPO / "README.md").read_text().replace("seeds, ", "seeds,  ", 1))
    monkeypatch.setattr(rn, "README", readme)
    assert rn.main(["--check"]) == 1
    assert "block demo-numbers differs" in capsys.readouterr().out
