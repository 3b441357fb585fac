"""The SAM wrapper against the formulas of REFERENCE.md, computed by hand on tiny tensors."""
import copy
import math

import pytest
import torch
from torch import nn

import masks
from bench.sam import SAM
from masks.base import Mask

LR = 0.1


class Tiny(nn.Module):
    """Linear -> BatchNorm -> ReLU -> Linear, with a norm layer under an unusual name."""

    def __init__(self):
        super().__init__()
        self.inp = nn.Linear(4, 3)
        self.zz = nn.BatchNorm1d(3)
        self.out = nn.Linear(3, 2)

    def forward(self, x):
        return self.out(torch.relu(self.zz(self.inp(x))))


def tiny():
    torch.manual_seed(0)
    model = Tiny()
    with torch.no_grad():  # non-trivial BN affine parameters
        model.zz.weight.copy_(torch.tensor([0.5, 1.5, -1.0]))
        model.zz.bias.copy_(torch.tensor([0.1, -0.2, 0.3]))
    return model


def batch():
    g = torch.Generator().manual_seed(1)
    return torch.randn(8, 4, generator=g), torch.randint(0, 2, (8,), generator=g)


def loss_fn(model, x, y):
    return nn.functional.cross_entropy(model(x), y)


def grads_at(model, params):
    """Gradient of the loss at the given parameter values, on a copy of the model."""
    m = copy.deepcopy(model)
    with torch.no_grad():
        for n, p in m.named_parameters():
            p.copy_(params[n])
    x, y = batch()
    loss_fn(m, x, y).backward()
    return {n: p.grad.detach().clone() for n, p in m.named_parameters()}


NORM = {"zz.weight", "zz.bias"}


def expected_update(model, selected, rule):
    """w_new = w - lr * grad(w + e) with e from ``rule(w, g, selected)`` (plain SGD)."""
    w = {n: p.detach().clone() for n, p in model.named_parameters()}
    g = grads_at(model, w)
    e = rule(w, g, selected)
    g2 = grads_at(model, {n: w[n] + e.get(n, 0) for n in w})
    return {n: w[n] - LR * g2[n] for n in w}


def run_sam(model, path="fast", **kw):
    opt = SAM(model, torch.optim.SGD(model.parameters(), lr=LR), **kw)
    x, y = batch()
    if path == "fast":
        opt.first_step(loss=loss_fn(model, x, y))
        loss_fn(model, x, y).backward()
        opt.second_step(zero_grad=True)
    elif path == "two_step":
        loss_fn(model, x, y).backward()
        opt.first_step(zero_grad=True)
        loss_fn(model, x, y).backward()
        opt.second_step(zero_grad=True)
    else:
        def closure():
            loss = loss_fn(model, x, y)
            loss.backward()
            return loss
        opt.step(closure)
    return {n: p.detach().clone() for n, p in model.named_parameters()}, opt


# --- the formulas, written out on plain tensors -----------------------------------------------

def sam_rule(rho, full=False, mask=None):
    def rule(w, g, sel):
        gm = {n: g[n] * (mask[n] if mask and n in mask else 1.0) for n in sel}
        denom_terms = g.values() if full else gm.values()
        norm = math.sqrt(sum(float((t ** 2).sum()) for t in denom_terms))
        return {n: rho * gm[n] / norm for n in sel}
    return rule


def sam_inf_rule(rho):
    return lambda w, g, sel: {n: rho * torch.sign(g[n]) for n in sel}


def asam_T(w, n, adaptive, eta, normalize_bias):
    if n.endswith("bias") and not normalize_bias:
        return torch.ones_like(w[n])
    if adaptive == "elementwise":
        return w[n].abs() + eta
    return torch.full_like(w[n], float(w[n].norm()) * (1 + eta))


def asam_rule(rho, adaptive, eta, normalize_bias, p=2):
    def rule(w, g, sel):
        T = {n: asam_T(w, n, adaptive, eta, normalize_bias) for n in sel}
        if p == "inf":
            return {n: rho * T[n] * torch.sign(g[n]) for n in sel}
        norm = math.sqrt(sum(float(((T[n] * g[n]) ** 2).sum()) for n in sel))
        return {n: rho * T[n] ** 2 * g[n] / norm for n in sel}
    return rule


ALL = {"inp.weight", "inp.bias", "zz.weight", "zz.bias", "out.weight", "out.bias"}

CASES = {
    "sam_all": (dict(variant="sam", mask="all", rho=0.3), ALL, sam_rule(0.3)),
    "sam_on": (dict(variant="sam", mask="norm_only", rho=0.5), NORM, sam_rule(0.5)),
    "no_norm": (dict(variant="sam", mask="no_norm", rho=0.2), ALL - NORM, sam_rule(0.2)),
    "sam_on_full_norm": (dict(variant="sam", mask="norm_only", rho=0.5, rho_norm="full"), NORM,
                         sam_rule(0.5, full=True)),
    "sam_inf_norm_only": (dict(variant="sam", mask="norm_only", rho=0.05, p="inf"), NORM, sam_inf_rule(0.05)),
    "asam_elem_p2": (dict(variant="asam", mask="all", rho=2.0, adaptive="elementwise", eta=0.01), ALL,
                     asam_rule(2.0, "elementwise", 0.01, False)),
    "asam_elem_p2_bias": (dict(variant="asam", mask="norm_only", rho=2.0, adaptive="elementwise", eta=0.01,
                               normalize_bias=True), NORM, asam_rule(2.0, "elementwise", 0.01, True)),
    "asam_layer_p2": (dict(variant="asam", mask="all", rho=0.1, adaptive="layerwise", eta=0.0), ALL,
                      asam_rule(0.1, "layerwise", 0.0, False)),
    "asam_layer_p2_on": (dict(variant="asam", mask="norm_only", rho=0.3, adaptive="layerwise", eta=0.1), NORM,
                         asam_rule(0.3, "layerwise", 0.1, False)),
    "asam_elem_inf": (dict(variant="asam", mask="norm_only", rho=0.1, adaptive="elementwise", p="inf",
                           eta=0.01, normalize_bias=True), NORM, asam_rule(0.1, "elementwise", 0.01, True, "inf")),
    "asam_layer_inf": (dict(variant="asam", mask="all", rho=0.01, adaptive="layerwise", p="inf", eta=0.01),
                       ALL, asam_rule(0.01, "layerwise", 0.01, False, "inf")),
}


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("path", ["fast", "two_step", "closure"])
def test_one_step_matches_formula(case, path):
    kw, selected, rule = CASES[case]
    model = tiny()
    want = expected_update(model, selected, rule)
    got, opt = run_sam(model, path, **kw)
    for n in want:
        torch.testing.assert_close(got[n], want[n], rtol=1e-5, atol=1e-6, msg=f"{case}/{path}: {n}")
    assert opt.n_perturbed == sum(p.numel() for n, p in model.named_parameters() if n in selected)


class FixedMask(Mask):
    """A partial, element-level mask fixed by the test."""

    def __init__(self, selection):
        super().__init__()
        self._sel = selection

    def select(self, model, data):
        return self._sel


def element_mask():
    model = tiny()
    sel = {n: (torch.arange(p.numel()) % 2 == 0).view_as(p) for n, p in model.named_parameters()}
    sel["out.bias"] = torch.zeros(2, dtype=torch.bool)  # a tensor with nothing selected
    return sel


@pytest.mark.parametrize("rho_norm", ["subset", "full"])
@pytest.mark.parametrize("path", ["fast", "two_step"])
def test_element_mask_both_norm_conventions(rho_norm, path):
    sel = element_mask()
    model = tiny()
    maskf = {n: m.float() for n, m in sel.items()}
    picked = {n for n, m in sel.items() if m.any()}

    def rule(w, g, s):
        gm = {n: g[n] * maskf[n] for n in s}
        terms = g.values() if rho_norm == "full" else gm.values()
        norm = math.sqrt(sum(float((t ** 2).sum()) for t in terms))
        return {n: 0.7 * gm[n] / norm for n in s}

    want = expected_update(model, picked, rule)
    got, opt = run_sam(model, path, variant="sam", rho=0.7, rho_norm=rho_norm, mask=FixedMask(sel))
    for n in want:
        torch.testing.assert_close(got[n], want[n], rtol=1e-5, atol=1e-6)
    assert opt.n_perturbed == sum(int(m.sum()) for m in sel.values())
    assert "out.bias" not in opt.selection


def test_subset_norm_makes_perturbation_norm_rho():
    """SAM-ON's convention: ||e|| = rho exactly; SSAM's full norm gives ||e|| < rho."""
    for rho_norm, check in (("subset", lambda v: abs(v - 0.5) < 1e-6), ("full", lambda v: v < 0.5 - 1e-3)):
        model = tiny()
        opt = SAM(model, torch.optim.SGD(model.parameters(), lr=LR), rho=0.5, mask="norm_only",
                  rho_norm=rho_norm)
        before = {n: p.detach().clone() for n, p in model.named_parameters()}
        x, y = batch()
        opt.first_step(loss=loss_fn(model, x, y))
        e = [p.detach() - before[n] for n, p in model.named_parameters()]
        assert check(math.sqrt(sum(float((t ** 2).sum()) for t in e))), rho_norm
        opt.second_step()


def test_fast_path_computes_no_gradient_for_unperturbed():
    model = tiny()
    opt = SAM(model, torch.optim.SGD(model.parameters(), lr=LR), rho=0.5, mask="norm_only")
    x, y = batch()
    seen = []
    for n, p in model.named_parameters():  # a hook fires only if autograd computes that gradient
        p.register_hook(lambda g, n=n: seen.append(n))
    opt.first_step(loss=loss_fn(model, x, y))
    assert set(seen) == NORM
    assert all(p.grad is None for p in model.parameters())
    # the unperturbed parameters did not move and were not copied
    assert len(opt._backup) == 2 and [t.shape for t in opt._backup] == [torch.Size([3])] * 2
    opt.second_step()


def test_unperturbed_params_unchanged_during_ascent():
    model = tiny()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt = SAM(model, torch.optim.SGD(model.parameters(), lr=LR), rho=0.5, mask="norm_only")
    x, y = batch()
    opt.first_step(loss=loss_fn(model, x, y))
    for n, p in model.named_parameters():
        assert torch.equal(p, before[n]) == (n not in NORM)
    opt.second_step()


def test_freeze_bn_second_pass():
    for freeze in (False, True):
        model = tiny()
        opt = SAM(model, torch.optim.SGD(model.parameters(), lr=LR), rho=0.5, freeze_bn_second=freeze)
        x, y = batch()
        loss = loss_fn(model, x, y)
        after_first = model.zz.running_mean.clone()
        tracked = int(model.zz.num_batches_tracked)
        opt.first_step(loss=loss)
        loss_fn(model, x, y).backward()
        opt.second_step()
        assert torch.equal(model.zz.running_mean, after_first) == freeze
        assert int(model.zz.num_batches_tracked) == tracked + (0 if freeze else 1)
        assert model.zz.momentum == 0.1  # restored


def test_variant_none_is_plain_sgd():
    model, ref = tiny(), tiny()
    opt = SAM(model, torch.optim.SGD(model.parameters(), lr=LR), variant="none")
    assert not opt.is_sam and opt.n_perturbed == 0
    x, y = batch()
    opt.zero_grad()
    loss_fn(model, x, y).backward()
    opt.step()
    sgd = torch.optim.SGD(ref.parameters(), lr=LR)
    loss_fn(ref, x, y).backward()
    sgd.step()
    for a, b in zip(model.parameters(), ref.parameters()):
        assert torch.equal(a, b)


def test_norm_only_without_norm_layers_is_an_error():
    model = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))
    with pytest.raises(masks.MaskError, match="selects no parameter"):
        SAM(model, torch.optim.SGD(model.parameters(), lr=LR), mask="norm_only")


def test_scheduler_state_dict_and_param_groups():
    model = tiny()
    base = torch.optim.SGD(model.parameters(), lr=LR, momentum=0.9)
    opt = SAM(model, base, rho=0.5, mask="norm_only")
    assert opt.param_groups is base.param_groups
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=4)
    x, y = batch()

    def one_step(o):
        o.first_step(loss=loss_fn(model, x, y))
        loss_fn(model, x, y).backward()
        o.second_step(zero_grad=True)

    one_step(opt)
    sched.step()
    assert base.param_groups[0]["lr"] == pytest.approx(LR * (1 + math.cos(math.pi / 4)) / 2)
    state = copy.deepcopy(opt.state_dict())
    params = copy.deepcopy(model.state_dict())
    one_step(opt)
    after = {n: p.detach().clone() for n, p in model.named_parameters()}

    # reload into a fresh optimizer: same next step, and the link to the base is kept
    model.load_state_dict(params)
    base2 = torch.optim.SGD(model.parameters(), lr=LR, momentum=0.9)
    opt2 = SAM(model, base2, rho=0.5, mask="norm_only")
    opt2.load_state_dict(state)
    assert opt2.param_groups is base2.param_groups
    assert base2.param_groups[0]["lr"] == pytest.approx(base.param_groups[0]["lr"])
    one_step(opt2)
    for n, p in model.named_parameters():
        torch.testing.assert_close(p.detach(), after[n], rtol=0, atol=0)


def test_bad_arguments():
    model = tiny()
    base = torch.optim.SGD(model.parameters(), lr=LR)
    with pytest.raises(ValueError, match="rho"):
        SAM(model, base, rho=-1)
    with pytest.raises(ValueError, match="rho_norm"):
        SAM(model, base, rho_norm="max")
    with pytest.raises(ValueError, match="adaptive"):
        SAM(model, base, variant="asam", adaptive="blockwise")
    with pytest.raises(ValueError, match="p="):
        SAM(model, base, variant="sam", p=3)
    with pytest.raises(KeyError, match="allowed: .*sam"):
        SAM(model, base, variant="sgdx")
    with pytest.raises(KeyError, match="allowed: .*norm_only"):
        SAM(model, base, mask="nope")
