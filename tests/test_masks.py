"""Mask strategies, checked by counting and against brute-force references."""
from __future__ import annotations

import math

import pytest
import torch
from tiny_models import (
    NORM_NAMES_ODD,
    BatchMixing,
    ConvVariety,
    ConvZoo,
    NoNorm,
    NoTaps,
    OddNorms,
    SeqFirst,
    SharedWeights,
    TinyResNet,
    TinyViT,
    TokenMixer,
    batches,
    make,
)
from torch import nn
from torch.nn import functional as F

import masks
from masks.base import MaskError, n_trainable, norm_param_names, selection_count, trainable
from masks.dynamic import drop_fraction, grad_magnitude, n_exchanged
from masks.fisher import benchmark, fisher_diagonal
from masks.layerwise import model_blocks, model_layers
from masks.random import first_fit, sample_indices

torch.set_num_threads(2)

try:
    import bench.models as bench_models
except ImportError:  # another engineer's module; the cases using it are skipped without it
    bench_models = None


def bench_model(name: str) -> nn.Module:
    if bench_models is None:
        pytest.skip("bench.models is not available")
    torch.manual_seed(0)
    return bench_models.create_model(name, num_classes=10, in_chans=1, img_size=8)


TINY = {"resnet": TinyResNet, "vit": TinyViT}
SPARSITY_MASKS = ["random", "magnitude", "fisher", "dynamic"]
DATA = batches(32, 8)


def flat(sel: dict, model: nn.Module) -> torch.Tensor:
    """The selection as one bool vector over the trainable parameters, in order."""
    return torch.cat([
        (sel[n] if n in sel else torch.zeros_like(p, dtype=torch.bool)).reshape(-1)
        for n, p in trainable(model).items()
    ])


def expected_count(model: nn.Module, sparsity) -> int:
    if sparsity == "match:norm_only":
        return sum(trainable(model)[n].numel() for n in norm_param_names(model))
    if sparsity == "match:no_norm":
        return n_trainable(model) - expected_count(model, "match:norm_only")
    return math.floor(n_trainable(model) * (1 - sparsity) + 1e-9)


def build(name: str, model: nn.Module, data=DATA, **kw) -> dict:
    return masks.create_mask(name, **kw).build(model, data)


# --- exact counts ------------------------------------------------------------------------

@pytest.mark.parametrize("mask", SPARSITY_MASKS)
@pytest.mark.parametrize("arch", sorted(TINY))
@pytest.mark.parametrize("sparsity", [0.0, 0.5, 0.9, 0.999, "match:norm_only", "match:no_norm"])
def test_exact_counts(mask, arch, sparsity):
    model = make(TINY[arch])
    kw = {"num_samples": 16} if mask == "fisher" else {}
    sel = build(mask, model, sparsity=sparsity, **kw)
    assert selection_count(sel) == expected_count(model, sparsity)
    for n, m in sel.items():
        assert m.dtype == torch.bool and m.shape == trainable(model)[n].shape


@pytest.mark.parametrize("arch", sorted(TINY))
def test_dynamic_counts_after_updates(arch):
    model = make(TINY[arch])
    mask = masks.create_mask("dynamic", sparsity="match:norm_only")
    sel = mask.build(model, DATA)
    for epoch in (5, 10, 15):
        sel = mask.update(model, DATA, epoch, 20, sel)
        assert selection_count(sel) == expected_count(model, "match:norm_only")


@pytest.mark.parametrize("names", [("resnet_ci", "vit_ci"), ("resnet20", "vit_ci")])
def test_match_norm_only_on_bench_models(names):
    for name in names:
        model = bench_model(name)
        n_norm = sum(p.numel() for mod in model.modules() if masks.is_norm_module(mod)
                     for p in mod.parameters(recurse=False))
        assert n_norm > 0
        for mask in SPARSITY_MASKS:
            kw = {"num_samples": 8} if mask == "fisher" else {}
            sel = build(mask, model, sparsity="match:norm_only", **kw)
            assert selection_count(sel) == n_norm, (name, mask)


def test_match_norm_only_tiny_models_equal_their_norm_counts():
    for cls in TINY.values():
        model = make(cls)
        norm = {n for n, mod in model.named_modules() if isinstance(mod, (nn.BatchNorm2d, nn.LayerNorm))}
        n_norm = sum(p.numel() for n, p in model.named_parameters() if n.rsplit(".", 1)[0] in norm)
        assert selection_count(build("random", model, sparsity="match:norm_only")) == n_norm


# --- random ------------------------------------------------------------------------------

def test_random_seeded():
    model = make(TinyResNet)
    a = flat(build("random", model, sparsity=0.7, seed=3), model)
    b = flat(build("random", model, sparsity=0.7, seed=3), model)
    c = flat(build("random", model, sparsity=0.7, seed=4), model)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_random_roughly_uniform_across_tensors():
    model = make(TinyResNet)
    sel = build("random", model, sparsity=0.5, seed=0)
    for n, p in trainable(model).items():
        if p.numel() >= 200:
            frac = int(sel[n].sum()) / p.numel()
            assert 0.35 < frac < 0.65, (n, frac)


@pytest.mark.parametrize("n,k", [(320, 10), (320, 310), (20, 5), (20, 15)])
def test_sample_indices_uniform_and_exact(n, k):
    """Both branches (rejection for few, randperm otherwise; complement above n/2)."""
    g = torch.Generator().manual_seed(0)
    freq = torch.zeros(n)
    draws = 1500
    for _ in range(draws):
        b = sample_indices(n, k, g)
        assert int(b.sum()) == k
        freq += b
    expected = draws * k / n
    sd = math.sqrt(draws * (k / n) * (1 - k / n))
    assert float((freq - expected).abs().max()) < 5 * sd + 1


def test_random_tensor_first_fit_rule():
    model = make(TinyResNet)
    params = trainable(model)
    for sparsity in (0.3, 0.6, 0.9, 0.97):
        for seed in range(3):
            sel = build("random_tensor", model, sparsity=sparsity, seed=seed)
            target = expected_count(model, sparsity)
            count = selection_count(sel)
            assert count <= target
            assert all(sel[n].all() for n in sel)  # whole tensors
            gap = target - count
            assert all(p.numel() > gap for n, p in params.items() if n not in sel)
        a = build("random_tensor", model, sparsity=sparsity, seed=1)
        assert a.keys() == build("random_tensor", model, sparsity=sparsity, seed=1).keys()
    # several seeds give several different tensor sets
    sets = {frozenset(build("random_tensor", model, sparsity=0.6, seed=s)) for s in range(6)}
    assert len(sets) > 1


def test_first_fit_all_too_large_takes_smallest():
    assert first_fit([50, 7, 30], 5, seed=0) == [1]
    assert first_fit([4, 3, 2], 100, seed=0) == [0, 1, 2]


# --- magnitude -----------------------------------------------------------------------------

@pytest.mark.parametrize("largest", [True, False])
def test_magnitude_is_brute_force_topk(largest):
    model = make(TinyViT)
    for sparsity in (0.5, 0.95):
        sel = build("magnitude", model, sparsity=sparsity, largest=largest)
        w = torch.cat([p.detach().abs().reshape(-1) for p in trainable(model).values()])
        k = expected_count(model, sparsity)
        order = sorted(range(w.numel()), key=lambda i: float(w[i]), reverse=largest)
        ref = torch.zeros(w.numel(), dtype=torch.bool)
        ref[order[:k]] = True
        assert torch.equal(flat(sel, model), ref)


# --- fisher --------------------------------------------------------------------------------

def brute_force_fisher(model, data, num_samples):
    """One backward per sample, eval mode, same samples: written out here independently."""
    model.eval()
    params = trainable(model)
    out = {n: torch.zeros_like(p) for n, p in params.items()}
    seen = 0
    for x, y in data:
        for i in range(x.shape[0]):
            if seen == num_samples:
                break
            model.zero_grad()
            F.cross_entropy(model(x[i:i + 1]), y[i:i + 1]).backward()
            for n, p in params.items():
                if p.grad is not None:
                    out[n] += p.grad ** 2
            seen += 1
    model.zero_grad()
    model.train()
    return out


def assert_fisher_exact(got, ref):
    assert got.keys() == ref.keys()
    for n in ref:
        torch.testing.assert_close(got[n], ref[n], rtol=1e-9, atol=1e-14, msg=n)


# the way each model takes: "backward" = one batched backward per chunk (every parameter in a
# Linear, Conv2d or norm layer, samples independent); "vmap" for the parameters outside those
PATHS = {TinyResNet: ("backward", []), OddNorms: ("backward", []), TokenMixer: ("backward", []),
         ConvVariety: ("backward", []), ConvZoo: ("vmap", ["sub.weight", "sub.bias"]),
         TinyViT: ("vmap", ["cls_token", "pos_embed"]),
         SharedWeights: ("vmap", ["fc.weight", "fc.bias", "a.weight", "a.bias", "b.bias"]),
         SeqFirst: ("vmap", ["proj.weight", "proj.bias", "norm.weight", "norm.bias"]),
         BatchMixing: ("vmap", []), NoTaps: ("vmap", ["w", "b"])}


@pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel")
@pytest.mark.parametrize("cls", list(PATHS), ids=lambda c: c.__name__)
def test_fisher_equals_per_sample_loop(cls):
    model = make(cls).double().train()
    data = batches(24, 5, dtype=torch.float64)  # 13 samples: across batch boundaries
    running = {n: b.clone() for n, b in model.named_buffers()}
    ref = brute_force_fisher(model, data, 13)
    model.train()
    for chunk in ((1, 4, 64) if cls in (TinyViT, TokenMixer) else (4, 64)):  # 4: chunks across batches
        info = {}
        assert_fisher_exact(fisher_diagonal(model, data, num_samples=13, chunk_size=chunk, info=info), ref)
        assert (info["path"], info["others"]) == PATHS[cls]
    assert_fisher_exact(fisher_diagonal(model, data, num_samples=13, chunk_size=4, path="vmap"), ref)
    assert_fisher_exact(fisher_diagonal(model, data, num_samples=13, batched=False), ref)
    assert model.training  # mode restored
    for n, b in model.named_buffers():  # eval mode: running statistics untouched
        assert torch.equal(b, running[n])


def test_fisher_backward_path_refuses_what_it_cannot_take():
    data = batches(8, 4, dtype=torch.float64)
    with pytest.raises(ValueError, match="cls_token, pos_embed"):
        fisher_diagonal(make(TinyViT).double(), data, 4, path="backward")
    with pytest.raises(ValueError, match="samples interact"):
        fisher_diagonal(make(BatchMixing).double(), data, 4, path="backward")
    with pytest.raises(ValueError, match="path must be"):
        fisher_diagonal(make(TinyResNet).double(), data, 4, path="fast")


@pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel")
@pytest.mark.parametrize("way", ["pairs", "one_sample_blocks", "whole_chunk"])
@pytest.mark.parametrize("cls", [TinyResNet, ConvVariety, TokenMixer], ids=lambda c: c.__name__)
def test_fisher_conv_and_linear_ways_are_exact(monkeypatch, way, cls):
    """Every way of summing squared per-sample products, forced on every conv and linear layer
    with several positions: the pair form, blocks of one sample (product kept in cache, squared
    in place) and one batched GEMM over the whole chunk."""
    import masks.fisher_taps as FM

    monkeypatch.setattr(FM, "_PAIR_EXTRA", 10**9 if way == "pairs" else -(10**9))
    monkeypatch.setattr(FM, "_CACHE_BYTES", 1 if way == "one_sample_blocks" else 2**40)
    model = make(cls).double()
    data = batches(24, 5, dtype=torch.float64)
    ref = brute_force_fisher(model, data, 13)
    for path in ("backward", "vmap"):
        assert_fisher_exact(fisher_diagonal(model, data, num_samples=13, chunk_size=4, path=path), ref)


def test_fisher_float64_bench_models():
    """The bench models (timm's ViT with its LayerNorm, a CIFAR ResNet), exact in float64."""
    for name in ("resnet_ci", "vit_ci"):
        model = bench_model(name).double()
        data = batches(12, 6, dtype=torch.float64)
        ref = brute_force_fisher(model, data, 9)
        assert_fisher_exact(fisher_diagonal(model, data, 9, chunk_size=4), ref)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("cls", [TinyResNet, TokenMixer, TinyViT], ids=lambda c: c.__name__)
def test_fisher_on_cuda(cls):
    model = make(cls).double()
    data = batches(24, 5, dtype=torch.float64)
    ref = brute_force_fisher(model, data, 13)
    model.cuda()
    cuda_data = [(xb.cuda(), yb.cuda()) for xb, yb in data]
    got = fisher_diagonal(model, cuda_data, num_samples=13, chunk_size=4)
    assert_fisher_exact({n: v.cpu() for n, v in got.items()}, ref)


def test_fisher_mask_equals_brute_force_topk():
    model = make(TinyResNet).double()
    data = batches(24, 5, dtype=torch.float64)
    ref = brute_force_fisher(model, data, 13)
    scores = torch.cat([ref[n].reshape(-1) for n in trainable(model)])
    for sparsity in (0.6, 0.9):
        k = expected_count(model, sparsity)
        assert int((scores > 0).sum()) > k  # no tie at zero at the threshold
        order = torch.argsort(scores, descending=True, stable=True)
        expected = torch.zeros(scores.numel(), dtype=torch.bool)
        expected[order[:k]] = True
        for chunk in (3, 64):
            sel = build("fisher", model, data, sparsity=sparsity, num_samples=13, chunk_size=chunk)
            assert torch.equal(flat(sel, model), expected)


def test_fisher_float32_bench_models():
    for name in ("resnet_ci", "vit_ci"):
        model = bench_model(name)
        data = batches(16, 8)
        a = fisher_diagonal(model, data, 12, chunk_size=5)
        b = fisher_diagonal(model, data, 12, batched=False)
        scale = max(float(v.abs().max()) for v in b.values())
        for n in b:
            torch.testing.assert_close(a[n], b[n], rtol=1e-4, atol=1e-6 * scale)


def test_fisher_benchmark_smoke():
    out = benchmark(make(TinyResNet), DATA, num_samples=8, chunk_size=4, warmup_samples=2)
    assert {"batched_s", "loop_s", "ratio", "floor_s", "batched_vs_floor"} <= out.keys()
    assert out["num_samples"] == 8 and out["max_rel_diff"] < 1e-4 and out["path"] == "backward"
    assert out["batched_vs_floor"] == pytest.approx(out["batched_s"] / out["floor_s"])


def test_fisher_needs_data_and_options():
    mask = masks.create_mask("fisher", sparsity=0.5)
    assert mask.needs_data and mask.update_every == 5
    with pytest.raises(MaskError, match="needs data"):
        mask.build(make(TinyResNet), None)
    assert masks.create_mask("fisher", sparsity=0.5, update_every=0).update_every is None
    assert not masks.create_mask("fisher", sparsity=0.5, update_every=None).needs_update(5)
    m = masks.create_mask("fisher", sparsity=0.5, update_every=2)
    assert [e for e in range(7) if m.needs_update(e)] == [2, 4, 6]


# --- dynamic -------------------------------------------------------------------------------

def test_drop_fraction_schedule():
    mask = masks.create_mask("dynamic", sparsity=0.5, drop_rate=0.4)
    assert mask.drop_fraction(0, 10) == pytest.approx(0.4)
    assert mask.drop_fraction(5, 10) == pytest.approx(0.2)
    assert mask.drop_fraction(10, 10) == pytest.approx(0.0, abs=1e-12)
    assert drop_fraction(3, 12, 0.5) == pytest.approx(0.5 * (1 + math.cos(math.pi / 4)) / 2)


def test_dynamic_start_is_random_mask():
    model = make(TinyResNet)
    a = build("dynamic", model, sparsity=0.8, seed=7)
    b = build("random", model, sparsity=0.8, seed=7)
    assert torch.equal(flat(a, model), flat(b, model))


def brute_force_abs_grad(model, data):
    model.eval()
    model.zero_grad()
    x, y = data[0]
    F.cross_entropy(model(x), y).backward()
    g = torch.cat([p.grad.reshape(-1).abs() for p in trainable(model).values()])
    model.zero_grad()
    model.train()
    return g


@pytest.mark.parametrize("grow", ["random", "gradient"])
def test_dynamic_drop_and_grow(grow):
    model = make(TinyResNet).double()
    data = batches(16, 8, dtype=torch.float64)
    g = brute_force_abs_grad(model, data)
    grads = grad_magnitude(model, data, num_batches=1)
    torch.testing.assert_close(torch.cat([grads[n].reshape(-1) for n in trainable(model)]), g)

    epochs = 20
    mask = masks.create_mask("dynamic", sparsity=0.7, grow=grow, update_every=5, seed=1)
    sel = mask.build(model, data)
    live0 = flat(sel, model)
    k = int(live0.sum())
    assert k == expected_count(model, 0.7)
    for epoch in (5, 10, 15):
        assert mask.needs_update(epoch)
        old = flat(sel, model)
        sel = mask.update(model, data, epoch, epochs, sel)
        new = flat(sel, model)
        assert int(new.sum()) == k
        dropped, grown = old & ~new, new & ~old
        n = math.floor(0.5 * (1 + math.cos(math.pi * epoch / epochs)) / 2 * k + 0.5)
        assert n == n_exchanged(mask.drop_fraction(epoch, epochs), k, old.numel() - k)
        assert int(dropped.sum()) == n and int(grown.sum()) == n
        kept = old & new
        assert float(g[dropped].max()) <= float(g[kept].min())  # smallest |grad| among live
        if grow == "gradient":
            dead_left = ~old & ~new
            assert float(g[grown].min()) >= float(g[dead_left].max())
    # deterministic
    mask2 = masks.create_mask("dynamic", sparsity=0.7, grow=grow, update_every=5, seed=1)
    sel2 = mask2.build(model, data)
    for epoch in (5, 10, 15):
        sel2 = mask2.update(model, data, epoch, epochs, sel2)
    assert torch.equal(flat(sel2, model), flat(sel, model))
    assert model.training


def test_dynamic_update_at_end_changes_nothing():
    model = make(TinyResNet)
    mask = masks.create_mask("dynamic", sparsity=0.5, update_every=5)
    sel = mask.build(model, DATA)
    new = mask.update(model, DATA, 10, 10, sel)  # drop fraction 0
    assert torch.equal(flat(new, model), flat(sel, model))


# --- layerwise -----------------------------------------------------------------------------

def names_under(model, *prefixes):
    return {n for n in trainable(model) if n.startswith(tuple(p + "." for p in prefixes))}


def test_layerwise_blocks():
    model = make(TinyResNet)
    assert model_blocks(model) == ["stages.0", "stages.1", "stages.2"]
    sel = build("layerwise", model, blocks=[2, 3])
    assert set(sel) == names_under(model, "stages.1", "stages.2")
    assert all(m.all() for m in sel.values())
    assert set(build("layerwise", model, blocks=1)) == names_under(model, "stages.0")
    vit = make(TinyViT)
    assert set(build("layerwise", vit, blocks=[2])) == names_under(vit, "blocks.1")


def test_layerwise_blocks_fallbacks():
    model = make(TinyResNet)
    del model.mask_blocks
    assert model_blocks(model) == ["stages.0", "stages.1", "stages.2"]
    vit = make(TinyViT)
    del vit.mask_blocks
    assert model_blocks(vit) == ["blocks.0", "blocks.1"]
    odd = make(OddNorms)
    assert model_blocks(odd) == ["a", "foo", "b", "grp", "c", "zz", "d", "mine", "out"]
    assert set(build("layerwise", odd, blocks=[2, 6])) == {"foo.weight", "foo.bias", "zz.weight", "zz.bias"}


def test_layerwise_blocks_norm_only():
    model = make(TinyResNet)
    sel = build("layerwise", model, blocks=[2, 3], norm_only=True)
    expected = {n for n in names_under(model, "stages.1", "stages.2") if ".bn" in n}
    assert expected and set(sel) == expected
    assert set(sel) == set(norm_param_names(model)) & names_under(model, "stages.1", "stages.2")


def test_layerwise_first_last():
    model = make(TinyResNet)
    layers = [ps for _, _, ps in model_layers(model)]
    assert [n for n, _, _ in model_layers(model)][:3] == ["stem", "bn", "stages.0.conv1"]
    for k in (1, 3):
        assert set(build("layerwise", model, first=k)) == {p for ps in layers[:k] for p in ps}
        assert set(build("layerwise", model, last=k)) == {p for ps in layers[-k:] for p in ps}
    assert set(build("layerwise", model, last=1)) == {"head.weight", "head.bias"}
    norm_layers = [ps for _, m, ps in model_layers(model) if masks.is_norm_module(m)]
    assert set(build("layerwise", model, first=2, norm_only=True)) == set(norm_layers[0] + norm_layers[1])
    vit = make(TinyViT)
    assert set(build("layerwise", vit, first=1)) == {"cls_token", "pos_embed"}  # the model's own


def test_layerwise_types():
    model = make(TinyResNet)
    convs = {n for n, m in model.named_modules() if isinstance(m, nn.Conv2d)}
    assert set(build("layerwise", model, types=["Conv2d"])) == {c + ".weight" for c in convs}
    assert set(build("layerwise", model, types="linear")) == {"head.weight", "head.bias"}
    assert set(build("layerwise", model, types=["norm"])) == set(norm_param_names(model))
    assert set(build("layerwise", model, types=["norm", "Linear"])) == \
        set(norm_param_names(model)) | {"head.weight", "head.bias"}
    with pytest.raises(MaskError, match="LayerNorm"):
        build("layerwise", model, types=["LayerNorm"])


def test_layerwise_sparsity_matched_random_layers():
    model = make(TinyResNet)
    layers = model_layers(model)
    sizes = {name: sum(trainable(model)[p].numel() for p in ps) for name, _, ps in layers}
    for sparsity in (0.5, 0.9, "match:norm_only"):
        for seed in range(3):
            sel = build("layerwise", model, sparsity=sparsity, seed=seed)
            target = expected_count(model, sparsity)
            count = selection_count(sel)
            chosen = {name for name, _, ps in layers if set(ps) <= set(sel)}
            assert set(sel) == {p for name, _, ps in layers if name in chosen for p in ps}  # whole layers
            assert count <= target
            assert all(sizes[name] > target - count for name in sizes if name not in chosen)
    a = build("layerwise", model, sparsity=0.5, seed=2)
    assert set(a) == set(build("layerwise", model, sparsity=0.5, seed=2))
    # norm_only: random norm layers only
    sel = build("layerwise", model, sparsity=0.99, norm_only=True, seed=0)
    assert set(sel) <= set(norm_param_names(model)) and sel


# --- norm layers by module type ------------------------------------------------------------

def test_norm_detection_by_type():
    model = make(OddNorms)
    assert set(norm_param_names(model)) == NORM_NAMES_ODD
    assert set(build("norm_only", model)) == NORM_NAMES_ODD
    assert set(build("layerwise", model, types=["norm"])) == NORM_NAMES_ODD
    assert set(build("no_norm", model)) == set(trainable(model)) - NORM_NAMES_ODD
    n_norm = sum(trainable(model)[n].numel() for n in NORM_NAMES_ODD)
    assert selection_count(build("random", model, sparsity="match:norm_only")) == n_norm
    assert selection_count(build("fisher", model, sparsity="match:norm_only", num_samples=8)) == n_norm


def test_no_norm_layers_raise():
    model = make(NoNorm)
    with pytest.raises(MaskError, match="selects no parameter of NoNorm"):
        build("norm_only", model)
    with pytest.raises(MaskError, match="no trainable normalization layer"):
        build("layerwise", model, blocks=[1], norm_only=True)
    with pytest.raises(MaskError):
        build("random", model, sparsity="match:norm_only")


def test_layerwise_errors_at_build():
    model = make(TinyResNet)
    with pytest.raises(MaskError, match="blocks \\[4\\] out of range.*3 blocks"):
        build("layerwise", model, blocks=[3, 4])
    with pytest.raises(MaskError, match="last=99"):
        build("layerwise", model, last=99)


# --- options -------------------------------------------------------------------------------

@pytest.mark.parametrize("name,kw,exc,words", [
    ("random", {"sparsity": 0.5, "bogus": 1}, TypeError, ["bogus"]),
    ("fisher", {"sparsity": 0.5, "chunk": 8}, TypeError, ["chunk"]),
    ("layerwise", {"block": [1]}, TypeError, ["block"]),
    ("norm_only", {"sparsity": 0.5}, TypeError, ["sparsity"]),
    ("random", {}, ValueError, ["sparsity", "match:"]),
    ("random_tensor", {}, ValueError, ["sparsity"]),
    ("random", {"sparsity": 1.0}, ValueError, ["sparsity", "[0, 1)"]),
    ("magnitude", {"sparsity": "half"}, ValueError, ["sparsity"]),
    ("random", {"sparsity": 0.5, "seed": -1}, ValueError, ["seed"]),
    ("magnitude", {"sparsity": 0.5, "largest": "yes"}, ValueError, ["largest", "True", "False"]),
    ("fisher", {"sparsity": 0.5, "num_samples": 0}, ValueError, ["num_samples", ">= 1"]),
    ("fisher", {"sparsity": 0.5, "chunk_size": 2.5}, ValueError, ["chunk_size"]),
    ("fisher", {"sparsity": 0.5, "update_every": -1}, ValueError, ["update_every", ">= 0"]),
    ("dynamic", {"sparsity": 0.5, "grow": "magnitude"}, ValueError, ["grow", "'random'", "'gradient'"]),
    ("dynamic", {"sparsity": 0.5, "drop_rate": 1.5}, ValueError, ["drop_rate", "[0, 1]"]),
    ("dynamic", {"sparsity": 0.5, "num_batches": 0}, ValueError, ["num_batches"]),
    ("layerwise", {}, ValueError, ["exactly one", "blocks", "first", "last", "types", "sparsity"]),
    ("layerwise", {"blocks": [1], "last": 2}, ValueError, ["got blocks, last"]),
    ("layerwise", {"first": 1, "sparsity": 0.5}, ValueError, ["got first, sparsity"]),
    ("layerwise", {"blocks": []}, ValueError, ["blocks", "1-based"]),
    ("layerwise", {"blocks": [0, 1]}, ValueError, ["blocks"]),
    ("layerwise", {"first": 0}, ValueError, ["first"]),
    ("layerwise", {"types": []}, ValueError, ["types"]),
    ("layerwise", {"types": ["norm"], "norm_only": True}, ValueError, ["norm_only", "types"]),
    ("layerwise", {"blocks": [1], "norm_only": "yes"}, ValueError, ["norm_only"]),
])
def test_bad_options(name, kw, exc, words):
    with pytest.raises(exc) as info:
        masks.create_mask(name, **kw)
    for w in words:
        assert w in str(info.value), (w, str(info.value))


def test_described():
    rows = {name: (desc, opts) for name, desc, opts in masks.describe_masks()}
    for name in ("random", "random_tensor", "fisher", "dynamic", "magnitude", "layerwise"):
        desc, opts = rows[name]
        assert desc and "\n" not in desc
        assert "seed=0" in opts
    assert "chunk_size=64" in rows["fisher"][1] and "num_samples=1024" in rows["fisher"][1]
    assert "grow='random'" in rows["dynamic"][1] and "drop_rate=0.5" in rows["dynamic"][1]
    assert "norm_only=False" in rows["layerwise"][1]
    for name in SPARSITY_MASKS + ["random_tensor", "layerwise"]:
        assert masks.MASKS.get(name).uses_sparsity
    assert masks.MASKS.get("fisher").needs_data and masks.MASKS.get("dynamic").needs_data


def test_layerwise_on_bench_wrn():
    if bench_models is None:
        pytest.skip("bench.models is not available")
    torch.manual_seed(0)
    model = bench_models.create_model("wrn16_4", num_classes=10, in_chans=1, img_size=8)
    sel = build("layerwise", model, blocks=[2, 3], norm_only=True)
    blocks = model.mask_blocks
    expected = set(norm_param_names(model)) & names_under(model, blocks[1], blocks[2])
    assert expected and set(sel) == expected
