"""Base optimizer `lion` (the lion-pytorch package): sambench's update equals the package's own.

Lion (Chen et al. 2023), per parameter with gradient g and momentum m (m_0 = 0):
    c = beta1 m + (1 - beta1) g
    w <- w (1 - lr wd) - lr sign(c)
    m <- beta2 m + (1 - beta2) g
"""
import copy

import lion_pytorch
import pytest
import torch
from torch import nn

from bench import config
from bench.engine import train
from bench.engine.build import make_base_optimizer
from bench.engine.sam import SAM

LION = {"name": "lion", "lr": 1e-3, "betas": [0.9, 0.99], "weight_decay": 0.5}
RHO = 0.5


def tiny_model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(16, 12), nn.LayerNorm(12), nn.ReLU(), nn.Linear(12, 3))


def batch():
    g = torch.Generator().manual_seed(1)
    return torch.randn(8, 16, generator=g), torch.randint(0, 3, (8,), generator=g)


def sambench_optimizer(model, variant):
    cfg = config.resolve({"base": LION, "variant": variant, "mask": "norm_only", "rho": RHO})
    base = make_base_optimizer(cfg, model.parameters())
    return SAM(model, base, rho=RHO, variant=variant, mask="norm_only")


def lion_by_hand(w, g, lr, wd, beta1, beta2):
    m = torch.zeros_like(w)
    c = beta1 * m + (1 - beta1) * g
    return w * (1 - lr * wd) - lr * torch.sign(c), beta2 * m + (1 - beta2) * g


def test_lion_is_validated_like_the_other_base_optimizers():
    cfg = config.resolve({"base": {"name": "lion"}})
    assert cfg["base"]["name"] == "lion"
    base = make_base_optimizer(cfg, tiny_model().parameters())
    assert isinstance(base, lion_pytorch.Lion)
    for bad, field in (({"name": "lion", "momentum": 0.9}, "base.momentum"),
                       ({"name": "lion", "lr": 0.0}, "base.lr"),
                       ({"name": "lion", "lr": float("nan")}, "base.lr"),
                       ({"name": "lion", "betas": [0.9, 1.5]}, "base.betas"),
                       ({"name": "lion", "betas": [0.9]}, "base.betas"),
                       ({"name": "lionn"}, "base.name")):
        with pytest.raises(config.ConfigError) as err:
            config.resolve({"base": bad})
        assert err.value.field == field, bad
    with pytest.raises(config.ConfigError) as err:
        config.resolve({"base": {"name": "lionn"}})
    assert "lion" in str(err.value)


def test_plain_lion_step_equals_the_package_and_the_formula():
    x, y = batch()
    model = tiny_model()
    reference = copy.deepcopy(model)
    start = [p.detach().clone() for p in model.parameters()]
    opt = sambench_optimizer(model, "none")
    nn.functional.cross_entropy(model(x), y).backward()
    grads = [p.grad.clone() for p in model.parameters()]
    opt.base_optimizer.step()

    ref_opt = lion_pytorch.Lion(reference.parameters(), lr=LION["lr"], betas=tuple(LION["betas"]),
                                weight_decay=LION["weight_decay"])
    nn.functional.cross_entropy(reference(x), y).backward()
    ref_opt.step()
    for p, q, w0, g in zip(model.parameters(), reference.parameters(), start, grads):
        assert torch.equal(p, q)
        by_hand, _ = lion_by_hand(w0, g, LION["lr"], LION["weight_decay"], *LION["betas"])
        torch.testing.assert_close(p.detach(), by_hand, rtol=0, atol=1e-7)
    # the momentum kept for the next step: m = (1 - beta2) g
    for p, g in zip(model.parameters(), grads):
        torch.testing.assert_close(opt.base_optimizer.state[p]["exp_avg"], (1 - LION["betas"][1]) * g)


def test_sam_step_with_lion_equals_the_package_on_the_perturbed_gradient():
    x, y = batch()
    model = tiny_model()
    reference = copy.deepcopy(model)
    opt = sambench_optimizer(model, "sam")
    loss = nn.functional.cross_entropy(model(x), y)
    opt.first_step(loss=loss)
    nn.functional.cross_entropy(model(x), y).backward()
    opt.second_step(zero_grad=True)

    # by hand: e = rho g / ||g|| on the LayerNorm's weight and bias only, gradient at w + e,
    # then the package's Lion step at w
    norm = reference[2]
    nn.functional.cross_entropy(reference(x), y).backward()
    g = [norm.weight.grad.clone(), norm.bias.grad.clone()]
    scale = RHO / torch.sqrt(sum((t ** 2).sum() for t in g))
    reference.zero_grad()
    with torch.no_grad():
        norm.weight.add_(scale * g[0])
        norm.bias.add_(scale * g[1])
    nn.functional.cross_entropy(reference(x), y).backward()
    with torch.no_grad():
        norm.weight.sub_(scale * g[0])
        norm.bias.sub_(scale * g[1])
    lion_pytorch.Lion(reference.parameters(), lr=LION["lr"], betas=tuple(LION["betas"]),
                      weight_decay=LION["weight_decay"]).step()
    for (name, p), q in zip(model.named_parameters(), reference.parameters()):
        torch.testing.assert_close(p, q, rtol=0, atol=1e-6, msg=name)
    assert not torch.equal(model[1].weight, tiny_model()[1].weight)  # it did move


def test_a_lion_run_trains_and_resumes(tmp_path):
    cfg = {"dataset": "digits", "model": "resnet_ci", "epochs": 2, "batch_size": 256, "variant": "sam",
           "mask": "norm_only", "rho": 0.5, "device": "cpu", "base": {"name": "lion", "lr": 3e-4},
           "logging": {"tensorboard": False}}
    full = train.run(cfg, tmp_path / "full", progress=False)
    assert full["status"] == "done" and full["config"]["base"]["name"] == "lion"

    class Stop(Exception):
        pass

    def stop_after_first(msg):
        if "epoch 1/2" in msg:
            raise Stop

    with pytest.raises(Stop):
        train.run(cfg, tmp_path / "resumed", progress=False, log=stop_after_first)
    resumed = train.run(cfg, tmp_path / "resumed", progress=False)
    assert resumed["test_acc"] == full["test_acc"] and resumed["train_loss"] == full["train_loss"]
