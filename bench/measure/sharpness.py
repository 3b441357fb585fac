"""Sharpness and curvature of a trained model, stored in a run's result.json under ``sharpness``.

    sambench sharpness RUN_DIR... [--samples N] [--device D] [--set KEY=VALUE] [--force]
    values = bench.measure.sharpness.measure(model, x, y, settings)      # any model, any data

All measures use the first ``n_samples`` training samples in data-set order (no augmentation,
the training labels the run was trained on, label noise included), the model in eval mode
(BatchNorm uses its running statistics, so the loss is a fixed function of the parameters).

**Hessian** of the unsmoothed mean cross-entropy L(w) over those samples; Hessian-vector
products Hv = d(∇L·v)/dw by double backward, summed over batches:

* ``hessian_max_eig``: the largest eigenvalue λ_max, by power iteration v <- Hv/‖Hv‖ with the
  Rayleigh quotient vᵀHv, stopped when it changes by less than ``power_tol`` (relative) or after
  ``power_iters`` products. If the dominant eigenvalue λ_d is negative, a second power
  iteration on H - λ_d·I gives λ_max = λ' + λ_d, so the answer is always the largest one;
* ``hessian_trace``: Hutchinson's estimate tr(H) = E[vᵀHv] over Rademacher vectors v, by default
  as Hutch++ (exact on a sketched subspace, Hutchinson on the rest: far less variance for the
  same ``trace_probes`` Hessian-vector products; ``trace_estimator: hutchinson`` for the plain
  one); the standard error of the Hutchinson part is in ``details``;
* ``hessian_max_eig_norm``, ``hessian_trace_norm``: the same for the block H_NN of the
  normalization-layer parameters N alone (found by module type: masks.norm_param_names).

**Worst-case m-sharpness** (Andriushchenko et al., ICML 2023, "A modern look at the
relationship between sharpness and generalization"): split the samples into batches S of size
``m`` and average over them

    S_ρ = mean_S [ max_{‖u‖_p ≤ ρ} L_S(w + c ⊙ u) - L_S(w) ],   p ∈ {2, ∞},

with c = 1 (standard) or c = |w| elementwise (adaptive: invariant to rescalings that leave the
function unchanged, e.g. a conv weight before a BatchNorm). Every trainable parameter is
perturbed. L_S is the mean cross-entropy of the logit-normalized outputs
z̃ = (z - mean(z)) / ‖z - mean(z)‖₂ when ``logit_normalize`` (default), of the raw logits
otherwise. The inner max is approximated by ``steps`` steps of projected gradient ascent in u
from u = 0: a step of length α along g/‖g‖₂ (p = 2) or α·sign(g) (p = ∞), g = c ⊙ ∇L_S, then
projection onto the ball; a step that does not raise the loss is undone and α halved (α starts
at 2ρ). The best loss found is kept, so S_ρ >= 0 and S_0 = 0. One key per measure:
``msharp_<l2|linf>_<standard|adaptive>_rho<ρ>``, e.g. ``msharp_linf_adaptive_rho0.003``.

Each measure's wall time is in ``time_s``; the settings used in ``settings``. Measures are saved
one by one to ``sharpness.partial.json`` in the run folder, so an interrupted evaluation resumes;
result.json is then rewritten atomically with ``sharpness`` added, nothing else changed.
"""
from __future__ import annotations

import contextlib
import copy
import json
import math
import time
from typing import Any, Callable

TRACE_ESTIMATORS = ("hutch++", "hutchinson")
FAMILIES = ("l2_standard", "l2_adaptive", "linf_standard", "linf_adaptive")
DEFAULTS: dict[str, Any] = {
    "n_samples": 1024,        # first N training samples, data-set order
    "m": 128,                 # m-sharpness batch size
    "steps": 20,              # gradient-ascent steps per batch
    "logit_normalize": True,
    # radii per norm and adaptivity; a family with [] is not measured. A given mapping
    # replaces this one as a whole (families it leaves out are not measured).
    "radii": {"linf_adaptive": [0.001, 0.003], "l2_adaptive": [0.25, 1.0],
              "linf_standard": [0.0005, 0.001], "l2_standard": [0.25, 1.0]},
    "hessian": True,          # the four Hessian measures
    "power_iters": 20,
    "power_tol": 1e-3,
    "trace_probes": 30,       # Hessian-vector products for the trace
    "trace_estimator": "hutch++",  # hutch++ | hutchinson
    "batch_size": 256,        # samples per forward pass for the Hessian (memory only)
    "seed": 0,                # start vector of the power iteration, Hutchinson probes
}
# settings that do not change the numbers (beyond float summation order)
_NOT_IDENTITY = ("batch_size",)
HESSIAN_KEYS = ("hessian_max_eig", "hessian_trace", "hessian_max_eig_norm", "hessian_trace_norm")
PARTIAL = "sharpness.partial.json"


class SettingsError(ValueError):
    """A bad sharpness option; ``field`` is the path below the block (".radii.l2_adaptive")."""

    def __init__(self, field: str, message: str, allowed: Any = None):
        self.field, self.message, self.allowed = field, message, allowed
        super().__init__(f"sharpness{field}: {message}")


# --- settings ---------------------------------------------------------------------------------

def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _check_radii(radii: Any) -> None:
    if not isinstance(radii, dict):
        raise SettingsError(".radii", f"must be a mapping of family -> list of radii, got {radii!r}",
                            list(FAMILIES))
    for fam, values in radii.items():
        if fam not in FAMILIES:
            raise SettingsError(f".radii.{fam}", "unknown family", list(FAMILIES))
        values = values if isinstance(values, list) else [values]
        if not all(_is_num(r) and r >= 0 for r in values):
            raise SettingsError(f".radii.{fam}", f"must be numbers >= 0, got {values!r}")


_INT_KEYS = {"n_samples": 1, "m": 1, "steps": 0, "power_iters": 1, "trace_probes": 0, "batch_size": 1,
             "seed": 0}


def check_settings(block: Any) -> None:
    """Validate a ``sharpness:`` run field: null/false (off), true or a mapping of options."""
    if block is None or isinstance(block, bool):
        return
    if not isinstance(block, dict):
        raise SettingsError("", f"must be a mapping of options (or true/false), got {block!r}",
                            sorted(DEFAULTS))
    for key, value in block.items():
        if key not in DEFAULTS:
            raise SettingsError(f".{key}", "unknown option", sorted(DEFAULTS))
        if key in _INT_KEYS and not (_is_int(value) and value >= _INT_KEYS[key]):
            raise SettingsError(f".{key}", f"must be an integer >= {_INT_KEYS[key]}, got {value!r}")
        if key in ("logit_normalize", "hessian") and not isinstance(value, bool):
            raise SettingsError(f".{key}", f"must be true or false, got {value!r}", [True, False])
        if key == "trace_estimator" and value not in TRACE_ESTIMATORS:
            raise SettingsError(".trace_estimator", f"got {value!r}", list(TRACE_ESTIMATORS))
        if key == "power_tol" and not (_is_num(value) and value > 0):
            raise SettingsError(".power_tol", f"must be a number > 0, got {value!r}")
        if key == "radii":
            _check_radii(value)


def requested(block: Any) -> bool:
    """Whether a run config's ``sharpness`` field asks for the measures."""
    return block is True or isinstance(block, dict)


def resolve_settings(block: Any = None, overrides: dict | None = None) -> dict[str, Any]:
    """Defaults < the run's ``sharpness`` block < ``overrides`` (validated)."""
    merged = copy.deepcopy(DEFAULTS)
    for layer in (block if isinstance(block, dict) else {}, overrides or {}):
        check_settings(layer)
        for k, v in layer.items():
            merged[k] = copy.deepcopy(v)
    merged["radii"] = {fam: sorted(float(r) for r in (v if isinstance(v, list) else [v]))
                       for fam, v in merged["radii"].items()}
    return merged


def identity(settings: dict) -> str:
    """The settings that define the numbers, canonical (device and batching left out)."""
    return json.dumps({k: v for k, v in settings.items() if k in DEFAULTS and k not in _NOT_IDENTITY},
                      sort_keys=True)


def msharp_key(family: str, rho: float) -> str:
    norm, adaptivity = family.split("_")
    return f"msharp_{norm}_{adaptivity}_rho{rho:g}"


def measure_keys(settings: dict) -> list[str]:
    """The measures these settings ask for (Hessian traces only with trace_probes > 0)."""
    keys = []
    if settings["hessian"]:
        keys = [k for k in HESSIAN_KEYS if settings["trace_probes"] or "trace" not in k]
    for fam in FAMILIES:
        keys += [msharp_key(fam, r) for r in settings["radii"].get(fam, [])]
    return keys


# --- the measures -----------------------------------------------------------------------------

def logit_normalized(z):
    """(z - mean(z)) / ‖z - mean(z)‖₂ per sample (the last dimension)."""
    z = z - z.mean(dim=-1, keepdim=True)
    return z / z.norm(dim=-1, keepdim=True).clamp_min(1e-10)


def _batches(x, y, size: int):
    for lo in range(0, len(y), size):
        yield x[lo:lo + size], y[lo:lo + size]


def _dot(a, b):
    return sum((ai * bi).sum() for ai, bi in zip(a, b))


def hvp_fn(model, params: list, x, y, batch_size: int) -> Callable:
    """v (list of tensors shaped like ``params``) -> Hv of the mean cross-entropy over (x, y)."""
    import torch
    import torch.nn.functional as F

    n = len(y)

    def hvp(v: list) -> list:
        out = [torch.zeros_like(p) for p in params]
        for xb, yb in _batches(x, y, batch_size):
            loss = F.cross_entropy(model(xb), yb)
            grads = torch.autograd.grad(loss, params, create_graph=True, allow_unused=True)
            used = [(g, t) for g, t in zip(grads, v) if g is not None and g.requires_grad]
            if not used:  # the loss is linear (or constant) in these parameters here
                continue
            hv = torch.autograd.grad(_dot(*zip(*used)), params, allow_unused=True)
            for o, h in zip(out, hv):
                if h is not None:
                    o.add_(h.detach(), alpha=len(yb) / n)
        return out

    return hvp


def _normalize(v: list) -> tuple[list, float]:
    norm = math.sqrt(sum(float((t * t).sum()) for t in v))
    return ([t / norm for t in v] if norm > 0 else v), norm


def power_iteration(hvp: Callable, like: list, iters: int, tol: float, generator,
                    shift: float = 0.0) -> tuple[float, int, bool]:
    """(dominant eigenvalue of H - shift·I, products used, converged) by power iteration."""
    import torch

    v, _ = _normalize([torch.randn(p.shape, generator=generator, dtype=p.dtype).to(p.device) for p in like])
    lam, used = None, 0
    for used in range(1, iters + 1):
        hv = hvp(v)
        if shift:
            hv = [h - shift * t for h, t in zip(hv, v)]
        new = float(_dot(v, hv))
        v, norm = _normalize(hv)
        if norm == 0:
            return 0.0, used, True
        if lam is not None and abs(new - lam) <= tol * max(abs(new), 1e-12):
            return new, used, True
        lam = new
    return float(lam), used, False


def top_eigenvalue(hvp: Callable, like: list, iters: int, tol: float, seed: int) -> dict:
    """The largest (algebraic) Hessian eigenvalue, with the products used and convergence."""
    import torch

    g = torch.Generator().manual_seed(seed)
    lam, used, ok = power_iteration(hvp, like, iters, tol, g)
    if lam < 0:  # the dominant eigenvalue is negative: the largest is found on H - lam I
        shifted, used2, ok = power_iteration(hvp, like, iters, tol, g, shift=lam)
        lam, used = shifted + lam, used + used2
    return {"value": lam, "products": used, "converged": ok}


def _rademacher(like: list, generator) -> list:
    import torch

    return [(torch.randint(0, 2, p.shape, generator=generator) * 2 - 1).to(dtype=p.dtype, device=p.device)
            for p in like]


def _mean_stderr(est: list[float]) -> tuple[float, float]:
    mean = sum(est) / len(est)
    if len(est) < 2:
        return mean, float("nan")
    sd = math.sqrt(sum((e - mean) ** 2 for e in est) / (len(est) - 1))
    return mean, sd / math.sqrt(len(est))


def hutchinson_trace(hvp: Callable, like: list, probes: int, seed: int) -> dict:
    """Hutchinson: tr(H) ≈ mean of vᵀHv over Rademacher probes v, with that mean's standard error."""
    import torch

    g = torch.Generator().manual_seed(seed + 1)
    est = []
    for _ in range(probes):
        v = _rademacher(like, g)
        est.append(float(_dot(v, hvp(v))))
    mean, stderr = _mean_stderr(est)
    return {"value": mean, "stderr": stderr, "matvecs": probes}


def hutchpp_trace(hvp: Callable, like: list, matvecs: int, seed: int) -> dict:
    """Hutch++ (Meyer, Musco, Musco, Woodruff 2021) with ``matvecs`` Hessian-vector products.

    k = matvecs // 3: Q = an orthonormal basis of H S (S: k Rademacher vectors), then
    tr(H) ≈ tr(QᵀHQ) + Hutchinson on the rest: the mean of rᵀHr, r = (I - QQᵀ)g, over the
    remaining matvecs - 2k Rademacher vectors g. Unbiased like Hutchinson, with far less variance
    when a few eigenvalues dominate (as in trained networks); exact once k >= the dimension.
    ``stderr`` is that of the Hutchinson part.
    """
    import torch

    if matvecs < 3:
        return hutchinson_trace(hvp, like, matvecs, seed)
    g = torch.Generator().manual_seed(seed + 1)
    sizes = [p.numel() for p in like]

    def flat(vs):
        return torch.cat([v.reshape(-1) for v in vs])

    def unflat(vec):
        return [c.view(p.shape) for c, p in zip(vec.split(sizes), like)]

    k = matvecs // 3
    sketch = torch.stack([flat(hvp(_rademacher(like, g))) for _ in range(k)], dim=1)
    q, _ = torch.linalg.qr(sketch)                      # (n, k), orthonormal columns
    exact_part = sum(float(q[:, j] @ flat(hvp(unflat(q[:, j])))) for j in range(q.shape[1]))
    est = []
    for _ in range(matvecs - 2 * k):
        r = flat(_rademacher(like, g))
        r = r - q @ (q.T @ r)
        est.append(float(r @ flat(hvp(unflat(r)))))
    rest, stderr = _mean_stderr(est)
    return {"value": exact_part + rest, "stderr": stderr, "matvecs": matvecs}


def worst_case_sharpness(model, x, y, *, family: str, rho: float, m: int, steps: int,
                         logit_normalize: bool = True) -> float:
    """Worst-case m-sharpness (see the module docstring); the model itself is never modified."""
    import torch
    import torch.nn.functional as F
    from torch.func import functional_call

    norm, adaptivity = family.split("_")
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    weights = {n: p.detach() for n, p in model.named_parameters()}
    scale = {n: weights[n].abs() if adaptivity == "adaptive" else None for n in names}
    buffers = dict(model.named_buffers())

    def loss_and_grad(u: dict, xb, yb) -> tuple[float, dict]:
        u = {n: t.detach().requires_grad_(True) for n, t in u.items()}
        params = dict(weights)
        for n in names:
            params[n] = weights[n] + (u[n] if scale[n] is None else scale[n] * u[n])
        out = functional_call(model, {**params, **buffers}, (xb,))
        loss = F.cross_entropy(logit_normalized(out) if logit_normalize else out, yb)
        grads = torch.autograd.grad(loss, [u[n] for n in names], allow_unused=True)
        return float(loss.detach()), {n: (torch.zeros_like(u[n]) if gr is None else gr) for n, gr in zip(names, grads)}

    def project(u: dict) -> dict:
        if norm == "linf":
            return {n: t.clamp(-rho, rho) for n, t in u.items()}
        total = math.sqrt(sum(float((t * t).sum()) for t in u.values()))
        return {n: t * (rho / total) for n, t in u.items()} if total > rho else u

    def direction(grad: dict) -> dict:
        if norm == "linf":
            return {n: t.sign() for n, t in grad.items()}
        total = math.sqrt(sum(float((t * t).sum()) for t in grad.values()))
        return {n: t / total for n, t in grad.items()} if total > 0 else grad

    total, weight = 0.0, 0
    for xb, yb in _batches(x, y, m):
        u = {n: torch.zeros_like(weights[n]) for n in names}
        base, grad = loss_and_grad(u, xb, yb)
        best, alpha = base, 2.0 * rho
        for _ in range(steps if rho > 0 else 0):
            step = direction(grad)
            cand = project({n: u[n] + alpha * step[n] for n in names})
            loss, cand_grad = loss_and_grad(cand, xb, yb)
            if loss > best:
                best, u, grad = loss, cand, cand_grad
            else:
                alpha /= 2
        total += (best - base) * len(yb)
        weight += len(yb)
    return total / weight


@contextlib.contextmanager
def _double_backward_ready():
    """Only the math attention kernel: the fused ones (flash, memory-efficient, on CPU and CUDA)
    have no double backward, which Hessian-vector products need."""
    try:
        from torch.nn.attention import SDPBackend, sdpa_kernel
    except ImportError:
        yield
        return
    with sdpa_kernel([SDPBackend.MATH]):
        yield


def _sync(device) -> None:
    import torch

    if getattr(device, "type", "") == "cuda":
        torch.cuda.synchronize(device)


class _Recorder:
    """Runs the measures one by one: skips those already ``done``, times each, keeps its value and
    details, logs it and reports it (``on_measure``, for saving progress)."""

    def __init__(self, device, done: dict, on_measure, log):
        self.device, self.done, self.on_measure, self.log = device, done, on_measure, log
        self.values: dict[str, Any] = {}
        self.times: dict[str, float] = {}
        self.details: dict[str, Any] = {}

    def __call__(self, key: str, fn: Callable[[], Any]) -> None:
        if key in self.done:
            self.values[key] = self.done[key]
            return
        _sync(self.device)
        t0 = time.perf_counter()
        out = fn()
        _sync(self.device)
        seconds = time.perf_counter() - t0
        extra = {}
        if isinstance(out, dict):
            extra = {f"{key}_{k}": v for k, v in out.items() if k != "value"}
            out = out["value"]
        self.values[key], self.times[key] = out, seconds
        self.details.update(extra)
        if self.log:
            self.log(f"  {key} = {out if out is None else f'{out:.6g}'}  ({seconds:.1f} s)")
        if self.on_measure:
            self.on_measure(key, out, seconds, extra)


def _hessian_measures(record: _Recorder, model, x, y, settings: dict, params_all: dict, norm_names: list) -> None:
    """Top eigenvalue and trace of the Hessian, over every parameter and over the norm layers' only."""
    for suffix, names in (("", list(params_all)), ("_norm", norm_names)):
        params = [params_all[n] for n in names]
        if not params:
            record.values[f"hessian_max_eig{suffix}"] = record.values[f"hessian_trace{suffix}"] = None
            record.details[f"hessian{suffix}_note"] = "no normalization-layer parameters"
            continue
        hvp = hvp_fn(model, params, x, y, settings["batch_size"])
        record(f"hessian_max_eig{suffix}", lambda hvp=hvp, params=params: top_eigenvalue(
            hvp, params, settings["power_iters"], settings["power_tol"], settings["seed"]))
        if settings["trace_probes"]:
            trace = hutchpp_trace if settings["trace_estimator"] == "hutch++" else hutchinson_trace
            record(f"hessian_trace{suffix}", lambda hvp=hvp, params=params: trace(
                hvp, params, settings["trace_probes"], settings["seed"]))


def measure(model, x, y, settings: dict | None = None, *, done: dict | None = None,
            on_measure: Callable[[str, Any, float, dict], None] | None = None,
            log: Callable[[str], None] | None = None) -> dict:
    """Every measure the settings ask for, on (x, y), on the device of x; the model is not modified.

    ``done``: {key: value} already measured (skipped). ``on_measure(key, value, seconds, details)``
    is called after each one (for saving progress). Returns {"values", "time_s", "details"}.
    """
    import masks

    settings = resolve_settings(settings)
    model.eval()
    record = _Recorder(x.device, dict(done or {}), on_measure, log)
    params_all = {n: p for n, p in model.named_parameters() if p.requires_grad}
    norm_names = [n for n in masks.norm_param_names(model) if n in params_all]
    record.details.update(n_params=sum(p.numel() for p in params_all.values()),
                          n_norm_params=sum(params_all[n].numel() for n in norm_names))
    with _double_backward_ready():
        if settings["hessian"]:
            _hessian_measures(record, model, x, y, settings, params_all, norm_names)
        for fam in FAMILIES:
            for rho in settings["radii"].get(fam, []):
                record(msharp_key(fam, rho), lambda fam=fam, rho=rho: worst_case_sharpness(
                    model, x, y, family=fam, rho=rho, m=settings["m"], steps=settings["steps"],
                    logit_normalize=settings["logit_normalize"]))
    return {"values": record.values, "time_s": record.times, "details": record.details}


def present(result: dict | None, settings: dict) -> bool:
    """Whether result.json already holds sharpness measured with these settings."""
    block = (result or {}).get("sharpness")
    if not isinstance(block, dict) or not isinstance(block.get("settings"), dict):
        return False
    stored = {k: v for k, v in block["settings"].items() if k in DEFAULTS}
    try:
        return identity(resolve_settings(stored)) == identity(settings)
    except SettingsError:  # written by another version of this module
        return False


# --- hooks for training and the runner -----------------------------------------------------------

def pending(cfg: dict, result: dict | None) -> bool:
    """A finished run whose config asks for sharpness that result.json does not hold yet.

    A recorded ``sharpness_error`` is not retried automatically (``sambench sharpness`` does).
    """
    if not requested((cfg or {}).get("sharpness")) or not isinstance(result, dict):
        return False
    if result.get("status") != "done" or "sharpness_error" in result:
        return False
    return not present(result, resolve_settings(cfg["sharpness"]))
