"""SSAM-F: perturb the elements with the largest empirical Fisher information.

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

import contextlib
import time
from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F
from torch.nn.modules.batchnorm import _BatchNorm

from masks.base import (
    Mask,
    MaskError,
    check_int,
    check_required_sparsity,
    check_seed,
    register_mask,
    topk_selection,
    trainable,
)


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


def _logits(out) -> torch.Tensor:
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


def _add_tap_squares(taps: dict[str, Tap], calls: dict[str, tuple[list, list]], scores) -> None:
    for name, tap in taps.items():
        inputs, deltas = calls[name]
        if inputs:
            _SQUARES[tap.kind](tap, inputs, deltas, scores)


# --- where the output gradients come from ----------------------------------------------------

def _tap_calls_batched(model, taps: dict[str, Tap], xb, yb) -> dict[str, tuple[list, list]]:
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
            loss = F.cross_entropy(_logits(model(xb)), yb, reduction="sum")
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


class _PerSampleVmap:
    """``vmap(grad(...))`` for the parameters outside taps, and the taps' output gradients.

    Each tap call's output gets a zero tensor added; the per-sample gradient with respect to it is
    the output gradient, and the call's input comes back as an auxiliary output.
    """

    def __init__(self, model, taps: dict[str, Tap], others: list[str], x1: torch.Tensor):
        from torch.func import functional_call, grad, vmap

        self.taps = taps
        params = trainable(model)
        diff = {n: params[n].detach() for n in others}
        fixed = {n: p.detach() for n, p in model.named_parameters() if n not in diff}
        buffers = {n: b.detach() for n, b in model.named_buffers()}
        shapes: dict[str, list] = {n: [] for n in taps}
        handles = [t.module.register_forward_hook(lambda mod, i, o, n=n: shapes[n].append((o.shape, o.dtype)))
                   for n, t in taps.items()]
        try:
            with torch.no_grad():
                model(x1)
        finally:
            for h in handles:
                h.remove()
        self.zeros = {n: [torch.zeros(s, dtype=dt, device=x1.device) for s, dt in shapes[n]] for n in taps}
        self.diff = diff
        state: dict = {}
        self.state = state

        def loss(tp, z, xi, yi):
            state["z"], state["inputs"] = z, {n: [] for n in taps}
            out = functional_call(model, (tp, fixed, buffers), (xi.unsqueeze(0),))
            return F.cross_entropy(_logits(out), yi.unsqueeze(0)), state["inputs"]

        self.per_sample = vmap(grad(loss, argnums=(0, 1), has_aux=True), in_dims=(None, None, 0, 0))

    def _hook(self, name):
        def add_zero(mod, inp, out):
            calls = self.state["inputs"][name]
            calls.append(inp[0])
            return out + self.state["z"][name][len(calls) - 1]
        return add_zero

    def __call__(self, xb, yb):
        """({tap: (inputs, output gradients)} with the sample first, {other parameter: per-sample grads})."""
        handles = [t.module.register_forward_hook(self._hook(n)) for n, t in self.taps.items()]
        try:
            (g, gz), inputs = self.per_sample(self.diff, self.zeros, xb, yb)
        finally:
            for h in handles:
                h.remove()
            self.state.clear()
        # per sample, a module saw a batch of one: (B, 1, ...) -> (B, ...)
        squeeze = lambda t: t.flatten(0, 1) if t.ndim > 2 and t.shape[1] == 1 else t  # noqa: E731
        calls = {n: ([squeeze(t) for t in inputs[n]], [squeeze(t) for t in gz[n]]) for n in self.taps}
        return calls, g


# --- choosing the way, with checks --------------------------------------------------------

def _tolerance(t: torch.Tensor) -> float:
    """How closely two exact ways of computing the same numbers must agree in the checks below:
    rounding only (float64, float32), or TF32 (10-bit mantissa) in CUDA convolutions and matmuls.
    A tap that misses a use of its parameters, or a batch that mixes samples, is off by far more."""
    if t.dtype == torch.float64:
        return 1e-7
    tf32 = t.is_cuda and (torch.backends.cudnn.allow_tf32 or torch.backends.cuda.matmul.allow_tf32)
    return 3e-2 if tf32 or t.dtype in (torch.float16, torch.bfloat16) else 1e-3


def _independent(model, x: torch.Tensor) -> bool:
    """Does the first sample's output stay the same when a second sample shares its batch?"""
    if x.shape[0] < 2:
        return True
    with torch.no_grad():
        both, one = _logits(model(x[:2]))[:1], _logits(model(x[:1]))
    tol = _tolerance(one) * float(one.abs().max()) + 1e-30
    return bool((both - one).abs().max() <= tol)


def _checked_taps(model, taps: dict[str, Tap], params, x, y, batched: bool) -> dict[str, Tap]:
    """The taps whose squares on the first (up to) two samples agree with autograd's, per sample."""
    n = min(2, x.shape[0]) if batched else 1
    keys = [k for t in taps.values() for k in t.keys.values()]
    if not keys:
        return {}
    ref = {k: torch.zeros_like(params[k], dtype=torch.promote_types(params[k].dtype, torch.float32))
           for k in keys}
    got = {k: torch.zeros_like(v) for k, v in ref.items()}
    with torch.enable_grad():
        for i in range(n):
            loss = F.cross_entropy(_logits(model(x[i:i + 1])), y[i:i + 1])
            for k, g in zip(keys, torch.autograd.grad(loss, [params[k] for k in keys], allow_unused=True)):
                if g is not None:
                    ref[k] += g.to(ref[k].dtype).square()
    _add_tap_squares(taps, _tap_calls_batched(model, taps, x[:n], y[:n]), got)
    good = {}
    for name, tap in taps.items():
        if all(float((got[k] - ref[k]).abs().max()) <= _tolerance(params[k]) * float(ref[k].abs().max()) + 1e-30
               for k in tap.keys.values()):
            good[name] = tap
    return good


def _fisher_batched(model, x, y, scores, chunk_size, path: str = "auto") -> dict:
    """Fill ``scores`` chunk by chunk; return how: {"path": "backward"|"vmap", "taps", "others"}."""
    if path not in ("auto", "backward", "vmap"):
        raise ValueError(f"path must be 'auto', 'backward' or 'vmap', got {path!r}")
    device = model_device(model)
    params = trainable(model)
    head_x, head_y = x[:2].to(device), y[:2].to(device)
    independent = path != "vmap" and _independent(model, head_x)
    taps = _checked_taps(model, find_taps(model, params), params, head_x, head_y, independent)
    covered = {k for t in taps.values() for k in t.keys.values()}
    others = [n for n in params if n not in covered]
    use_vmap = path == "vmap" or bool(others) or not independent
    if path == "backward" and use_vmap:
        raise ValueError(f"the batched-backward path cannot take {model.__class__.__name__}: "
                         f"{'samples interact' if not independent else 'parameters outside taps: ' + ', '.join(others)}")
    runner = _PerSampleVmap(model, taps, others, head_x[:1]) if use_vmap else None
    for i in range(0, x.shape[0], chunk_size):
        xb = x[i:i + chunk_size].to(device, non_blocking=True)
        yb = y[i:i + chunk_size].to(device, non_blocking=True)
        if runner is None:
            calls = _tap_calls_batched(model, taps, xb, yb)
        else:
            with _math_sdpa():
                calls, grads = runner(xb, yb)
            for n, g in grads.items():
                scores[n].add_(g.to(scores[n].dtype).square().sum(0))  # not in place: grads may alias
        _add_tap_squares(taps, calls, scores)
    return {"path": "vmap" if use_vmap else "backward", "taps": len(taps), "others": others}


def _fisher_loop(model, x, y, scores):
    device = model_device(model)
    names = list(scores)
    params = [trainable(model)[n] for n in names]
    for i in range(x.shape[0]):
        out = model(x[i:i + 1].to(device))
        loss = F.cross_entropy(_logits(out), y[i:i + 1].to(device))
        grads = torch.autograd.grad(loss, params, allow_unused=True)
        for n, g in zip(names, grads):
            if g is not None:
                scores[n].add_(g.to(scores[n].dtype).square())


def _math_sdpa():
    try:
        from torch.nn.attention import SDPBackend, sdpa_kernel
    except ImportError:  # older torch
        return contextlib.nullcontext()
    return sdpa_kernel([SDPBackend.MATH])


def fisher_diagonal(model: nn.Module, data: Iterable, num_samples: int = 1024, chunk_size: int = 64,
                    batched: bool = True, path: str = "auto", info: dict | None = None) -> dict[str, torch.Tensor]:
    """Empirical Fisher diagonal {name: tensor (float32, float64 for double parameters)} of every trainable parameter.

    Sum over the first ``num_samples`` samples of ``data`` of the squared per-sample gradient of
    the cross-entropy with the true labels; model in eval mode (restored afterwards).
    ``batched=True``: chunks of ``chunk_size`` samples (module docstring; memory ~ chunk_size x
    activations, plus blocks of per-sample gradients of one layer); ``path`` forces "backward"
    (one batched backward per chunk; an error if the model cannot take it) or "vmap", for tests;
    ``info``, if given, receives the path taken. ``batched=False``: one backward per sample (the
    brute-force reference).
    """
    x, y = take_samples(data, num_samples)
    scores = {n: torch.zeros(p.shape, dtype=torch.promote_types(p.dtype, torch.float32), device=p.device)
              for n, p in trainable(model).items()}
    if not scores:
        raise MaskError(f"{type(model).__name__} has no trainable parameter")
    was_training = model.training
    model.eval()
    try:
        if batched:
            # sums without graphs; the backward passes enable gradients where they need them
            # (torch.func.grad makes its own graph)
            with torch.no_grad():
                how = _fisher_batched(model, x, y, scores, chunk_size, path)
        else:
            _fisher_loop(model, x, y, scores)
            how = {"path": "loop"}
    finally:
        model.train(was_training)
    if info is not None:
        info.update(how)
    return scores


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _plain_backward(model, x, y, chunk_size):
    """One ordinary mean-loss forward+backward per chunk (eval mode): no per-sample gradients."""
    device = model_device(model)
    params = list(trainable(model).values())
    was_training = model.training
    model.eval()
    try:
        for i in range(0, x.shape[0], chunk_size):
            out = model(x[i:i + chunk_size].to(device))
            torch.autograd.grad(F.cross_entropy(_logits(out), y[i:i + chunk_size].to(device)), params,
                                allow_unused=True)
    finally:
        model.train(was_training)


def benchmark(model: nn.Module, data: Iterable, num_samples: int = 1024, chunk_size: int = 64,
              warmup_samples: int = 8) -> dict:
    """Time the batched Fisher diagonal against the per-sample loop, in the same process.

    All run once on ``warmup_samples`` samples first, then on the same ``num_samples`` samples:
    the batched method and the floor before and after the loop, keeping the shorter of each
    pair (a machine busy with other work slows a phase, seldom both). Returns
    ``dict(batched_s, loop_s, ratio=loop_s / batched_s, floor_s, batched_vs_floor, num_samples,
    chunk_size, path, max_rel_diff)``: ``floor_s`` is an ordinary batched forward+backward of the
    same samples in the same chunks (no per-sample gradients), a lower bound for any per-sample
    method, so ``loop_s / floor_s`` bounds the achievable ratio on this device and
    ``batched_vs_floor = batched_s / floor_s`` says how close the batched method is; ``path`` is
    the way the batched method took ("backward" or "vmap"); ``max_rel_diff`` is the largest
    |batched - loop| relative to the largest score.
    """
    x, y = take_samples(data, num_samples)
    samples = [(x, y)]
    device = model_device(model)
    warm = [(x[:warmup_samples], y[:warmup_samples])]
    fisher_diagonal(model, warm, warmup_samples, chunk_size, batched=True)
    fisher_diagonal(model, warm, warmup_samples, chunk_size, batched=False)
    _plain_backward(model, *warm[0], chunk_size)

    def timed(fn):
        _sync(device)
        t0 = time.perf_counter()
        out = fn()
        _sync(device)
        return time.perf_counter() - t0, out

    how: dict = {}

    def batched():
        return fisher_diagonal(model, samples, x.shape[0], chunk_size, batched=True, info=how)

    def floor():
        _plain_backward(model, x, y, chunk_size)

    def loop():
        return fisher_diagonal(model, samples, x.shape[0], chunk_size, batched=False)

    batched_s, fb = timed(batched)
    floor_s, _ = timed(floor)
    loop_s, fl = timed(loop)
    batched_s = min(batched_s, timed(batched)[0])
    floor_s = min(floor_s, timed(floor)[0])

    scale = max(float(v.abs().max()) for v in fl.values()) or 1.0
    diff = max(float((fb[n] - fl[n]).abs().max()) for n in fl) / scale
    return {"batched_s": batched_s, "loop_s": loop_s, "ratio": loop_s / max(batched_s, 1e-12),
            "floor_s": floor_s, "batched_vs_floor": batched_s / max(floor_s, 1e-12),
            "num_samples": int(x.shape[0]), "chunk_size": chunk_size, "path": how["path"],
            "max_rel_diff": diff}


@register_mask("fisher")
class FisherMask(Mask):
    """SSAM-F: global top-target_count elements by the empirical Fisher diagonal.

    Options: ``num_samples`` (training samples from the first batches, default 1024),
    ``chunk_size`` (samples per batched pass, default 64; changes speed and memory, not the
    result), ``update_every`` (rebuild every this many epochs, default 5; 0 or None = never).
    Computed in eval mode (BatchNorm running statistics), previous mode restored.
    """

    description = "SSAM-F: top elements by empirical Fisher diagonal (exact per-sample gradient squares)"
    uses_sparsity = True
    needs_data = True

    def __init__(self, sparsity: float | str | None = None, seed: int = 0, num_samples: int = 1024,
                 chunk_size: int = 64, update_every: int | None = 5):
        super().__init__(sparsity=sparsity, seed=seed)
        check_required_sparsity(self)
        check_seed(self, seed)
        check_int(self, "num_samples", num_samples)
        check_int(self, "chunk_size", chunk_size)
        check_int(self, "update_every", update_every, minimum=0, allow_none=True)
        self.num_samples = num_samples
        self.chunk_size = chunk_size
        self.update_every = update_every or None

    def scores(self, model, data):
        return fisher_diagonal(model, data, self.num_samples, self.chunk_size, batched=True)

    def select(self, model, data):
        k = self.target_count(model, data)
        return topk_selection(model, self.scores(model, data), k, largest=True)
