"""SSAM-F: perturb the elements with the largest empirical Fisher information.

Score of an element: F = sum over samples of (per-sample gradient of the cross-entropy with
the TRUE labels)^2, over ``num_samples`` training samples taken from the first batches of the
data. The mask keeps the global top ``target_count`` elements.

Per-sample gradients are computed in chunks with ``torch.func`` (``functional_call`` +
``vmap(grad(...))``), not one backward per sample. The model is put in ``eval()`` mode
(BatchNorm uses its running statistics, so the samples are independent and nothing in the
model changes; dropout is off) and its previous mode is restored afterwards.
``fisher_diagonal(..., batched=False)`` is the one-backward-per-sample reference.
"""
from __future__ import annotations

import contextlib
import time
from collections.abc import Iterable

import torch
from torch import nn
from torch.nn import functional as F

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


def _unfoldable_convs(model: nn.Module, x1: torch.Tensor, params: dict) -> dict[str, nn.Conv2d]:
    """Conv2d layers whose per-sample weight gradient is computed outside vmap (matmuls).

    Plain ``nn.Conv2d`` (not a subclass: those may transform the weight), zero padding given as
    numbers, trainable weight, called exactly once per forward (checked on one sample).
    """
    cands = {n: m for n, m in model.named_modules()
             if type(m) is nn.Conv2d and m.padding_mode == "zeros" and not isinstance(m.padding, str)
             and f"{n}.weight" in params and (m.bias is None or f"{n}.bias" in params)}
    calls = dict.fromkeys(cands, 0)

    def counter(name):
        def hook(mod, inp, out):
            calls[name] += 1
        return hook

    handles = [m.register_forward_hook(counter(n)) for n, m in cands.items()]
    try:
        with torch.no_grad():
            model(x1)
    finally:
        for h in handles:
            h.remove()
    return {n: m for n, m in cands.items() if calls[n] == 1}


_CACHE_BYTES = 2 ** 21     # per-sample gradients are squared and summed in blocks this size
_PAIR_EXTRA = 8            # pairs (below) pay off while P(P+1)/2 <= P + this


def _conv_weight_sq(m: nn.Conv2d, x: torch.Tensor, go: torch.Tensor, score_w: torch.Tensor,
                    score_b: torch.Tensor | None) -> None:
    """Add sum_b (per-sample weight/bias gradient)^2 of conv ``m`` to the scores.

    ``x``: the conv's per-sample inputs (B, 1, Cin, H, W); ``go``: dL_b/d output (B, 1, Cout, H', W').
    At kernel offset (i, j) the per-sample weight gradient is ``G_b X_b^T`` (G_b: Cout x P output
    gradients, X_b: Cin x P shifted inputs, P output positions). Two exact ways to sum its square:
    - blocks: materialize G_b X_b^T for a few samples at a time (kept in cache), square, sum;
    - pairs, for small P: sum_b (G_b X_b^T)^2 = sum_{b,p<=q} w_pq (G_bp G_bq)(X_bp X_bq)^T, one
      large matrix product over (b, p, q) that never materializes a per-sample gradient.
    """
    b = x.shape[0]
    x = x.reshape(b, *x.shape[2:])
    go = go.reshape(b, *go.shape[2:])
    gr, (kh, kw), (sh, sw), (dh, dw), (ph, pw) = m.groups, m.kernel_size, m.stride, m.dilation, m.padding
    ho, wo = go.shape[-2:]
    npos = ho * wo
    cout, cin = m.out_channels // gr, m.in_channels // gr
    g = go.reshape(b, gr, cout, npos).to(score_w.dtype)
    if ph or pw:
        x = F.pad(x, (pw, pw, ph, ph))
    sw_ = score_w.view(gr, cout, cin, kh, kw)
    use_pairs = npos * (npos + 1) // 2 <= npos + _PAIR_EXTRA
    if use_pairs:
        p_idx, q_idx = torch.triu_indices(npos, npos, device=g.device)
        weight = torch.where(p_idx == q_idx, 1.0, 2.0).to(g.dtype)
        gg = (g[..., p_idx] * g[..., q_idx] * weight)                  # (B, gr, cout, pairs)
        gg = gg.permute(1, 2, 0, 3).reshape(gr, cout, -1)               # (gr, cout, B*pairs)
    block = max(1, _CACHE_BYTES // (gr * cout * cin * score_w.element_size()))
    for i in range(kh):
        for j in range(kw):
            xs = x[:, :, i * dh: i * dh + sh * (ho - 1) + 1: sh, j * dw: j * dw + sw * (wo - 1) + 1: sw]
            xs = xs.reshape(b, gr, cin, npos).to(score_w.dtype)
            acc = sw_[:, :, :, i, j]
            if use_pairs:
                xx = (xs[..., p_idx] * xs[..., q_idx]).permute(1, 0, 3, 2).reshape(gr, -1, cin)
                acc += torch.matmul(gg, xx)                              # (gr, cout, cin)
                continue
            xt = xs.transpose(-1, -2)
            for s in range(0, b, block):
                acc += torch.matmul(g[s:s + block], xt[s:s + block]).square_().sum(0)
    if score_b is not None:
        score_b.add_(go.sum((-1, -2)).to(score_b.dtype).square().sum(0))


def _fisher_batched(model, x, y, scores, chunk_size):
    """Per-sample gradients with ``vmap(grad(functional_call(...)))``, chunk by chunk.

    Plain Conv2d weights are not differentiated inside vmap (its per-sample weight-gradient rule
    is a grouped convolution, slower than a per-sample loop on CPU): a zero tensor is added to
    each such conv's output, vmap gives the per-sample gradient w.r.t. it (dL/d output), the
    conv's input is returned as an auxiliary output, and the per-sample weight gradient is
    ``dL/d output @ unfold(input)^T`` (:func:`_conv_weight_sq`), the bias gradient the spatial
    sum. Exact (the tests compare it with the per-sample loop).
    """
    from torch.func import functional_call, grad, vmap

    device = model_device(model)
    params = trainable(model)
    convs = _unfoldable_convs(model, x[:1].to(device), params)
    conv_params = {f"{n}.{p}" for n, m in convs.items() for p in ("weight", "bias")
                   if getattr(m, p) is not None}
    diff = {n: p.detach() for n, p in params.items() if n not in conv_params}
    fixed = {n: p.detach() for n, p in model.named_parameters() if n not in diff}
    buffers = {n: b.detach() for n, b in model.named_buffers()}

    state: dict = {}

    def conv_hook(name):
        def hook(mod, inp, out):
            state["inputs"][name] = inp[0]
            return out + state["z"][name]
        return hook

    # shapes of the convs' outputs for one sample
    shapes = {}
    handles = [m.register_forward_hook(lambda mod, i, o, n=n: shapes.__setitem__(n, o.shape))
               for n, m in convs.items()]
    try:
        with torch.no_grad():
            model(x[:1].to(device))
    finally:
        for h in handles:
            h.remove()
    zeros = {n: torch.zeros(shapes[n], device=device, dtype=convs[n].weight.dtype) for n in convs}

    def loss(tp, z, xi, yi):
        state["z"], state["inputs"] = z, {}
        out = functional_call(model, (tp, fixed, buffers), (xi.unsqueeze(0),))
        return F.cross_entropy(_logits(out), yi.unsqueeze(0)), state["inputs"]

    per_sample = vmap(grad(loss, argnums=(0, 1), has_aux=True), in_dims=(None, None, 0, 0))
    handles = [m.register_forward_hook(conv_hook(n)) for n, m in convs.items()]
    try:
        for i in range(0, x.shape[0], chunk_size):
            xb = x[i:i + chunk_size].to(device, non_blocking=True)
            yb = y[i:i + chunk_size].to(device, non_blocking=True)
            (g, gz), inputs = per_sample(diff, zeros, xb, yb)
            for n, gn in g.items():
                scores[n].add_(gn.to(scores[n].dtype).square().sum(0))  # not in place: grads may alias
            for n, m in convs.items():
                _conv_weight_sq(m, inputs[n], gz[n], scores[f"{n}.weight"],
                                scores.get(f"{n}.bias") if m.bias is not None else None)
    finally:
        for h in handles:
            h.remove()
        state.clear()


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
                    batched: bool = True) -> dict[str, torch.Tensor]:
    """Empirical Fisher diagonal {name: tensor (float32, float64 for double parameters)} of every trainable parameter.

    Sum over the first ``num_samples`` samples of ``data`` of the squared per-sample gradient of
    the cross-entropy with the true labels; model in eval mode (restored afterwards).
    ``batched=True``: ``vmap(grad)`` over chunks of ``chunk_size`` samples (memory ~ chunk_size x
    number of parameters); ``batched=False``: one backward per sample (the brute-force reference).
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
            # no outer graph is needed (torch.func.grad makes its own); attention through the
            # math SDPA backend, which vmap batches (the fused kernels fall back to a loop)
            with torch.no_grad(), _math_sdpa():
                _fisher_batched(model, x, y, scores, chunk_size)
        else:
            _fisher_loop(model, x, y, scores)
    finally:
        model.train(was_training)
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

    Both run once on ``warmup_samples`` samples first, then on the same ``num_samples`` samples.
    Returns ``dict(batched_s, loop_s, ratio=loop_s / batched_s, floor_s, num_samples, chunk_size,
    max_rel_diff)``: ``floor_s`` is an ordinary batched forward+backward of the same samples in
    the same chunks (no per-sample gradients), a lower bound for any per-sample method, so
    ``loop_s / floor_s`` bounds the achievable ratio on this device; ``max_rel_diff`` is the
    largest |batched - loop| relative to the largest score.
    """
    x, y = take_samples(data, num_samples)
    samples = [(x, y)]
    device = model_device(model)
    warm = [(x[:warmup_samples], y[:warmup_samples])]
    fisher_diagonal(model, warm, warmup_samples, chunk_size, batched=True)
    fisher_diagonal(model, warm, warmup_samples, chunk_size, batched=False)
    _plain_backward(model, *warm[0], chunk_size)

    _sync(device)
    t0 = time.perf_counter()
    fb = fisher_diagonal(model, samples, x.shape[0], chunk_size, batched=True)
    _sync(device)
    t1 = time.perf_counter()
    fl = fisher_diagonal(model, samples, x.shape[0], chunk_size, batched=False)
    _sync(device)
    t2 = time.perf_counter()
    _plain_backward(model, x, y, chunk_size)
    _sync(device)
    t3 = time.perf_counter()

    scale = max(float(v.abs().max()) for v in fl.values()) or 1.0
    diff = max(float((fb[n] - fl[n]).abs().max()) for n in fl) / scale
    batched_s, loop_s = t1 - t0, t2 - t1
    return {"batched_s": batched_s, "loop_s": loop_s, "ratio": loop_s / max(batched_s, 1e-12),
            "floor_s": t3 - t2, "num_samples": int(x.shape[0]), "chunk_size": chunk_size,
            "max_rel_diff": diff}


@register_mask("fisher")
class FisherMask(Mask):
    """SSAM-F: global top-target_count elements by the empirical Fisher diagonal.

    Options: ``num_samples`` (training samples from the first batches, default 1024),
    ``chunk_size`` (samples per vmap call, default 64; changes speed and memory, not the
    result), ``update_every`` (rebuild every this many epochs, default 5; 0 or None = never).
    Computed in eval mode (BatchNorm running statistics), previous mode restored.
    """

    description = "SSAM-F: top elements by empirical Fisher diagonal (per-sample grads, vmap)"
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
