"""The per-sample squares of the empirical Fisher diagonal, summed without materializing
per-sample gradients where the algebra allows (the score of masks.fisher, SSAM-F).

Score of an element: F = sum over samples of (per-sample gradient of the cross-entropy with
the TRUE labels)^2, over ``num_samples`` training samples taken from the first batches of the
data. The mask keeps the global top ``target_count`` elements. The model is put in ``eval()``
mode (BatchNorm uses its running statistics, so the samples are independent and nothing in the
model changes; dropout is off) and its previous mode is restored afterwards.

How the squares are summed, exactly, and without materializing per-sample gradients where the
algebra allows:

- *Taps*: plain ``nn.Linear``, ``nn.Conv2d`` and normalization layers (BatchNorm with running
  statistics, LayerNorm, GroupNorm, RMSNorm). A tap's per-sample gradient is a function of its
  input ``a_n`` and of the loss gradient ``d_n`` at its output. A linear layer applied at
  positions t has ``G_n = sum_t d_nt a_nt^T``. With one position ``sum_n G_n^2 = (d^2)^T (a^2)``,
  one product over the samples. With several positions (ViT tokens) the square does not factor:
  ``G_n`` is made for a block of samples by one batched GEMM, squared and summed; for very few
  positions the pair form ``sum_{t<=s} w_ts (d_t * d_s)(a_t * a_s)^T`` (w = 1 on the diagonal,
  2 off it) is one product. A Conv2d is the same with ``a`` = its unfolded (im2col) input and
  positions = output pixels, per group. Norm layers: ``gamma_n = sum_positions d_n * xhat_n``,
  ``beta_n = sum_positions d_n``; a bias: ``sum_positions d_n``. A module called several times:
  its calls are more positions of the same sample.
- The ``d_n`` of all taps come from ONE ordinary batched backward of the summed loss, asking
  autograd only for the gradients at the taps' outputs (no weight gradients), when every
  trainable parameter belongs to a tap and the model treats samples independently.
- Otherwise (parameters outside taps, e.g. a ViT's class token and position embedding, or custom
  layers) ``torch.func``'s ``vmap(grad(...))`` over a chunk gives the per-sample gradients of
  those parameters and the ``d_n`` of the taps (a zero tensor added to each tap's output).

Before either, the taps are checked against autograd on two samples (one backward each); a
module whose parameters are also used outside its forward, or tied to another, is no tap.
``fisher_diagonal(..., batched=False)`` is the one-backward-per-sample reference.
"""
from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F
from torch.nn.modules.batchnorm import _BatchNorm

from masks.base import MaskError


def model_device(model: nn.Module) -> torch.device:
    for t in model.parameters():
        return t.device
    for t in model.buffers():
        return t.device
    return torch.device("cpu")


def take_samples(data: Iterable, num_samples: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The first ``num_samples`` (inputs, targets) of the data's first batches (fewer if it ends)."""
    xs, ys, n = [], [], 0
    for batch in data:
        x, y = batch[0], batch[1]
        take = min(num_samples - n, x.shape[0])
        xs.append(x[:take])
        ys.append(y[:take])
        n += take
        if n >= num_samples:
            break
    if n == 0:
        raise MaskError("the data yielded no sample to compute gradients on")
    return torch.cat(xs), torch.cat(ys)


def logits_of(out) -> torch.Tensor:
    if isinstance(out, (tuple, list)):
        out = out[0]
    return out.float() if out.dtype in (torch.float16, torch.bfloat16) else out


# --- taps: modules whose per-sample gradient is a function of (input, output gradient) ---------

_NORM_FORWARDS = {_BatchNorm.forward, nn.LayerNorm.forward, nn.GroupNorm.forward}
if hasattr(nn, "RMSNorm"):
    _NORM_FORWARDS.add(nn.RMSNorm.forward)

_CACHE_BYTES = 2 ** 21      # CPU: per-sample gradients are made and squared in blocks this size
_DEVICE_BYTES = 2 ** 28     # CUDA: the same, bounded for memory only
_PAIR_EXTRA = 8             # pairs (above) pay off while T(T+1)/2 <= T + this


@dataclass
class Tap:
    module: nn.Module
    kind: str                   # "linear" | "conv" | "norm"
    keys: dict[str, str]        # parameter attribute ("weight", "bias") -> score name


def _tap_kind(m: nn.Module) -> str | None:
    """A module type whose forward is exactly torch's (subclasses that override it are no taps)."""
    fwd = type(m).forward
    if fwd is nn.Linear.forward:
        return "linear"
    if fwd is nn.Conv2d.forward:
        return "conv"
    timm_layernorm = type(m).__module__ == "timm.layers.norm" and type(m).__name__ == "LayerNorm"
    if fwd in _NORM_FORWARDS or timm_layernorm:  # timm's LayerNorm: F.layer_norm or the same math
        if isinstance(m, _BatchNorm) and (m.running_mean is None or m.running_var is None):
            return None  # batch statistics even in eval mode
        return "norm"
    return None


def find_taps(model: nn.Module, params: dict[str, torch.Tensor]) -> dict[str, Tap]:
    """Taps by module name: supported type, every trainable parameter its own (not tied)."""
    owners: dict[int, int] = {}
    for m in model.modules():
        for p in m._parameters.values():
            if p is not None:
                owners[id(p)] = owners.get(id(p), 0) + 1
    taps = {}
    for name, m in model.named_modules():
        kind = _tap_kind(m)
        if kind is None:
            continue
        keys, ok = {}, True
        for attr, p in m._parameters.items():
            if p is None or not p.requires_grad:
                continue
            key = f"{name}.{attr}" if name else attr
            ok = ok and params.get(key) is p and owners[id(p)] == 1
            keys[attr] = key
        if ok and keys:
            taps[name] = Tap(m, kind, keys)
    return taps


def _block_size(per_sample_bytes: int, device: torch.device) -> int:
    """Samples per block: per-sample gradients stay in cache on a CPU, within memory on a GPU."""
    budget = _DEVICE_BYTES if device.type == "cuda" else _CACHE_BYTES
    return max(1, budget // max(1, per_sample_bytes))


def _products_squared(d: torch.Tensor, a: torch.Tensor, score: torch.Tensor, buf: torch.Tensor | None) -> None:
    """``score += sum_b (d_b a_b)^2``; d: (b, G, O, T), a: (b, G, T, I), score: (G, O, I).

    One position: ``(d^2)^T (a^2)`` over the samples. Few positions: the pair form. Otherwise the
    products, squared and summed (for one sample in ``buf``, shaped like ``score``).
    """
    b, groups, out, npos = d.shape
    if npos == 1:
        d2 = d.square().permute(1, 2, 0, 3).reshape(groups, out, b)
        a2 = a.square().permute(1, 0, 2, 3).reshape(groups, b, -1)
        score += torch.matmul(d2, a2)
    elif _few_positions(npos):
        p, q = torch.triu_indices(npos, npos, device=d.device)
        weight = torch.where(p == q, 1.0, 2.0).to(d.dtype)
        dd = (d[..., p] * d[..., q] * weight).permute(1, 2, 0, 3).reshape(groups, out, -1)
        aa = (a[:, :, p] * a[:, :, q]).permute(1, 0, 2, 3).reshape(groups, -1, a.shape[-1])
        score += torch.matmul(dd, aa)
    elif b == 1:  # one sample: its product stays in cache while it is squared
        if buf is None:
            buf = d.new_empty(groups, out, a.shape[-1])
        for group in range(groups):
            g = torch.mm(d[0, group], a[0, group], out=buf[group])
            score[group].addcmul_(g, g)
    else:
        score += torch.matmul(d, a).square_().sum(0)


def _cat(tensors: list[torch.Tensor], dim: int) -> torch.Tensor:
    return tensors[0] if len(tensors) == 1 else torch.cat(tensors, dim)


def _few_positions(npos: int) -> bool:
    return npos * (npos + 1) // 2 <= npos + _PAIR_EXTRA


def _linear_squares(tap: Tap, inputs, deltas, scores) -> None:
    """Linear layer: positions = every dimension between the sample and the features."""
    b = inputs[0].shape[0]
    dt = scores[next(iter(tap.keys.values()))].dtype
    a = _cat([x.reshape(b, -1, x.shape[-1]).to(dt) for x in inputs], 1)   # (B, T, in)
    d = _cat([g.reshape(b, -1, g.shape[-1]).to(dt) for g in deltas], 1)   # (B, T, out)
    if "weight" in tap.keys:
        score = scores[tap.keys["weight"]]
        out, inp, npos = score.shape[0], score.shape[1], a.shape[1]
        dg, ag = d.transpose(1, 2).unsqueeze(1), a.unsqueeze(1)                  # (B, 1, out, T), (B, 1, T, in)
        block = b if npos == 1 or _few_positions(npos) else _block_size(out * inp * a.element_size(), a.device)
        buf = a.new_empty(1, out, inp) if block == 1 else None
        for s in range(0, b, block):
            _products_squared(dg[s:s + block], ag[s:s + block], score.view(1, out, inp), buf)
    if "bias" in tap.keys:
        scores[tap.keys["bias"]] += d.sum(1).square().sum(0)


def _conv_padding(m: nn.Conv2d) -> tuple[int, int, int, int]:
    """(left, right, top, bottom) padding, as F.pad takes it (string paddings resolved as torch does)."""
    if isinstance(m.padding, str):
        if m.padding == "valid":
            return (0, 0, 0, 0)
        pads = []
        for dil, k in zip(reversed(m.dilation), reversed(m.kernel_size)):  # "same": extra on the right
            total = dil * (k - 1)
            pads += [total // 2, total - total // 2]
        return tuple(pads)
    ph, pw = m.padding
    return (pw, pw, ph, ph)


def _padded_channels_last(m: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    """The conv's padded input as a contiguous (b, H', W', C) tensor."""
    left, right, top, bottom = _conv_padding(m)
    if m.padding_mode != "zeros":
        x = F.pad(x, (left, right, top, bottom), mode=m.padding_mode)
        left = right = top = bottom = 0
    b, c, h, w = x.shape
    if not (left or right or top or bottom):
        return x.permute(0, 2, 3, 1).contiguous()
    out = x.new_zeros(b, h + top + bottom, w + left + right, c)
    out[:, top:top + h, left:left + w].copy_(x.permute(0, 2, 3, 1))
    return out


def _windows(m: nn.Conv2d, src: torch.Tensor) -> torch.Tensor:
    """(b, G, Ho, Wo, kh, kw, Cg) view of a padded channels-last input: what each output pixel sees."""
    b, hp, wp, c = src.shape
    (kh, kw), (sh, sw), (dh, dw) = m.kernel_size, m.stride, m.dilation
    ho, wo = (hp - dh * (kh - 1) - 1) // sh + 1, (wp - dw * (kw - 1) - 1) // sw + 1
    st = src.stride()
    view = src.as_strided((b, ho, wo, kh, kw, c), (st[0], sh * st[1], sw * st[2], dh * st[1], dw * st[2], st[3]),
                          src.storage_offset())
    return view.unflatten(-1, (m.groups, c // m.groups)).permute(0, 5, 1, 2, 3, 4, 6)


def _conv_squares(tap: Tap, inputs, deltas, scores) -> None:
    """Conv2d: per-sample weight gradient = d_b (G, O, P) @ columns_b (G, P, kh*kw*Cg), one batched
    GEMM per block of samples; the columns are copied from a padded channels-last input, so they
    come out in (kh, kw, Cg) order (permuted back at the end)."""
    m = tap.module
    b, groups = inputs[0].shape[0], m.groups
    out, cin = m.out_channels // groups, m.in_channels // groups
    (kh, kw) = m.kernel_size
    dt = scores[next(iter(tap.keys.values()))].dtype
    d = _cat([g.reshape(b, groups, out, -1).to(dt) for g in deltas], -1)   # (B, G, O, P)
    if "weight" in tap.keys:
        npos, inp = d.shape[-1], kh * kw * cin
        acc = d.new_zeros(groups, out, inp)
        sources = [_padded_channels_last(m, x.to(dt)) for x in inputs]
        few = npos == 1 or _few_positions(npos)
        block = b if few else _block_size((out + npos) * inp * groups * d.element_size(), d.device)
        cols = d.new_empty(min(block, b), groups, npos, inp)
        prod = d.new_empty(groups, out, inp) if block == 1 else None
        for s in range(0, b, block):
            n, at = min(block, b - s), 0
            for src in sources:
                win = _windows(m, src[s:s + n])
                p = win.shape[2] * win.shape[3]
                cols[:n, :, at:at + p].view(n, groups, *win.shape[2:]).copy_(win)
                at += p
            if at != npos:
                raise RuntimeError(f"conv {m}: {at} input windows for {npos} output gradients")
            _products_squared(d[s:s + n], cols[:n], acc, prod)
        score = scores[tap.keys["weight"]]
        score += acc.view(groups * out, kh, kw, cin).permute(0, 3, 1, 2)
    if "bias" in tap.keys:
        scores[tap.keys["bias"]] += d.sum(-1).square().sum(0).reshape(-1)


def _affine_grads(m: nn.Module, x: torch.Tensor, g: torch.Tensor) -> dict[str, torch.Tensor]:
    """A norm layer's per-sample (weight, bias) gradients from its input x and output gradient g.

    weight: sum over positions of g * xhat (xhat: the normalized input); bias: sum of g. For
    BatchNorm in eval mode xhat = (x - mean) * inv_std with fixed statistics, so the weight
    gradient is inv_std * (sum g x - mean * sum g), without forming xhat.
    """
    if isinstance(m, _BatchNorm):
        b, c = x.shape[:2]
        g3, x3 = g.reshape(b, c, -1), x.reshape(b, c, -1)
        bias = g3.sum(-1)
        inv_std = torch.rsqrt(m.running_var.to(x.dtype) + m.eps)
        dot = torch.einsum("bcp,bcp->bc", g3, x3)
        return {"weight": (dot - m.running_mean.to(x.dtype) * bias) * inv_std, "bias": bias}
    if isinstance(m, nn.GroupNorm):
        xhat, dims = F.group_norm(x, m.num_groups, None, None, m.eps), tuple(range(2, x.ndim))
    else:
        shape = tuple(m.normalized_shape)
        dims = tuple(range(1, x.ndim - len(shape)))
        if isinstance(m, nn.LayerNorm):
            xhat = F.layer_norm(x, shape, None, None, m.eps)
        else:
            xhat = F.rms_norm(x, shape, None, m.eps)
    if not dims:  # one position: nothing to sum (sum over () would sum everything)
        return {"weight": g * xhat, "bias": g}
    return {"weight": (g * xhat).sum(dims), "bias": g.sum(dims)}


def _norm_squares(tap: Tap, inputs, deltas, scores) -> None:
    """Norm layer: per-sample affine gradients (one vector per sample, summed over calls), squared."""
    dt = scores[next(iter(tap.keys.values()))].dtype
    per_sample: dict[str, torch.Tensor] = {}
    for x, g in zip(inputs, deltas):
        for attr, v in _affine_grads(tap.module, x.to(dt), g.to(dt)).items():
            if attr in tap.keys:
                per_sample[attr] = per_sample[attr] + v if attr in per_sample else v
    for attr, v in per_sample.items():
        scores[tap.keys[attr]] += v.square().sum(0)


_SQUARES = {"linear": _linear_squares, "conv": _conv_squares, "norm": _norm_squares}


def add_tap_squares(taps: dict[str, Tap], calls: dict[str, tuple[list, list]], scores) -> None:
    for name, tap in taps.items():
        inputs, deltas = calls[name]
        if inputs:
            _SQUARES[tap.kind](tap, inputs, deltas, scores)


# --- where the output gradients come from ----------------------------------------------------

def tap_calls_batched(model, taps: dict[str, Tap], xb, yb) -> dict[str, tuple[list, list]]:
    """Every tap call's (input, output gradient) from one batched forward and backward.

    The summed loss is differentiated with respect to the taps' outputs only (their gradient
    edges, taken when the output is made, so a later in-place op does not change them): autograd
    computes no weight gradient. Valid when samples do not interact (checked by the caller).
    """
    from torch.autograd.graph import get_gradient_edge

    seen: dict[str, list] = {n: [] for n in taps}

    def hook(name):
        def record(mod, inp, out):
            seen[name].append((inp[0].detach(), get_gradient_edge(out), out.shape, out.dtype))
        return record

    handles = [t.module.register_forward_hook(hook(n)) for n, t in taps.items()]
    try:
        with torch.enable_grad():
            loss = F.cross_entropy(logits_of(model(xb)), yb, reduction="sum")
            edges = [e for calls in seen.values() for _, e, _, _ in calls]
            grads = iter(torch.autograd.grad(loss, edges, allow_unused=True) if edges else ())
    finally:
        for h in handles:
            h.remove()
    out = {}
    for name, calls in seen.items():
        deltas = []
        for _, _, shape, dtype in calls:
            g = next(grads)
            deltas.append(torch.zeros(shape, dtype=dtype, device=xb.device) if g is None else g)
        out[name] = ([c[0] for c in calls], deltas)
    return out
