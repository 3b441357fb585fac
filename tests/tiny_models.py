"""Tiny models for the mask tests, built from torch modules only (1x8x8 inputs, 10 classes)."""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.short = None if cin == cout and stride == 1 else nn.Conv2d(cin, cout, 1, stride, bias=False)

    def forward(self, x):
        y = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
        return F.relu(y + (x if self.short is None else self.short(x)))


class TinyResNet(nn.Module):
    """BatchNorm CNN: stem conv+bn, three stages of one BasicBlock, linear head."""

    def __init__(self, num_classes: int = 10, in_chans: int = 1, widths=(4, 6, 8)):
        super().__init__()
        self.stem = nn.Conv2d(in_chans, widths[0], 3, 1, 1, bias=False)
        self.bn = nn.BatchNorm2d(widths[0])
        cins = (widths[0],) + tuple(widths[:-1])
        self.stages = nn.Sequential(*[BasicBlock(ci, co, 1 if i == 0 else 2)
                                      for i, (ci, co) in enumerate(zip(cins, widths))])
        self.head = nn.Linear(widths[-1], num_classes)
        self.mask_blocks = ["stages.0", "stages.1", "stages.2"]

    def forward(self, x):
        x = self.stages(F.relu(self.bn(self.stem(x))))
        return self.head(x.mean((2, 3)))


class Attention(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x):
        b, n, d = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        att = (q @ k.transpose(-1, -2) / (d // self.heads) ** 0.5).softmax(-1)
        return self.proj((att @ v).transpose(1, 2).reshape(b, n, d))


class Block(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))

    def forward(self, x):
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class TinyViT(nn.Module):
    """LayerNorm transformer: patch embedding, cls token and position embedding on the model
    itself, two pre-norm blocks, final norm, linear head."""

    def __init__(self, num_classes: int = 10, in_chans: int = 1, img: int = 8, patch: int = 4, dim: int = 8,
                 depth: int = 2, heads: int = 2):
        super().__init__()
        self.cls_token = nn.Parameter(torch.randn(1, 1, dim) * 0.02)
        self.pos_embed = nn.Parameter(torch.randn(1, (img // patch) ** 2 + 1, dim) * 0.02)
        self.patch_embed = nn.Conv2d(in_chans, dim, patch, patch)
        self.blocks = nn.ModuleList([Block(dim, heads) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)
        self.mask_blocks = [f"blocks.{i}" for i in range(depth)]

    def forward(self, x):
        x = self.patch_embed(x).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], 1) + self.pos_embed
        for blk in self.blocks:
            x = blk(x)
        return self.head(self.norm(x)[:, 0])


class MyLayerNorm(nn.LayerNorm):
    """A custom subclass: still a norm layer by type."""


class OddNorms(nn.Module):
    """Norm layers under unusual attribute names, of four kinds."""

    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.a = nn.Conv2d(1, 4, 3, 1, 1)
        self.foo = nn.BatchNorm2d(4)
        self.b = nn.Conv2d(4, 4, 3, 2, 1)
        self.grp = nn.GroupNorm(2, 4)
        self.c = nn.Linear(4 * 4 * 4, 12)
        self.zz = nn.LayerNorm(12)
        self.d = nn.Linear(12, 12)
        self.mine = MyLayerNorm(12)
        self.out = nn.Linear(12, num_classes)

    def forward(self, x):
        x = F.relu(self.foo(self.a(x)))
        x = F.relu(self.grp(self.b(x))).flatten(1)
        x = self.mine(F.relu(self.d(self.zz(self.c(x)))))
        return self.out(x)


NORM_NAMES_ODD = {"foo.weight", "foo.bias", "grp.weight", "grp.bias", "zz.weight", "zz.bias",
                  "mine.weight", "mine.bias"}


class NoNorm(nn.Module):
    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.conv = nn.Conv2d(1, 3, 3, 2, 1)
        self.fc = nn.Linear(3 * 4 * 4, num_classes)

    def forward(self, x):
        return self.fc(F.relu(self.conv(x)).flatten(1))


class Conv2dSubclass(nn.Conv2d):
    """A Conv2d subclass that transforms its weight (must not take the fast conv path)."""

    def forward(self, x):
        return self._conv_forward(x, self.weight * 1.5, self.bias)


class ConvZoo(nn.Module):
    """Every Conv2d variant the batched Fisher path must get right, plus a frozen parameter."""

    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.c1 = nn.Conv2d(1, 4, 3, 1, 1, bias=True)                     # bias
        self.bn = nn.BatchNorm2d(4)
        self.c2 = nn.Conv2d(4, 6, (3, 2), stride=(2, 1), padding=(1, 2), groups=2)  # groups, asym
        self.c3 = nn.Conv2d(6, 6, 3, padding=2, dilation=2, groups=6, bias=False)  # depthwise, dilation
        self.c4 = nn.Conv2d(6, 5, 1)                                       # 1x1
        self.shared = nn.Conv2d(5, 5, 3, padding=1)                        # called twice
        self.same = nn.Conv2d(5, 5, 3, padding="same")                     # string padding
        self.sub = Conv2dSubclass(5, 4, 3, padding=1)                      # subclass
        self.frozen = nn.Conv2d(4, 4, 1)
        self.frozen.weight.requires_grad_(False)                           # bias trainable only
        self.fc = nn.Linear(4, num_classes)

    def forward(self, x):
        x = F.relu(self.bn(self.c1(x)))
        x = F.relu(self.c4(self.c3(F.relu(self.c2(x)))))
        x = F.relu(self.shared(F.relu(self.shared(x))))
        x = F.relu(self.sub(F.relu(self.same(x))))
        x = self.frozen(x)
        return self.fc(x.mean((2, 3)))


class TokenMixer(nn.Module):
    """A LayerNorm transformer with every parameter in a Linear, Conv2d or LayerNorm (no class
    token, no position embedding): patch embedding of 2x2 patches (16 positions), two pre-norm
    blocks (linear layers at 16 positions), final norm, mean over tokens, linear head."""

    def __init__(self, num_classes: int = 10, in_chans: int = 1, dim: int = 8, depth: int = 2, heads: int = 2):
        super().__init__()
        self.patch_embed = nn.Conv2d(in_chans, dim, 2, 2)
        self.blocks = nn.ModuleList([Block(dim, heads) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)

    def forward(self, x):
        x = self.patch_embed(x).flatten(2).transpose(1, 2)
        for blk in self.blocks:
            x = blk(x)
        return self.head(self.norm(x).mean(1))


class ConvVariety(nn.Module):
    """Convolutions the batched Fisher path must unfold right (even kernel with "same" padding,
    reflect and circular padding, stride with dilation and groups), GroupNorm, and a one-position
    Linear followed by BatchNorm1d and, where torch has it, RMSNorm."""

    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.c1 = nn.Conv2d(1, 4, 4, padding="same")                                    # asymmetric padding
        self.c2 = nn.Conv2d(4, 6, 3, stride=2, padding=2, dilation=2, groups=2, padding_mode="reflect")
        self.gn = nn.GroupNorm(3, 6)
        self.c3 = nn.Conv2d(6, 6, (2, 3), padding=(1, 1), padding_mode="circular", bias=False)
        self.fc = nn.Linear(6, 12)
        self.bn1d = nn.BatchNorm1d(12)
        self.rms = nn.RMSNorm(12) if hasattr(nn, "RMSNorm") else nn.LayerNorm(12)
        self.out = nn.Linear(12, num_classes)

    def forward(self, x):
        x = F.relu(self.c1(x))
        x = F.relu(self.gn(self.c2(x)))
        x = self.c3(x).mean((2, 3))
        return self.out(self.rms(F.relu(self.bn1d(self.fc(x)))))


class SharedWeights(nn.Module):
    """A Linear whose weight is also used outside its own forward, and two tied Linear layers:
    their per-sample gradients are not a function of one module's (input, output gradient)."""

    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, 2, 1)
        self.bn = nn.BatchNorm2d(4)
        self.fc = nn.Linear(64, 16)
        self.a = nn.Linear(16, 16)
        self.b = nn.Linear(16, 16)
        self.b.weight = self.a.weight
        self.head = nn.Linear(16, num_classes)

    def forward(self, x):
        h = F.relu(self.bn(self.conv(x))).flatten(1)
        h = torch.tanh(self.fc(h)) + 0.5 * torch.tanh(F.linear(h, self.fc.weight))
        return self.head(torch.tanh(self.b(torch.tanh(self.a(h)))))


class SeqFirst(nn.Module):
    """Tokens laid out (positions, batch, features): a Linear and a LayerNorm see the batch in
    dimension 1 (the batched Fisher path must not take dimension 0 for the sample)."""

    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.proj = nn.Linear(8, 6)
        self.norm = nn.LayerNorm(6)
        self.head = nn.Linear(6, num_classes)

    def forward(self, x):
        tokens = x.flatten(1, 2).transpose(0, 1)   # (8 rows, batch, 8 columns)
        h = self.norm(torch.tanh(self.proj(tokens)))
        return self.head(h.mean(0))


class BatchMixing(nn.Module):
    """Samples interact even in eval mode (features centred over the batch)."""

    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.fc1 = nn.Linear(64, 16)
        self.fc2 = nn.Linear(16, num_classes)

    def forward(self, x):
        h = torch.tanh(self.fc1(x.flatten(1)))
        return self.fc2(h - 0.5 * h.mean(0, keepdim=True))


RMS = (nn.RMSNorm,) if hasattr(nn, "RMSNorm") else ()


def make(cls, seed: int = 0, **kw) -> nn.Module:
    """Build a model with non-trivial norm affine parameters and running statistics."""
    torch.manual_seed(seed)
    model = cls(**kw)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm, *RMS)):
                if getattr(m, "weight", None) is not None:
                    m.weight.uniform_(0.5, 1.5)
                if getattr(m, "bias", None) is not None:
                    m.bias.uniform_(-0.3, 0.3)
                if getattr(m, "running_mean", None) is not None:
                    m.running_mean.uniform_(-0.2, 0.2)
                    m.running_var.uniform_(0.5, 1.5)
    return model


def batches(n: int = 32, batch_size: int = 8, seed: int = 1, shape=(1, 8, 8), num_classes: int = 10,
            dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, *shape, generator=g).to(dtype)
    y = torch.randint(0, num_classes, (n,), generator=g)
    return [(x[i:i + batch_size], y[i:i + batch_size]) for i in range(0, n, batch_size)]


class NoTaps(nn.Module):
    """Only parameters used directly (no Linear, Conv2d or norm layer): all per-sample gradients
    come from vmap."""

    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.w = nn.Parameter(torch.randn(64, num_classes) * 0.1)
        self.b = nn.Parameter(torch.zeros(num_classes))

    def forward(self, x):
        return torch.tanh(x.flatten(1)) @ self.w + self.b


class LNNet(nn.Module):
    """Linear -> LayerNorm -> ReLU -> Linear: a LayerNorm model whose gradients do not depend on
    running statistics (no buffers, no dropout), for checks against written-out formulas."""

    def __init__(self, width: int = 4):
        super().__init__()
        self.inp = nn.Linear(5, width)
        self.norm = nn.LayerNorm(width)
        self.out = nn.Linear(width, 3)

    def forward(self, x):
        return self.out(torch.relu(self.norm(self.inp(x))))


def ln_net(width: int = 4) -> LNNet:
    """An LNNet with seeded weights and a LayerNorm away from its identity initialization."""
    torch.manual_seed(0)
    model = LNNet(width)
    with torch.no_grad():
        model.norm.weight.uniform_(0.5, 1.5)
        model.norm.bias.uniform_(-0.3, 0.3)
    return model
