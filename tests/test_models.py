"""bench.models: every model builds for small and CIFAR shapes, parameter counts, mask_blocks, names."""
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")


import pytest
import torch
from torch import nn

from bench.models import create_model, describe_models
from bench.registries import MODELS, UnknownNameError, model_exists
from masks.base import norm_param_names

torch.set_num_threads(2)

SHAPES = [(1, 8), (3, 32)]
# forward on CPU at both shapes; the big ones only build there and run forward on 8x8
FAST = ["resnet20", "resnet32", "resnet56", "wrn16_4", "resnet_ci", "vit_ci", "vit_t", "wrn10_1",
        "timm:resnet18"]
BIG = ["wrn28_10", "resnext29_32x4d", "vit_s", "vit_s32"]

# exact counts of this implementation (10 classes, 3 input channels)
PARAMS = {
    "resnet20": 269_722,         # He et al.: 0.27M
    "resnet32": 464_154,         # 0.46M
    "resnet56": 853_018,         # 0.85M
    "wrn16_4": 2_748_890,        # Zagoruyko & Komodakis: 2.7M
    "wrn28_10": 36_479_194,      # 36.5M
    "resnext29_32x4d": 4_775_754,
    "vit_t": 5_362_762,
    "vit_s": 21_342_346,
}


def n_params(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def meta(name, num_classes=10, in_chans=3, img_size=32):
    """Build on the meta device: the structure and shapes, without the cost of initialization."""
    with torch.device("meta"):
        return create_model(name, num_classes, in_chans, img_size)


def test_all_registered_are_tested():
    assert set(MODELS.names()) <= set(FAST) | set(BIG)


@pytest.mark.parametrize("in_chans,img_size", SHAPES)
@pytest.mark.parametrize("name", FAST)
def test_build_and_forward(name, in_chans, img_size):
    torch.manual_seed(0)
    m = create_model(name, num_classes=7, in_chans=in_chans, img_size=img_size)
    x = torch.randn(2, in_chans, img_size, img_size)
    m.train()
    out = m(x)
    assert out.shape == (2, 7) and torch.isfinite(out).all()
    out.sum().backward()
    m.eval()
    with torch.no_grad():
        assert m(x).shape == (2, 7)


@pytest.mark.parametrize("name", BIG)
def test_big_models_build(name):
    m = meta(name, 10, 3, 32)  # the CIFAR shape: structure only (too slow to run here)
    assert isinstance(m, nn.Module) and m.mask_blocks
    torch.manual_seed(0)  # a real build, run on a cheap 8x8 input
    m = create_model(name, num_classes=10, in_chans=1, img_size=8).eval()
    with torch.no_grad():
        assert m(torch.randn(2, 1, 8, 8)).shape == (2, 10)


def test_vit_s32_is_timms_vit_small_patch32_224():
    """The paper's ImageNet model: the shapes of timm's vit_small_patch32_224 (22.9M parameters)."""
    import timm

    with torch.device("meta"):
        ours = meta("vit_s32", 1000, 3, 224)
        timms = timm.create_model("vit_small_patch32_224", pretrained=False)
    shapes = [(n, tuple(p.shape)) for n, p in ours.named_parameters()]
    assert shapes == [(n, tuple(p.shape)) for n, p in timms.named_parameters()]
    assert n_params(ours) == 22_878_952


@pytest.mark.parametrize("name,count", sorted(PARAMS.items()))
def test_parameter_counts(name, count):
    assert n_params(meta(name)) == count
    if count < 1e6:  # and a real build, for the small ones
        assert n_params(create_model(name, 10)) == count


def test_parameter_counts_match_literature():
    approx = {"resnet20": 0.27e6, "resnet56": 0.85e6, "wrn28_10": 36.5e6, "wrn16_4": 2.75e6}
    for name, ref in approx.items():
        assert abs(PARAMS[name] - ref) / ref < 0.01, name


@pytest.mark.parametrize("name", FAST + BIG)
def test_mask_blocks_are_module_prefixes(name):
    m = meta(name, 10, 1, 8)
    modules = dict(m.named_modules())
    assert isinstance(m.mask_blocks, list) and m.mask_blocks
    for prefix in m.mask_blocks:
        assert prefix in modules and any(True for _ in modules[prefix].parameters())
    params = [n for n, _ in m.named_parameters()]
    owners = [min(i for i, b in enumerate(m.mask_blocks) if n.startswith(b + "."))
              for n in params if any(n.startswith(b + ".") for b in m.mask_blocks)]
    assert owners == sorted(owners)  # blocks are listed in forward order
    # the mask layer finds normalization parameters by module type
    assert norm_param_names(m)


def test_mask_blocks_values():
    for name in ("resnet20", "wrn16_4", "wrn28_10", "resnext29_32x4d"):
        assert meta(name).mask_blocks == ["stages.0", "stages.1", "stages.2"]
    assert meta("vit_t").mask_blocks == [f"blocks.{i}" for i in range(12)]
    assert meta("vit_ci", 10, 1, 8).mask_blocks == ["blocks.0", "blocks.1"]
    assert meta("timm:resnet18").mask_blocks == ["layer1", "layer2", "layer3", "layer4"]


def test_norm_layers():
    bn = create_model("resnet20", 10)
    assert all(isinstance(mod, nn.BatchNorm2d) for mod in bn.modules()
               if isinstance(mod, (nn.BatchNorm2d, nn.LayerNorm)))
    names = norm_param_names(bn)
    assert len(names) == 2 * 19  # 19 BatchNorms, weight and bias each
    vit = meta("vit_ci", 10, 1, 8)
    assert sum(isinstance(mod, nn.LayerNorm) for mod in vit.modules()) == 2 * 2 + 1


def test_wrn_is_preactivation():
    m = meta("wrn16_4")
    unit = m.stages[0][0]
    assert isinstance(unit.bn1, nn.BatchNorm2d) and unit.bn1.num_features == 16
    assert isinstance(unit.shortcut, nn.Conv2d) and unit.shortcut.kernel_size == (1, 1)
    assert isinstance(m.bn, nn.BatchNorm2d) and m.bn.num_features == 256
    assert [len(s) for s in m.stages] == [2, 2, 2]
    assert [len(s) for s in meta("wrn28_10").stages] == [4, 4, 4]


def test_vit_patch_size_adapts():
    def patch(name, size):
        return meta(name, 10, 3, size).patch_embed.patch_size

    assert patch("vit_t", 32) == (4, 4) and patch("vit_t", 28) == (4, 4)
    assert patch("vit_t", 30) == (3, 3) and patch("vit_t", 7) == (1, 1)
    assert patch("vit_ci", 8) == (2, 2)
    assert patch("vit_ci", 32) == (8, 8) and patch("vit_ci", 30) == (6, 6)
    m = create_model("vit_ci", 10, 1, 30)
    assert m(torch.randn(1, 1, 30, 30)).shape == (1, 10)


def test_wrn_pattern_and_timm():
    assert model_exists("wrn40_2")
    m = create_model("wrn40_2", 10)
    assert [len(s) for s in m.stages] == [6, 6, 6] and m.fc.in_features == 128
    t = create_model("timm:resnet18", 5, in_chans=1, img_size=8)
    assert t.fc.out_features == 5 and t.conv1.in_channels == 1
    assert t(torch.randn(2, 1, 8, 8)).shape == (2, 5)
    v = create_model("timm:vit_tiny_patch16_224", 3, in_chans=3, img_size=32)  # takes img_size
    assert v(torch.randn(1, 3, 32, 32)).shape == (1, 3)


@pytest.mark.parametrize("bad", ["resnet21", "wrn15_4", "vgg", "timm:not_a_model_xyz"])
def test_unknown_names(bad):
    with pytest.raises(UnknownNameError) as e:
        create_model(bad, 10)
    if not bad.startswith("timm:"):
        msg = str(e.value)
        assert "resnet20" in msg and "vit_ci" in msg and "timm:<name>" in msg and "wrn<depth>_<width>" in msg


@pytest.mark.parametrize("name", ["resnet_ci", "vit_ci", "resnet20"])
def test_seeded_determinism(name):
    def build():
        torch.manual_seed(123)
        return create_model(name, 10, 1, 8)

    a, b = build(), build()
    for (na, pa), (nb, pb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert na == nb and torch.equal(pa, pb)
    x = torch.randn(4, 1, 8, 8)
    assert torch.equal(a(x), b(x))
    torch.manual_seed(7)
    c = create_model(name, 10, 1, 8)
    assert not all(torch.equal(p, q) for p, q in zip(a.parameters(), c.parameters()))


def test_kaiming_conv_init():
    m = create_model("resnet56", 10)
    w = m.stages[2][0].conv1.weight  # fan_out = 64 * 9
    assert abs(w.std().item() - (2 / (64 * 9)) ** 0.5) < 0.01


def test_describe_models():
    desc = dict(describe_models())
    assert set(MODELS.names()) <= set(desc)
    assert "timm:<name>" in desc and all(isinstance(v, str) and v for v in desc.values())


@pytest.mark.parametrize("name", ["resnet_ci", "vit_ci"])
def test_ci_models_are_small(name):
    """CI models stay tiny (their speed is measured by `sambench perf`, not by a timed test)."""
    m = create_model(name, 10, 1, 8)
    assert sum(p.numel() for p in m.parameters()) < 50_000
    assert m(torch.randn(4, 1, 8, 8)).shape == (4, 10)
