"""The fast SAM step (bench.engine.fast_step) against the reference train_step and the formula.

Tolerances: the eager fused step runs the same per-tensor arithmetic as the reference, so its
weights after 3 steps are equal bit for bit; under torch.compile the graphs are the same
(backend aot_eager: equal bit for bit as well) and inductor's generated kernels reorder sums, so
its weights agree to rtol 1e-4, atol 1e-5 (float32; bf16 autocast on CUDA: rtol 5e-2, atol 5e-3).
"""
import shutil

import pytest
import torch
from torch import nn

from bench import config, io
from bench.cli import app as cli
from bench.engine import fast_step, train
from bench.engine.amp import autocast_factory
from bench.engine.fast_step import FastStep, FusedUpdate
from bench.engine.sam import SAM
from bench.engine.step import train_step
from bench.engine.variants.base import EPS
from bench.models import create_model_for

CASES = {  # (variant, mask, rho, variant options)
    "sam/all": ("sam", "all", 0.05, {}),
    "sam/norm_only": ("sam", "norm_only", 0.5, {}),
    "asam/norm_only": ("asam", "norm_only", 2.0, {}),
    "sam/all p=inf": ("sam", "all", 0.01, {"p": "inf"}),
}


def _setup(case, model_name="resnet_ci", seed=0, device="cpu"):
    variant, mask, rho, opts = CASES[case]
    torch.manual_seed(seed)
    model = create_model_for(model_name, "digits") if isinstance(model_name, str) else model_name()
    model.to(device)
    base = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    return model, SAM(model, base, rho=rho, variant=variant, mask=mask, **opts)


def _batch(n=32, shape=(1, 8, 8), classes=10):
    g = torch.Generator().manual_seed(1)
    return torch.randn(n, *shape, generator=g), torch.randint(0, classes, (n,), generator=g)


def _state(model, opt):
    """Weights, BatchNorm buffers and momentum buffers."""
    out = dict(model.state_dict())
    for i, p in enumerate(model.parameters()):
        out[f"momentum.{i}"] = opt.base_optimizer.state[p]["momentum_buffer"]
    return out


def _reference(model, opt, crit, amp):
    return lambda x, y: train_step(model, opt, x, y, crit, amp)


def _three_steps(case, step_kind, model_name="resnet_ci", **fast_opts):
    """(reference state, fast state, reference losses, fast losses) after 3 steps on 3 batches."""
    crit, amp = nn.CrossEntropyLoss(label_smoothing=0.1), autocast_factory("none", "cpu")
    ref_model, ref_opt = _setup(case, model_name)
    model, opt = _setup(case, model_name)
    fast = FastStep(model, opt, crit, amp, _reference(model, opt, crit, amp), compiled=step_kind != "fused",
                    **fast_opts)
    assert fast.fused, fast.reason
    ref_losses, losses = [], []
    for seed in range(3):
        x, y = _batch() if model_name == "resnet_ci" else _mlp_batch(seed)
        ref_losses.append(float(train_step(ref_model, ref_opt, x, y, crit, amp)[1].detach()))
        losses.append(float(fast(x, y)[1].detach()))
    assert opt.sam_steps == ref_opt.sam_steps == 3
    return _state(ref_model, ref_opt), _state(model, opt), ref_losses, losses


@pytest.mark.parametrize("case,step_kind", [(case, kind) for case in CASES for kind in ("fused", "compiled")
                                             if kind == "fused" or "inf" not in case])
def test_fast_step_equals_the_reference(case, step_kind):
    """Eager fused, and compiled (aot_eager: dynamo's graphs and graph breaks, no codegen)."""
    ref, fast, ref_losses, losses = _three_steps(case, step_kind, backend="aot_eager")
    assert losses == ref_losses
    for name in ref:
        assert torch.equal(ref[name], fast[name]), name
    moved = ref["fc.weight"] - _setup(case)[0].state_dict()["fc.weight"]
    assert moved.abs().max() > 1e-4  # the steps did change the weights


class TinyLN(nn.Sequential):
    def __init__(self):
        super().__init__(nn.Linear(8, 16), nn.LayerNorm(16), nn.ReLU(), nn.Linear(16, 4))


def _mlp_batch(seed):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(16, 8, generator=g), torch.randint(0, 4, (16,), generator=g)


@pytest.mark.skipif(shutil.which("g++") is None and shutil.which("c++") is None,
                    reason="inductor on CPU needs a C++ compiler")
def test_compiled_step_with_inductor_equals_the_reference():
    """The generated kernels (inductor, CPU; tiny model: its compile dominates this test)."""
    ref, fast, ref_losses, losses = _three_steps("sam/norm_only", "compiled", model_name=TinyLN)
    assert losses == pytest.approx(ref_losses, rel=1e-5)
    for name in ref:
        torch.testing.assert_close(fast[name], ref[name], rtol=1e-4, atol=1e-5, msg=name)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("case", ["sam/norm_only", "asam/norm_only"])
def test_compiled_step_cuda_bf16_equals_the_reference(case):
    crit, amp = nn.CrossEntropyLoss(), autocast_factory("bf16", "cuda")
    (ref_model, ref_opt), (model, opt) = _setup(case, device="cuda"), _setup(case, device="cuda")
    fast = FastStep(model, opt, crit, amp, _reference(model, opt, crit, amp), compiled=True)
    x, y = (t.cuda() for t in _batch())
    for _ in range(3):
        train_step(ref_model, ref_opt, x, y, crit, amp)
        fast(x, y)
    for (name, a), b in zip(ref_model.state_dict().items(), model.state_dict().values()):
        torch.testing.assert_close(b.float(), a.float(), rtol=5e-2, atol=5e-3, msg=name)


def _two_tensor_sam(variant, rho, **opts):
    """A model of two tensors, one masked partly: 'a.weight' (3,), 'b.bias' (2, 2)."""
    model = nn.Module()
    model.a, model.b = nn.Module(), nn.Module()
    model.a.weight = nn.Parameter(torch.tensor([1.0, -2.0, 0.5]))
    model.b.bias = nn.Parameter(torch.tensor([[0.3, -0.1], [2.0, 4.0]]))
    opt = SAM(model, torch.optim.SGD(model.parameters(), lr=0.1), rho=rho, variant=variant, mask="all", **opts)
    opt.set_selection({"a.weight": torch.tensor([True, False, True]), "b.bias": torch.ones(2, 2, dtype=torch.bool)})
    return model, opt


@pytest.mark.parametrize("variant,opts", [("sam", {}), ("asam", {}), ("asam", {"normalize_bias": True}),
                                          ("sam", {"p": "inf"}), ("asam", {"p": "inf"})])
def test_fused_update_is_the_formula(variant, opts):
    """e = rho T (T g)/||T g|| (p = 2) or rho T sign(g) (p = inf), masked; T = |w| + eta on weights
    (and biases with normalize_bias), 1 elsewhere; restore gives w back bit for bit."""
    rho, eta = 0.7, 0.01
    model, opt = _two_tensor_sam(variant, rho, **opts)
    w = [p.detach().clone() for p in opt._perturbed]
    mask = [torch.tensor([1.0, 0.0, 1.0]), torch.ones(2, 2)]
    scaled = [variant == "asam", variant == "asam" and opts.get("normalize_bias", False)]
    t = [wi.abs() + eta if s else torch.ones_like(wi) for wi, s in zip(w, scaled)]
    update = FusedUpdate(opt)
    backup_ptrs = [b.data_ptr() for b in opt._backup]
    for _ in range(2):  # twice: the buffers are reused, the result the same
        g = [torch.tensor([0.2, 5.0, -0.4]), torch.tensor([[1.0, -3.0], [0.0, 0.5]])]
        td = [ti * gi * mi for ti, gi, mi in zip(t, g, mask)]
        if opts.get("p") == "inf":
            e = [rho * ti * torch.sign(gi * mi) for ti, gi, mi in zip(t, g, mask)]
        else:
            norm = torch.sqrt(sum((x ** 2).sum() for x in td))
            e = [rho * ti * x / (norm + EPS) for ti, x in zip(t, td)]
        grads = [gi.clone() for gi in g]
        update.perturb(grads, rho)
        for p, wi, ei, gi in zip(opt._perturbed, w, e, grads):
            torch.testing.assert_close(p.detach(), wi + ei, rtol=1e-6, atol=1e-7)
            torch.testing.assert_close(gi, ei, rtol=1e-6, atol=1e-7)  # e is written into g, in place
        assert opt._perturbed[0][1] == w[0][1]  # masked out: not moved
        update.restore()
        for p, wi in zip(opt._perturbed, w):
            assert torch.equal(p.detach(), wi)
        assert [b.data_ptr() for b in opt._backup] == backup_ptrs  # SAM's buffers, not new ones


def test_fast_path_names_what_it_does_not_cover():
    model = create_model_for("resnet_ci", "digits")
    cases = [({"variant": "gsam"}, "variant gsam"), ({"variant_opts": {"m": 8}}, "m-sharpness"),
             ({"rho_norm": "full"}, "rho_norm=full"), ({"freeze_bn_second": True}, "freeze_bn_second"),
             ({"variant": "asam", "variant_opts": {"adaptive": "layerwise"}}, "layerwise")]
    for overrides, reason in cases:
        kw = {"variant": "sam", "variant_opts": {}, "rho_norm": "subset", "freeze_bn_second": False, **overrides}
        base = torch.optim.SGD(model.parameters(), lr=0.1)
        opt = SAM(model, base, rho=0.1, variant=kw["variant"], mask="all", rho_norm=kw["rho_norm"],
                  freeze_bn_second=kw["freeze_bn_second"], **kw["variant_opts"])
        assert reason in fast_step.unsupported(opt)


def test_a_run_with_compile_step_trains_and_records_it(tmp_path, monkeypatch):
    """compile_step is a runtime field: same run id; result.json records the fast step; the
    numbers are the reference run's (aot_eager keeps them bit for bit)."""
    monkeypatch.setattr(fast_step, "BACKEND", "aot_eager")
    cfg = {"dataset": "digits", "model": "resnet_ci", "epochs": 1, "batch_size": 128, "variant": "asam",
           "mask": "norm_only", "rho": 1.0, "device": "cpu", "logging": {"tensorboard": False}}
    train.run({**cfg, "compile_step": True}, tmp_path / "fast", progress=False)
    ref = train.run(cfg, tmp_path / "ref", progress=False)
    stored = io.read_json(tmp_path / "fast" / "result.json")
    assert stored["status"] == "done" and stored["config"]["compile_step"] is True
    assert stored["fast_step"] == {"compiled": True, "fused": True, "reason": None}
    assert "fast_step" not in ref and ref["config"]["compile_step"] is False
    assert stored["run_id"] == ref["run_id"] == config.run_id(config.resolve(cfg))
    assert stored["train_loss"] == ref["train_loss"] and stored["test_acc"] == ref["test_acc"]


@pytest.mark.parametrize("args", [["--set", "compile_step=sometimes"], ["--set", "compile_step=1"]])
def test_bad_compile_step_exits_2_naming_the_field(tmp_path, capsys, args):
    code = cli.main(["train", "--device", "cpu", "--out", str(tmp_path / "r"), *args])
    err = capsys.readouterr().err
    assert code == 2, err
    assert "compile_step" in err and "true" in err.lower() and "false" in err.lower()
    assert not (tmp_path / "r").exists()  # validated before anything is written


def test_perf_times_the_compiled_step_beside_the_reference(monkeypatch):
    """``--configs ...:fused/:compiled`` items and ``--compile-step`` rows; records name their step."""
    from bench.perf.timing import parse_configs, time_steps, with_compiled

    items = parse_configs("sam:norm_only:compiled,asam:norm_only:eta=0.1:fused,sam:all")
    assert [(c.label, c.variant, c.mask, c.step) for c in items[1:]] == [
        ("sam:norm_only:compiled", "sam", "norm_only", "compiled"),
        ("asam:norm_only:eta=0.1:fused", "asam", "norm_only", "fused"), ("sam:all", "sam", "all", "reference")]
    assert items[2].variant_opts == {"eta": 0.1} and items[2].mask_opts == {}
    rows = with_compiled(parse_configs("sam:norm_only,gsam:all"))
    assert [(c.label, c.step) for c in rows] == [
        ("sgd", "reference"), ("sam:norm_only", "reference"), ("sam:norm_only compiled", "compiled"),
        ("gsam:all", "reference"), ("gsam:all compiled", "compiled")]
    monkeypatch.setattr(fast_step, "BACKEND", "aot_eager")
    recs = time_steps("resnet_ci", 16, "cpu", False, rows, steps=1, warmup=1, dataset="digits")
    # gsam is not fused: its compiled row is skipped, not timed as something else
    assert [(r["label"], r["step"]) for r in recs] == [
        ("sgd", "reference"), ("sam:norm_only", "reference"), ("sam:norm_only compiled", "compiled"),
        ("gsam:all", "reference")]
    assert all(r["ms"] > 0 for r in recs)
