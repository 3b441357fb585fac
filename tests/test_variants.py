"""SAM variants against their formulas written out on tiny tensors, against kozistr/pytorch-optimizer
where it implements the same method, crossed with masks on BatchNorm and LayerNorm models, and
through checkpoints, m-sharpness and late-phase SAM."""
import math

import pytest
import pytorch_optimizer as po  # pinned in the test extra
import torch
from tiny_models import TinyResNet, TinyViT, batches, ln_net, make
from torch import nn
from torch.func import functional_call

import masks
from bench.engine import train
from bench.engine.amp import autocast_factory
from bench.engine.sam import SAM
from bench.engine.step import train_step
from bench.engine.variants import list_variants

LR, MU, WD = 0.1, 0.9, 5e-4
EPS = 1e-12




def data(steps=3, n=8, seed=1):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(n, 5, generator=g), torch.randint(0, 3, (n,), generator=g)) for _ in range(steps)]


CRITERION = nn.CrossEntropyLoss()

# --- the formulas, on plain dicts of tensors ------------------------------------------------


def losses_at(model, w, x, y):
    """Per-sample cross-entropy of the model with parameters ``w``."""
    return nn.functional.cross_entropy(functional_call(model, w, (x,)), y, reduction="none")


def grad_at(model, w, x, y, names=None):
    """Gradient of the mean loss at ``w`` (of ``names``, default all)."""
    names = list(w) if names is None else names
    wr = {n: t.detach().clone().requires_grad_(n in names) for n, t in w.items()}
    loss = losses_at(model, wr, x, y).mean()
    return dict(zip(names, torch.autograd.grad(loss, [wr[n] for n in names])))


def vnorm(d):
    return math.sqrt(sum(float((t ** 2).sum()) for t in d.values()))


def vdot(a, b):
    return sum(float((a[n] * b[n]).sum()) for n in a)


def sam_e(rho, g, sel):
    """SAM's perturbation on the selected tensors, norm over them (rho_norm subset)."""
    nrm = vnorm({n: g[n] for n in sel})
    return {n: rho * g[n] / (nrm + EPS) for n in sel}


def plus(w, e):
    return {n: w[n] + e[n] if n in e else w[n] for n in w}


class HandSGD:
    """torch.optim.SGD(lr, momentum, weight_decay) written out."""

    def __init__(self):
        self.v = {}

    def step(self, w, g, lr=LR):
        out = {}
        for n in w:
            d = g[n] + WD * w[n]
            self.v[n] = d if n not in self.v else MU * self.v[n] + d
            out[n] = w[n] - lr * self.v[n]
        return out


def hand_run(model, variant, sel, batches_, rho, opts, lrs=None):
    """The variants' updates written out step by step: returns the weights after each step."""
    w = {n: p.detach().clone() for n, p in model.named_parameters()}
    sgd = HandSGD()
    state = {"ema": {}, "g_v": None, "step": 0}
    gen = torch.Generator().manual_seed(opts.get("seed", 0))
    lr_max = LR
    out = []
    for i, (x, y) in enumerate(batches_):
        lr = LR if lrs is None else lrs[i]
        if variant == "sam":
            g = grad_at(model, w, x, y)
            desc = grad_at(model, plus(w, sam_e(rho, g, sel)), x, y)
        elif variant == "esam":
            beta, gamma = opts["beta"], opts["gamma"]
            g = grad_at(model, w, x, y)
            e = sam_e(rho, g, sel)
            for n in [n for n in w if n in sel]:  # Bernoulli(beta) per element, x 1/beta, model order
                e[n] = e[n] * (torch.rand(e[n].shape, generator=gen) < beta).float() / beta
            rise = losses_at(model, plus(w, e), x, y) - losses_at(model, w, x, y)
            k = max(1, int(gamma * len(y)))
            keep = torch.topk(rise, k).indices.sort().values
            desc = grad_at(model, plus(w, e), x[keep], y[keep])
        elif variant == "looksam":
            k, alpha = opts["k"], opts["alpha"]
            g = grad_at(model, w, x, y)
            if state["step"] % k == 0:
                desc = grad_at(model, plus(w, sam_e(rho, g, sel)), x, y)
                coef = vdot(g, desc) / vnorm(g) ** 2
                state["g_v"] = {n: desc[n] - coef * g[n] for n in w}
            else:
                scale = alpha * vnorm(g) / vnorm(state["g_v"])
                desc = {n: g[n] + scale * state["g_v"][n] for n in w}
        elif variant == "gsam":
            alpha, rho_min = opts["alpha"], opts.get("rho_min")
            rho_t = rho if rho_min is None else rho_min + (rho - rho_min) * lr / lr_max
            g = grad_at(model, w, x, y)
            gp = grad_at(model, plus(w, sam_e(rho_t, g, sel)), x, y)
            coef = vdot(g, gp) / vnorm(gp) ** 2
            desc = {n: gp[n] - alpha * (g[n] - coef * gp[n]) for n in w}
        elif variant == "fsam":
            sigma, lmbda = opts["sigma"], opts["lmbda"]
            g = grad_at(model, w, x, y)
            ema = state["ema"]
            d = {n: g[n] - sigma * ema[n] if n in ema else g[n] for n in sel}
            desc = grad_at(model, plus(w, sam_e(rho, d, sel)), x, y)
            for n in sel:
                ema[n] = lmbda * ema[n] + (1 - lmbda) * g[n] if n in ema else g[n].clone()
        elif variant == "msam":
            if sgd.v:  # e = -rho v/||v|| on the selected tensors; the first step is plain
                v = {n: sgd.v[n] for n in sel}
                e = {n: -rho * v[n] / (vnorm(v) + EPS) for n in sel}
            else:
                e = {}
            desc = grad_at(model, plus(w, e), x, y)
        state["step"] += 1
        w = sgd.step(w, desc, lr)
        out.append(w)
    return out


CASES = {  # variant -> (options, rho)
    "esam": ({"beta": 0.6, "gamma": 0.5, "seed": 3}, 0.3),
    "esam_swp_only": ({"beta": 0.5, "gamma": 1.0, "seed": 4}, 0.3),
    "looksam": ({"k": 2, "alpha": 0.7}, 0.2),
    "gsam": ({"alpha": 0.3}, 0.2),
    "gsam_rho_schedule": ({"alpha": 0.2, "rho_min": 0.05}, 0.4),
    "fsam": ({"sigma": 1.0, "lmbda": 0.6}, 0.3),
    "msam": ({}, 0.5),
}
MASKS = {"all": None, "norm_only": {"norm.weight", "norm.bias"}}
LRS = [LR, 0.06, 0.02]  # a decaying schedule (GSAM's rho follows it)


def run_opt(model, variant, mask, rho, opts, batches_, path):
    opt = SAM(model, torch.optim.SGD(model.parameters(), lr=LR, momentum=MU, weight_decay=WD), rho=rho,
              variant=variant, mask=mask, **opts)
    out = []
    for i, (x, y) in enumerate(batches_):
        for group in opt.param_groups:
            group["lr"] = LRS[i]
        if path == "train_step":
            train_step(model, opt, x, y, CRITERION, autocast_factory("none", "cpu"))
        else:
            def closure():
                loss = CRITERION(model(x), y)
                loss.backward()
                return loss
            opt.zero_grad()
            opt.step(closure)
        out.append({n: p.detach().clone() for n, p in model.named_parameters()})
    return out, opt


@pytest.mark.parametrize("mask", sorted(MASKS))
@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("path", ["train_step", "closure"])
def test_one_and_three_steps_match_the_formula(case, mask, path):
    opts, rho = CASES[case]
    variant = case.split("_")[0]
    if path == "closure" and case == "esam":
        pytest.skip("step(closure) has no data selection (test_esam_closure_is_swp_only)")
    model = ln_net()
    sel = MASKS[mask] or {n for n, _ in model.named_parameters()}
    want = hand_run(model, variant, sel, data(), rho, opts, LRS)
    got, opt = run_opt(model, variant, mask, rho, opts, data(), path)
    for step in (0, 2):
        for n in want[step]:
            torch.testing.assert_close(got[step][n], want[step][n], rtol=1e-5, atol=1e-6,
                                       msg=f"{case}/{mask}/{path} step {step + 1}: {n}")
    assert opt.sam_steps == 3


def test_esam_closure_is_swp_only():
    """step(closure) cannot select samples: ESAM's descent then uses the whole batch, with a warning."""
    opts = {"beta": 0.6, "gamma": 0.5, "seed": 3}
    model = ln_net()
    want = hand_run(model, "esam", {n for n, _ in model.named_parameters()}, data(), 0.3,
                    {**opts, "gamma": 1.0}, LRS)
    with pytest.warns(UserWarning, match="whole batch"):
        got, _ = run_opt(model, "esam", "all", 0.3, opts, data(), "closure")
    for n in want[2]:
        torch.testing.assert_close(got[2][n], want[2][n], rtol=1e-5, atol=1e-6)


def test_m_sharpness_matches_the_formula_and_m_equal_batch_is_sam():
    """m = 4 on a batch of 8: two groups, each perturbed with its own gradient, descents averaged."""
    model = ln_net()
    (x, y), = data(1)
    w = {n: p.detach().clone() for n, p in model.named_parameters()}
    desc = {n: torch.zeros_like(t) for n, t in w.items()}
    for part in (slice(0, 4), slice(4, 8)):
        g = grad_at(model, w, x[part], y[part])
        gp = grad_at(model, plus(w, sam_e(0.3, g, set(w))), x[part], y[part])
        for n in desc:
            desc[n] += 0.5 * gp[n]
    want = HandSGD().step(w, desc)
    got, _ = run_opt(model, "sam", "all", 0.3, {"m": 4}, [(x, y)], "train_step")
    for n in want:
        torch.testing.assert_close(got[0][n], want[n], rtol=1e-5, atol=1e-6)

    for variant in ("sam", "fsam", "esam"):  # m = batch size is the variant itself, bit for bit
        a, _ = run_opt(ln_net(), variant, "norm_only", 0.3, {"m": 8}, data(), "train_step")
        b, _ = run_opt(ln_net(), variant, "norm_only", 0.3, {}, data(), "train_step")
        assert all(torch.equal(a[2][n], b[2][n]) for n in a[2]), variant


def test_closure_refuses_m():
    model = ln_net()
    opt = SAM(model, torch.optim.SGD(model.parameters(), lr=LR), variant="sam", m=4)
    with pytest.raises(ValueError, match="m-sharpness"):
        opt.step(lambda: CRITERION(model(data(1)[0][0]), data(1)[0][1]))


# --- kozistr/pytorch-optimizer (pinned test dependency) -------------------------------------

def po_steps(model, opt, batches_, lrs=LRS, before=None):
    out = []
    for i, (x, y) in enumerate(batches_):
        for group in opt.param_groups:
            group["lr"] = lrs[i]
        if before:
            before()

        def closure():
            opt.zero_grad()
            loss = CRITERION(model(x), y)
            loss.backward()
            return loss
        closure()
        opt.step(closure)
        out.append({n: p.detach().clone() for n, p in model.named_parameters()})
    return out


def ours(variant, model, rho, opts):
    return run_opt(model, variant, "all", rho, opts, data(), "train_step")[0]


def assert_same(a, b):
    for step in range(len(a)):
        for n in a[step]:
            torch.testing.assert_close(a[step][n], b[step][n], rtol=1e-5, atol=1e-6, msg=f"step {step + 1}: {n}")


def sgd_kwargs():
    return {"lr": LR, "momentum": MU, "weight_decay": WD}


def test_sam_and_fsam_equal_pytorch_optimizer():
    model = ln_net()
    theirs = po_steps(model, po.SAM(model.parameters(), torch.optim.SGD, rho=0.3, **sgd_kwargs()), data())
    assert_same(ours("sam", ln_net(), 0.3, {}), theirs)
    model = ln_net()
    fsam = po.FriendlySAM(model.parameters(), torch.optim.SGD, rho=0.3, sigma=1.0, lmbda=0.6, **sgd_kwargs())
    assert_same(ours("fsam", ln_net(), 0.3, {"sigma": 1.0, "lmbda": 0.6}), po_steps(model, fsam, data()))


def test_gsam_equals_pytorch_optimizer_with_its_rho_schedule():
    model = ln_net()
    base = torch.optim.SGD(model.parameters(), **sgd_kwargs())
    sched = torch.optim.lr_scheduler.LambdaLR(base, lambda step: 1.0)
    rho_sched = po.ProportionScheduler(sched, max_lr=LR, min_lr=0.0, max_value=0.4, min_value=0.05)
    gsam = po.GSAM(model.parameters(), base, model, rho_sched, alpha=0.2)

    out = []
    for i, (x, y) in enumerate(data()):
        for group in base.param_groups:
            group["lr"] = LRS[i]
        gsam.update_rho_t()  # rho_t from this step's learning rate
        gsam.set_closure(lambda o, t: CRITERION(o, t), x, y)
        gsam.step()
        out.append({n: p.detach().clone() for n, p in model.named_parameters()})
    assert_same(ours("gsam", ln_net(), 0.4, {"alpha": 0.2, "rho_min": 0.05}), out)


class OneTensor(nn.Module):
    """One weight tensor: LookSAM's per-tensor projection (pytorch-optimizer) is the global one."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.lin = nn.Linear(5, 3, bias=False)

    def forward(self, x):
        return self.lin(x)


def test_looksam_equals_pytorch_optimizer_on_one_tensor():
    batches_ = data(5)
    lrs = [LR] * 5
    model = OneTensor()
    theirs = po_steps(model, po.LookSAM(model.parameters(), torch.optim.SGD, rho=0.2, k=2, alpha=0.7,
                                        **sgd_kwargs()), batches_, lrs)
    model = OneTensor()
    opt = SAM(model, torch.optim.SGD(model.parameters(), **sgd_kwargs()), rho=0.2, variant="looksam", k=2,
              alpha=0.7)
    got = []
    for x, y in batches_:
        train_step(model, opt, x, y, CRITERION, autocast_factory("none", "cpu"))
        got.append({n: p.detach().clone() for n, p in model.named_parameters()})
    assert_same(got, theirs)


# --- every variant x mask on BatchNorm and LayerNorm models -------------------------------

PERTURBING = [v for v in list_variants() if v != "none"]
MODELS = {"batchnorm": TinyResNet, "layernorm": TinyViT}
MASK_CFG = {"all": {}, "norm_only": {}, "random": {"sparsity": "match:norm_only"}}


def watch(model, opt):
    """Record which parameter gradients autograd computes inside accumulate_ascent and first_step
    (the ascent)."""
    seen, phase = [], {"now": None}
    for n, p in model.named_parameters():
        p.register_hook(lambda g, n=n: seen.append(n) if phase["now"] == "ascent" else None)
    first_step, accumulate = opt.first_step, opt.accumulate_ascent
    record = {}

    def accumulate_wrapped(*args, **kw):
        phase["now"] = "ascent"
        try:
            accumulate(*args, **kw)
        finally:
            phase["now"] = None
    opt.accumulate_ascent = accumulate_wrapped

    def wrapped(*args, **kw):
        before = {n: p.detach().clone() for n, p in model.named_parameters()}
        phase["now"] = "ascent"
        try:
            first_step(*args, **kw)
        finally:
            phase["now"] = None
        record["moved"] = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
        record["outside_mask_moved"] = any(
            bool(((p.detach() - before[n]) != 0)[~opt.selection[n]].any()) if n in opt.selection
            else not torch.equal(p, before[n]) for n, p in model.named_parameters())
        record["backup"] = [tuple(t.shape) for t in opt._backup]
    opt.first_step = wrapped
    return seen, record


@pytest.mark.parametrize("model_kind", sorted(MODELS))
@pytest.mark.parametrize("mask", sorted(MASK_CFG))
@pytest.mark.parametrize("variant", PERTURBING)
def test_every_variant_and_mask_trains_a_step(variant, mask, model_kind):
    model = make(MODELS[model_kind])
    opt = SAM(model, torch.optim.SGD(model.parameters(), lr=0.05, momentum=MU), rho=0.3, variant=variant,
              mask=masks.create_mask(mask, **MASK_CFG[mask]), **({"k": 2} if variant == "looksam" else {}))
    seen, record = watch(model, opt)
    start = {n: p.detach().clone() for n, p in model.named_parameters()}
    bs = batches(n=24, batch_size=8)
    for x, y in bs[:2]:  # MSAM's first step is plain; LookSAM's second is not a SAM step
        train_step(model, opt, x, y, CRITERION, autocast_factory("none", "cpu"))
    assert opt.sam_now
    seen.clear()
    out, loss = train_step(model, opt, *bs[2], CRITERION, autocast_factory("none", "cpu"))
    assert torch.isfinite(loss) and out.shape == (8, 10)
    assert any(not torch.equal(p, start[n]) for n, p in model.named_parameters())
    perturbed = set(opt.selection)
    if opt.variant.full_gradient:  # the rule reads the clean gradient of every tensor (GSAM, LookSAM)
        assert set(seen) == {n for n, _ in model.named_parameters()}
    elif opt.variant.ascent:
        assert set(seen) == perturbed  # no unperturbed tensor is differentiated in the ascent
    else:
        assert seen == []  # MSAM: no ascent pass at all
    assert record["moved"] and record["moved"] <= perturbed and not record["outside_mask_moved"]
    params = dict(model.named_parameters())
    assert record["backup"] == [tuple(params[n].shape) for n in opt._perturbed_names]  # only they are copied
    assert all(p.grad is None for p in model.parameters())


# --- late-phase SAM, checkpoints -----------------------------------------------------------


@pytest.mark.parametrize("variant", PERTURBING)
def test_before_sam_start_epoch_steps_are_the_base_optimizer_bit_for_bit(variant):
    bs = batches(n=24, batch_size=8)
    got = []
    for name, opts in ((variant, {"sam_start_epoch": 1}), ("none", {})):
        model = make(TinyResNet)
        opt = SAM(model, torch.optim.SGD(model.parameters(), lr=0.05, momentum=MU, weight_decay=WD), rho=0.3,
                  variant=name, mask="norm_only", **opts)
        opt.on_epoch_start(0, 1)
        for x, y in bs:
            train_step(model, opt, x, y, CRITERION, autocast_factory("none", "cpu"))
        got.append({**model.state_dict()})
    assert all(torch.equal(got[0][k], got[1][k]) for k in got[1])


def test_sam_start_epoch_beyond_the_run_is_the_base_optimizer_bit_for_bit(tmp_path):
    cfg = {"dataset": "digits", "model": "resnet_ci", "epochs": 1, "batch_size": 256, "mask": "norm_only",
           "rho": 0.5, "device": "cpu", "save_gamma": False}
    late = train.run({**cfg, "variant": "looksam", "variant_opts": {"sam_start_epoch": 1}}, tmp_path / "late",
                     progress=False, log=lambda m: None)
    base = train.run({**cfg, "variant": "none"}, tmp_path / "base", progress=False, log=lambda m: None)
    assert late["test_loss"] == base["test_loss"] and late["train_loss"] == base["train_loss"]
    a = torch.load(tmp_path / "late" / "checkpoint.pt", weights_only=True)["model"]
    b = torch.load(tmp_path / "base" / "checkpoint.pt", weights_only=True)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_sam_start_epoch_switches_sam_on():
    model = ln_net()
    opt = SAM(model, torch.optim.SGD(model.parameters(), lr=LR), rho=0.3, variant="looksam", k=2,
              sam_start_epoch=1)
    (x, y), = data(1)
    assert not opt.sam_now
    train_step(model, opt, x, y, CRITERION, autocast_factory("none", "cpu"))
    assert opt.sam_steps == 0  # the base optimizer alone: no LookSAM step counted
    opt.on_epoch_start(1, 2)
    assert opt.sam_now  # the first SAM-phase step is a SAM step


STATEFUL = {"fsam": {"lmbda": 0.5}, "looksam": {"k": 3}, "esam": {"beta": 0.5, "gamma": 0.5},
            "gsam": {"rho_min": 0.1}, "msam": {}}


@pytest.mark.parametrize("variant", sorted(STATEFUL))
def test_checkpoint_resumes_variant_state_exactly(tmp_path, variant):
    """Three steps, save (weights-only), two more; a fresh optimizer loading the save does the same two."""
    opts = STATEFUL[variant]
    bs = batches(n=40, batch_size=8)

    def build(model):
        torch.manual_seed(123)  # ESAM's stream comes from its seed, not from here
        return SAM(model, torch.optim.SGD(model.parameters(), lr=0.05, momentum=MU), rho=0.3, variant=variant,
                   mask="norm_only", **opts)

    model = make(TinyResNet)
    opt = build(model)
    for i, (x, y) in enumerate(bs[:3]):
        for g in opt.param_groups:
            g["lr"] = 0.05 / (i + 1)
        train_step(model, opt, x, y, CRITERION, autocast_factory("none", "cpu"))
    torch.save({"model": model.state_dict(), "opt": opt.state_dict()}, tmp_path / "ckpt.pt")
    for x, y in bs[3:]:
        train_step(model, opt, x, y, CRITERION, autocast_factory("none", "cpu"))
    want = {n: p.detach().clone() for n, p in model.named_parameters()}

    saved = torch.load(tmp_path / "ckpt.pt", weights_only=True)
    model2 = make(TinyResNet, seed=5)  # different weights until loaded
    torch.manual_seed(999)
    opt2 = SAM(model2, torch.optim.SGD(model2.parameters(), lr=0.05, momentum=MU), rho=0.3, variant=variant,
               mask="norm_only", **opts)
    model2.load_state_dict(saved["model"])
    opt2.load_state_dict(saved["opt"])
    assert opt2.sam_steps == 3
    for x, y in bs[3:]:
        train_step(model2, opt2, x, y, CRITERION, autocast_factory("none", "cpu"))
    for n, p in model2.named_parameters():
        assert torch.equal(p, want[n]), n


def test_option_errors_name_the_option():
    model = ln_net()
    base = torch.optim.SGD(model.parameters(), lr=LR)
    for variant, opts, match in [("esam", {"beta": 0}, "beta="), ("esam", {"gamma": 1.5}, "gamma="),
                                 ("looksam", {"k": 0}, "k="), ("gsam", {"rho_min": -1}, "rho_min="),
                                 ("fsam", {"lmbda": 2}, "lmbda="), ("sam", {"m": 0}, "m="),
                                 ("asam", {"sam_start_epoch": -1}, "sam_start_epoch=")]:
        with pytest.raises(ValueError, match=match):
            SAM(model, base, variant=variant, **opts)
    with pytest.raises(TypeError, match="'k'"):
        SAM(model, base, variant="gsam", k=3)
    with pytest.raises(ValueError, match="momentum"):
        SAM(model, torch.optim.SGD(model.parameters(), lr=LR), variant="msam")


def test_variant_options_in_config_validation():
    from bench import config as C

    cfg = C.resolve({"variant": "looksam", "variant_opts": {"k": 3, "alpha": 0.5}})
    assert cfg["variant_opts"] == {"k": 3, "alpha": 0.5}
    with pytest.raises(C.ConfigError, match="variant_opts"):
        C.resolve({"variant": "looksam", "variant_opts": {"k": 0}})
