"""The performance path: what the fast step skips, and `sambench perf` output (no timing asserted)."""
import copy
import json

import torch
from torch import nn

import masks
from bench.cli import app as cli
from bench.engine.amp import autocast_factory
from bench.engine.sam import SAM
from bench.models import create_model_for
from bench.perf.timing import LoopSAM, parse_configs
from masks.base import Mask


class OnlyPrefix(Mask):
    """Whole tensors under some module-name prefixes (a structured, layerwise-like mask)."""

    def __init__(self, prefixes):
        super().__init__()
        self.prefixes = prefixes

    def select(self, model, data):
        return {n: torch.ones_like(p, dtype=torch.bool) for n, p in model.named_parameters()
                if n.startswith(tuple(self.prefixes))}


def resnet():
    torch.manual_seed(0)
    return create_model_for("resnet_ci", "digits")


def data():
    g = torch.Generator().manual_seed(0)
    return torch.randn(16, 1, 8, 8, generator=g), torch.randint(0, 10, (16,), generator=g)


def test_ascent_backward_stops_at_the_earliest_perturbed_layer():
    model = resnet()
    opt = SAM(model, torch.optim.SGD(model.parameters(), lr=0.1), rho=0.5, mask=OnlyPrefix(["stages.2"]))
    fired = set()

    def watch(name):  # a tensor hook fires only if autograd computes the gradient of that output
        def hook(module, inputs, output):
            output.register_hook(lambda g: fired.add(name))
        return hook

    for name, module in model.named_modules():
        if name.count(".") == 2 and name.startswith("stages."):  # the blocks of each stage
            module.register_forward_hook(watch(name))
    x, y = data()
    opt.first_step(loss=nn.functional.cross_entropy(model(x), y))
    assert fired and all(name.startswith("stages.2") for name in fired), fired
    assert all(p.grad is None for p in model.parameters())
    fired.clear()
    nn.functional.cross_entropy(model(x), y).backward()  # the descent pass goes all the way
    assert any(name.startswith("stages.0") for name in fired)
    opt.second_step()


def test_norm_only_ascent_computes_no_weight_gradients():
    model = resnet()
    opt = SAM(model, torch.optim.SGD(model.parameters(), lr=0.1), rho=0.5, mask="norm_only")
    computed = []
    for n, p in model.named_parameters():
        p.register_hook(lambda g, n=n: computed.append(n))
    x, y = data()
    opt.first_step(loss=nn.functional.cross_entropy(model(x), y))
    assert sorted(computed) == sorted(opt.selection) == sorted(masks.norm_param_names(model))
    assert all(p.grad is None for p in model.parameters())


def test_loop_baseline_equals_dense_sam():
    """The in-repo baseline is the same algorithm (only slower), so its ratio is a fair reference."""
    a, b = resnet(), resnet()
    a.load_state_dict(b.state_dict())
    x, y = data()
    crit = nn.CrossEntropyLoss()
    loop = LoopSAM(a, torch.optim.SGD(a.parameters(), lr=0.1, momentum=0.9), rho=0.05)
    loop.step(a, x, y, crit, autocast_factory("none", "cpu"))
    opt = SAM(b, torch.optim.SGD(b.parameters(), lr=0.1, momentum=0.9), rho=0.05, mask="all")
    crit(b(x), y).backward()
    opt.first_step(zero_grad=True)
    crit(b(x), y).backward()
    opt.second_step(zero_grad=True)
    for (n, pa), pb in zip(a.named_parameters(), b.parameters()):
        torch.testing.assert_close(pa, pb, rtol=1e-5, atol=1e-6, msg=n)


def test_perf_command_writes_records(tmp_path, capsys):
    out = tmp_path / "perf.json"
    code = cli.main(["perf", "--device", "cpu", "--model", "resnet_ci", "--dataset", "digits", "--batch-size",
                     "32", "--steps", "2", "--warmup", "1", "--configs", "sam:all,sam:norm_only", "--json",
                     str(out)])
    assert code == 0
    records = json.loads(out.read_text())
    assert [r["label"] for r in records] == ["sgd", "sam:all", "sam:norm_only"]
    for r in records:
        assert {"model", "batch_size", "device", "amp", "variant", "mask", "ms", "ratio_vs_sgd"} <= set(r)
        assert r["ms"] > 0 and r["model"] == "resnet_ci" and r["batch_size"] == 32
    assert records[0]["ratio_vs_sgd"] == 1.0
    assert records[2]["perturbed_fraction"] < records[1]["perturbed_fraction"] == 1.0
    assert "x SGD" in capsys.readouterr().out


def test_perf_presets_parse():
    default = parse_configs("default")
    assert default[0].variant == "none" and any(c.variant == "loop" for c in default)
    custom = parse_configs("asam:norm_only:adaptive=layerwise;p=inf")
    assert custom[1].variant_opts == {"adaptive": "layerwise", "p": "inf"}
    assert copy.deepcopy(custom[1]).mask == "norm_only"


def test_time_steps_records_peak_memory():
    """Peak memory per configuration: measured alone on CUDA (a dense SAM step needs at least
    what an SGD step needs), null on a CPU."""
    from bench.perf.timing import time_steps

    device = "cuda" if torch.cuda.is_available() else "cpu"
    recs = time_steps("resnet_ci", 16, device, False, parse_configs("sam:all"), steps=1, warmup=0,
                      dataset="digits")
    assert [r["label"] for r in recs] == ["sgd", "sam:all"]
    if device == "cpu":
        assert all(r["peak_mem_mib"] is None for r in recs)
    else:
        assert 0 < recs[0]["peak_mem_mib"] <= recs[1]["peak_mem_mib"]


def test_time_epoch_against_its_steps():
    from bench.perf.timing import time_epoch

    rec = time_epoch("resnet_ci", "digits", 512, "cpu", False)
    assert rec["steps"] == 3 and rec["epoch_s"] > 0 and rec["sum_step_s"] > 0
    # the ratio of the unrounded times; the times themselves are stored rounded to 0.1 ms
    assert abs(rec["ratio"] - rec["epoch_s"] / rec["sum_step_s"]) <= 0.01 * rec["ratio"]
    assert 0 < rec["loader_s"] < rec["epoch_s"]
