"""The N:M mask and the gradient-norm layer mask, checked element by element / layer by layer."""
import math

import pytest
import torch
from tiny_models import TinyResNet, TinyViT, batches, make
from torch import nn
from torch.nn import functional as F

import masks
from bench.engine.amp import autocast_factory
from bench.engine.sam import SAM
from bench.engine.step import train_step
from masks.fisher import fisher_diagonal
from masks.layerwise import model_layers


def brute_nm(score, n, m):
    """Loop version: for every output unit and kernel position, runs of m along the input dim."""
    keep = torch.zeros_like(score, dtype=torch.bool)
    flat_s = score.movedim(1, -1).reshape(-1, score.shape[1])
    flat_k = keep.movedim(1, -1).reshape(-1, score.shape[1]).clone()
    for r in range(flat_s.shape[0]):
        for start in range(0, score.shape[1], m):
            run = flat_s[r, start:start + m]
            order = sorted(range(run.numel()), key=lambda i: -float(run[i]))[:min(n, run.numel())]
            for i in order:
                flat_k[r, start + i] = True
    moved_shape = score.movedim(1, -1).shape
    return flat_k.reshape(moved_shape).movedim(-1, 1)


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 3, 3, padding=1)   # in = 1: every run is one element
        self.bn = nn.BatchNorm2d(3)
        self.conv2 = nn.Conv2d(3, 6, 2, stride=2)   # in = 3 < m
        self.fc = nn.Linear(6 * 16, 10)             # in = 96

    def forward(self, x):
        x = F.relu(self.conv2(F.relu(self.bn(self.conv(x)))))
        return self.fc(x.flatten(1))


@pytest.mark.parametrize("n,m", [(2, 4), (1, 4), (3, 8), (4, 4)])
def test_nm_magnitude_is_the_top_n_of_every_m_inputs(n, m):
    model = make(Net)
    sel = masks.create_mask("nm", n=n, m=m).build(model)
    params = dict(model.named_parameters())
    assert set(sel) == {n_ for n_, p in params.items() if p.dim() >= 2}  # biases and norm params not perturbed
    for name, keep in sel.items():
        assert torch.equal(keep, brute_nm(params[name].detach().abs(), n, m)), name
    fc = sel["fc.weight"]
    assert int(fc.sum()) == 10 * 96 * n // m  # 96 inputs = 96/m full runs of m


def test_nm_fisher_uses_the_fisher_diagonal_and_rebuilds():
    model = make(Net)
    data = batches(n=16, batch_size=8)
    mask = masks.create_mask("nm", score="fisher", num_samples=16, update_every=2)
    assert mask.needs_data and mask.needs_update(2) and not mask.needs_update(1)
    sel = mask.build(model, data)
    fisher = fisher_diagonal(model, data, 16)  # the score (its own tests compare it with the loop)
    for name, keep in sel.items():
        assert torch.equal(keep, brute_nm(fisher[name], 2, 4)), name
    with pytest.raises(masks.MaskError, match="needs data"):
        mask.build(model)


def test_nm_options():
    with pytest.raises(ValueError, match="n=5 must be <= m=4"):
        masks.create_mask("nm", n=5, m=4)
    with pytest.raises(ValueError, match="score"):
        masks.create_mask("nm", score="random")
    with pytest.raises(TypeError, match="sparsity"):
        masks.create_mask("nm", sparsity=0.5)
    assert not masks.create_mask("nm").needs_data


def hand_layer_norms(model, data):
    was = model.training
    model.eval()
    params = dict(model.named_parameters())
    x, y = data[0]
    grads = dict(zip(params, torch.autograd.grad(F.cross_entropy(model(x), y), list(params.values()))))
    model.train(was)
    return [math.sqrt(sum(float(grads[n].double().square().sum()) for n in names))
            for _, _, names in model_layers(model)]


@pytest.mark.parametrize("cls", [TinyResNet, TinyViT])
@pytest.mark.parametrize("sparsity", [0.9, 0.5])
def test_gradnorm_layers_takes_the_largest_gradient_norms_first_fit(cls, sparsity):
    model = make(cls)
    data = batches(n=16, batch_size=16)
    mask = masks.create_mask("gradnorm_layers", sparsity=sparsity)
    sel = mask.build(model, data)
    layers = model_layers(model)
    params = dict(model.named_parameters())
    sizes = [sum(params[n].numel() for n in names) for _, _, names in layers]
    norms = hand_layer_norms(model, data)
    target = mask.target_count(model, data)
    want, count = [], 0
    for i in sorted(range(len(layers)), key=lambda i: -norms[i]):  # the rule, written out
        if count + sizes[i] <= target:
            want.append(i)
            count += sizes[i]
    assert set(sel) == {n for i in want for n in layers[i][2]}
    assert masks.selection_count(sel) == count <= target
    left = [sizes[i] for i in range(len(layers)) if i not in want]
    assert all(s > target - count for s in left)  # nothing left out would fit


def test_gradnorm_layers_is_rechosen_every_update_every_epochs():
    model = make(TinyResNet)
    data = batches(n=32, batch_size=16)
    opt = SAM(model, torch.optim.SGD(model.parameters(), lr=0.5), rho=0.3,
              mask=masks.create_mask("gradnorm_layers", sparsity=0.95, update_every=2))
    opt.build_mask(data)
    assert not opt.on_epoch_start(1, 4, data)
    for x, y in data * 3:
        train_step(model, opt, x, y, nn.CrossEntropyLoss(), autocast_factory("none", "cpu"))
    assert opt.on_epoch_start(2, 4, data)
    assert set(opt.selection) == set(opt.mask.build(model, data))  # re-chosen on the trained weights
    assert "selection" in opt.state_dict()
