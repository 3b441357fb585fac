"""The empirical Fisher diagonal of a model on samples: the batched way (one batched backward, or
``torch.func.vmap`` where it must), checked against autograd on two samples, the per-sample loop
(the reference) and a benchmark of the two. The algebra of the taps is masks.fisher_taps.
"""
from __future__ import annotations

import contextlib
import time
from collections.abc import Iterable

import torch
from torch import nn
from torch.nn import functional as F

from masks.base import MaskError, trainable
from masks.fisher_taps import (
    Tap,
    add_tap_squares,
    find_taps,
    logits_of,
    model_device,
    take_samples,
    tap_calls_batched,
)


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
            return F.cross_entropy(logits_of(out), yi.unsqueeze(0)), state["inputs"]

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
        both, one = logits_of(model(x[:2]))[:1], logits_of(model(x[:1]))
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
            loss = F.cross_entropy(logits_of(model(x[i:i + 1])), y[i:i + 1])
            for k, g in zip(keys, torch.autograd.grad(loss, [params[k] for k in keys], allow_unused=True)):
                if g is not None:
                    ref[k] += g.to(ref[k].dtype).square()
    add_tap_squares(taps, tap_calls_batched(model, taps, x[:n], y[:n]), got)
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
            calls = tap_calls_batched(model, taps, xb, yb)
        else:
            with _math_sdpa():
                calls, grads = runner(xb, yb)
            for n, g in grads.items():
                scores[n].add_(g.to(scores[n].dtype).square().sum(0))  # not in place: grads may alias
        add_tap_squares(taps, calls, scores)
    return {"path": "vmap" if use_vmap else "backward", "taps": len(taps), "others": others}


def _fisher_loop(model, x, y, scores):
    device = model_device(model)
    names = list(scores)
    params = [trainable(model)[n] for n in names]
    for i in range(x.shape[0]):
        out = model(x[i:i + 1].to(device))
        loss = F.cross_entropy(logits_of(out), y[i:i + 1].to(device))
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
            torch.autograd.grad(F.cross_entropy(logits_of(out), y[i:i + chunk_size].to(device)), params,
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
