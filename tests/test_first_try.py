"""What a new user hits first: exit codes and output of the command line, and library use that
works (or says what to do) on the first try; typos get the name one edit away, for every kind."""
from __future__ import annotations

import argparse
import subprocess
import sys

import pytest
import torch

import masks
from bench import config
from bench.cli import app
from bench.errors import did_you_mean, suggest
from bench.sam import SAM

# --- names one edit away ------------------------------------------------------------------------------


def test_suggest_takes_one_insertion_deletion_substitution_or_swap():
    names = ["random", "random_tensor", "norm_only", "no_norm", "sam", "asam", "epochs"]
    assert suggest("randm", names) == ["random"]           # deletion
    assert suggest("randoms", names) == ["random"]         # insertion
    assert suggest("rendom", names) == ["random"]          # substitution
    assert suggest("nrom_only", names) == ["norm_only"]    # two neighbours swapped
    assert suggest("Random", names) == ["random"]          # case
    assert suggest("epoch", names) == ["epochs"]
    assert suggest("rndm", names) == [] and suggest("random", names) == []  # two edits; the name itself
    assert suggest("xam", names) == ["sam"] and suggest("bsam", names) == ["sam", "asam"]
    assert did_you_mean("randm", names) == " (did you mean 'random'?)" and did_you_mean("zzz", names) == ""


@pytest.mark.parametrize("override, field, hint", [
    ({"mask": "randm"}, "mask", "'random'"),
    ({"variant": "asma"}, "variant", "'asam'"),
    ({"model": "resnet_cj"}, "model", "'resnet_ci'"),
    ({"dataset": "digit"}, "dataset", "'digits'"),
    ({"epoch": 3}, "epoch", "'epochs'"),
    ({"base": {"name": "adam"}}, "base.name", "'adamw'"),
    ({"variant": "asam", "variant_opts": {"adaptve": "layerwise"}}, "variant_opts", "'adaptive'"),
    ({"mask": "fisher", "sparsity": 0.9, "mask_opts": {"num_sample": 8}}, "mask_opts.num_sample", "'num_samples'"),
    ({"logging": {"tensorbord": True}}, "logging.tensorbord", "'tensorboard'"),
])
def test_every_kind_of_unknown_name_suggests_the_one_meant(override, field, hint):
    with pytest.raises(config.ConfigError) as info:
        config.resolve(override)
    assert info.value.field == field and f"did you mean {hint}?" in str(info.value), str(info.value)
    assert info.value.allowed  # and still the whole list


def test_registries_and_suites_suggest_too(write_file):
    from bench.orchestration.suite import SuiteError, load_suite
    from bench.registries import DATASETS, VARIANTS, parse_model_name
    from masks.registry import UnknownNameError

    for lookup, typo, meant in ((VARIANTS.get, "lookasam", "looksam"), (DATASETS.get, "cifar1O", "cifar10"),
                                (parse_model_name, "resnet_c", "resnet_ci"), (masks.create_mask, "fishr", "fisher")):
        with pytest.raises(UnknownNameError) as info:
            lookup(typo)
        assert f"did you mean '{meant}'?" in str(info.value)
    for text, where, meant in (("name: s\nseed: [0]\n", "seed", "seeds"),
                               ("name: s\ngrid: {mask: [all], rhoo: [0.1]}\n", "grid.rhoo", "rho"),
                               ("name: s\nslurm: {partitoin: gpu}\n", "slurm.partitoin", "partition")):
        with pytest.raises(SuiteError) as info:
            load_suite(write_file("s.yaml", text))
        assert f"{where}: unknown key (did you mean '{meant}'?)" in str(info.value), str(info.value)


# --- library use -------------------------------------------------------------------------------------

def test_the_davda54_signature_says_what_to_pass():
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.LayerNorm(4))
    with pytest.raises(TypeError) as info:
        SAM(model.parameters(), torch.optim.SGD, lr=0.1, momentum=0.9)
    text = str(info.value)
    assert "davda54/sam" in text and "pass the nn.Module itself" in text
    assert "SAM(model, torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9), rho=0.05" in text
    with pytest.raises(TypeError) as info:
        SAM(model, torch.optim.AdamW, lr=1e-3, adaptive=True)
    assert "torch.optim.AdamW(model.parameters(), lr=0.001)" in str(info.value) and 'variant="asam"' in str(info.value)
    SAM(model, torch.optim.SGD(model.parameters(), lr=0.1), rho=0.05)  # what it says works


def test_a_mask_option_typo_lists_the_allowed_options():
    with pytest.raises(TypeError) as info:
        masks.create_mask("fisher", sparsity=0.9, num_sampels=8)
    text = str(info.value)
    assert "has no option 'num_sampels' (did you mean 'num_samples'?)" in text
    assert "allowed: sparsity, seed, num_samples" in text and "update_every" in text


def test_a_data_mask_is_created_then_built_on_data():
    """The README's two lines: create_mask(...) then build(model, data=...) / opt.build_mask(loader)."""
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.LayerNorm(4), torch.nn.Linear(4, 2))
    batches = [(torch.randn(8, 3), torch.randint(0, 2, (8,)))]
    mask = masks.create_mask("fisher", sparsity="match:norm_only", num_samples=8)
    with pytest.raises(masks.MaskError, match="needs data"):
        mask.build(model)
    selection = mask.build(model, data=batches)
    assert masks.selection_count(selection) == 8  # as many as the LayerNorm's weight and bias
    opt = SAM(model, torch.optim.SGD(model.parameters(), lr=0.1), rho=0.5, mask=mask)
    opt.build_mask(batches)
    assert opt.n_perturbed == 8


# --- the command line ------------------------------------------------------------------------------

def test_no_prefix_matching_and_an_unknown_flag_gets_its_subcommands_usage(capsys):
    parser = app.build_parser()
    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)][0].choices
    assert not parser.allow_abbrev and all(not p.allow_abbrev for p in subs.values())
    for argv, usage, hint in ((["train", "--epoch", "3"], "usage: sambench train", "did you mean --epochs?"),
                              (["table", "results", "--latx"], "usage: sambench table", "did you mean --latex?"),
                              (["run", "s.yaml", "--dry"], "usage: sambench run", None)):
        with pytest.raises(SystemExit) as info:
            app.main(argv)
        err = capsys.readouterr().err
        assert info.value.code == 2 and err.startswith(usage), err
        assert f"unrecognized arguments: {' '.join(argv[-1:] if argv[0] != 'train' else argv[1:])}" in err
        assert hint is None or hint in err


def test_an_invalid_choice_suggests_the_one_meant(capsys):
    with pytest.raises(SystemExit) as info:
        app.main(["list", "mask"])
    err = capsys.readouterr().err
    assert info.value.code == 2 and err.startswith("usage: sambench list")
    assert "invalid choice: 'mask'" in err and "(did you mean 'masks'?)" in err


@pytest.mark.parametrize("command", ["collect", "plot", "table", "report"])
def test_result_commands_refuse_a_folder_without_runs(command, tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("not a run\n")
    for folder in (tmp_path, tmp_path / "empty"):
        folder.mkdir(exist_ok=True)
        before = sorted(p.name for p in folder.iterdir())
        assert app.main([command, str(folder)]) == 2
        err = capsys.readouterr().err
        assert f"sambench {command}: error: {folder}: no sambench runs" in err
        assert sorted(p.name for p in folder.iterdir()) == before  # nothing written


def test_dry_run_into_a_closed_pipe_has_no_traceback_and_shows_mask_opts(sambench_env, write_file):
    # 1,000 runs: a table longer than the pipe's buffer, so the writer is still writing when head exits
    suite = write_file("s.yaml", f"""\
        name: s
        defaults: {{dataset: digits, model: resnet_ci, epochs: 1}}
        grid:
          - {{mask: fisher, sparsity: 0.9, mask_opts: {{num_samples: 16}}, seed: {list(range(999))}}}
          - {{variant: none}}
    """)
    cmd = f"{sys.executable} -m bench run {suite} --dry-run | head -n 2"
    done = subprocess.run(["bash", "-o", "pipefail", "-c", cmd], env=sambench_env, capture_output=True,
                          text=True, timeout=120)
    assert "Traceback" not in done.stderr and "BrokenPipe" not in done.stderr, done.stderr
    assert done.returncode in (0, 141)  # 141: the writer saw its pipe close (128 + SIGPIPE)
    lines = done.stdout.splitlines()
    assert len(lines) == 2 and "fisher(num_samples=16)" in lines[1]
    full = subprocess.run([sys.executable, "-m", "bench", "run", str(suite), "--dry-run"], env=sambench_env,
                          capture_output=True, text=True, timeout=120)
    sgd = [ln for ln in full.stdout.splitlines() if " none " in ln]
    assert len(sgd) == 1 and sgd[0].split()[5:8] == ["-", "-", "-"]  # mask, sparsity, rho: not used by SGD
