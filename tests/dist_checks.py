"""One rank of the distributed checks (tests/test_distributed.py starts 2 of them with bench.orchestration.launch).

Each rank runs every scenario twice where it can: across the process group (DDP, its shard of each
batch, SAM with the ascent mode) and as the one-process reference on the whole batch, in this same
process; it writes what it found to OUT/rank<r>.json and the test asserts on it.

    python tests/dist_checks.py OUT
"""
from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import tiny_models  # tests/ is on the path: this file runs as a script from there
import torch
from torch import nn
from torch.func import functional_call
from torch.nn.parallel import DistributedDataParallel

from bench import io
from bench.data.loader import plan_steps
from bench.engine import distributed, train
from bench.engine.amp import LossScaler, autocast_factory
from bench.engine.sam import SAM
from bench.engine.step import train_step
from bench.models import create_model, create_model_for

B = 8                     # global batch of one forward pass
STEPS = 3
LR, MU, WD = 0.1, 0.9, 5e-4
CRITERION = nn.CrossEntropyLoss()
NO_AMP = autocast_factory("none", "cpu")


def ln_net() -> nn.Module:
    return tiny_models.ln_net(width=6)


def data(n: int, steps: int = STEPS, seed: int = 1) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(n, 5, generator=g), torch.randint(0, 3, (n,), generator=g)) for _ in range(steps)]


def params(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def sgd(model, momentum=MU, wd=WD):
    return torch.optim.SGD(model.parameters(), lr=LR, momentum=momentum, weight_decay=wd)


def one_process(variant, mask, batches, rho, opts, accumulate=1, scaler=None, momentum=MU, wd=WD):
    """The reference: one process, the whole batch (``accumulate`` micro-batches per step)."""
    model = ln_net()
    opt = SAM(model, sgd(model, momentum, wd), rho=rho, variant=variant, mask=mask, scaler=scaler, **opts)
    for x, y in batches:
        n = len(y) // accumulate
        train_step(model, opt, x, y, CRITERION, NO_AMP, sizes=[n] * accumulate if accumulate > 1 else None)
    return params(model), opt


def across(comm, variant, mask, batches, rho, opts, ascent="synced", accumulate=1, scaler=None, model=None,
           ascent_model=None, momentum=MU, wd=WD):
    """The same across the process group: DDP, this rank's shard of every micro-batch."""
    model = model or ln_net()
    ddp = DistributedDataParallel(model)
    opt = SAM(model, sgd(model, momentum, wd), rho=rho, variant=variant, mask=mask, comm=comm, ascent=ascent,
              scaler=scaler, **opts)
    for x, y in batches:
        (step,) = plan_steps(torch.arange(len(y)), len(y) // accumulate, accumulate, comm.rank, comm.world)
        train_step(ddp, opt, x[step.index], y[step.index], CRITERION, NO_AMP, sizes=step.sizes, total=step.total,
                   ascent_model=ascent_model)
    return params(model), opt


def max_diff(a: dict, b: dict) -> float:
    return max(float((a[n] - b[n]).abs().max()) for n in a)


def close(a: dict, b: dict) -> bool:
    return all(torch.allclose(a[n], b[n], rtol=1e-5, atol=1e-6) for n in a)


def flat(p: dict) -> list[float]:
    return [float(v) for n in sorted(p) for v in p[n].flatten()]


VARIANTS = {  # variant -> (options, rho)
    "sam": ({}, 0.3),
    "asam": ({}, 0.5),
    "sam_pinf": ({"p": "inf"}, 0.05),
    "fsam": ({"sigma": 1.0, "lmbda": 0.6}, 0.3),
    "looksam": ({"k": 2, "alpha": 0.7}, 0.2),
    "gsam": ({"alpha": 0.3}, 0.2),
    "msam": ({}, 0.5),
    "esam": ({"beta": 0.6, "gamma": 1.0, "seed": 3}, 0.3),  # SWP; its data selection is per process
}


def synced_equals_one_process(comm, report):
    """ascent synced: the one-process SAM of the global batch, for every variant and both masks."""
    batches = data(B)
    for case, (opts, rho) in VARIANTS.items():
        variant = case.split("_")[0]
        for mask in ("all", "norm_only"):
            ref, _ = one_process(variant, mask, batches, rho, opts)
            got, _ = across(comm, variant, mask, batches, rho, opts)
            report[f"synced/{case}/{mask}"] = {"close": close(got, ref), "max_diff": max_diff(got, ref),
                                               "params": flat(got)}


def hand_local_sam(batches, rho, world):
    """ascent local written out: each shard perturbed with its own gradient; plain SGD on the mean of
    the shards' gradients at their own w + e_s."""
    model = ln_net()
    w = params(model)
    for x, y in batches:
        grads = []
        for r in range(world):
            xs, ys = x.chunk(world)[r], y.chunk(world)[r]
            g = _grad(model, w, xs, ys)
            norm = math.sqrt(sum(float((t ** 2).sum()) for t in g.values()))
            g2 = _grad(model, {n: w[n] + rho * g[n] / (norm + 1e-12) for n in w}, xs, ys)
            grads.append(g2)
        w = {n: w[n] - LR * sum(g[n] for g in grads) / world for n in w}
    return w


def _grad(model, w, x, y):
    wr = {n: t.detach().clone().requires_grad_(True) for n, t in w.items()}
    loss = CRITERION(functional_call(model, wr, (x,)), y)
    return dict(zip(wr, torch.autograd.grad(loss, list(wr.values()))))


def local_equals_m_sharpness(comm, report):
    """ascent local: each rank perturbs with its shard's gradient = one process with m = B / world;
    SAM also against the rule written out."""
    batches = data(B)
    for case in ("sam", "fsam", "gsam", "looksam"):
        opts, rho = VARIANTS[case]
        ref, _ = one_process(case, "all", batches, rho, {**opts, "m": B // comm.world})
        got, opt = across(comm, case, "all", batches, rho, opts, ascent="local")
        report[f"local/{case}"] = {"close": close(got, ref), "max_diff": max_diff(got, ref), "params": flat(got)}
    hand = hand_local_sam(batches, 0.3, comm.world)
    got, _ = across(comm, "sam", "all", batches, 0.3, {}, ascent="local", momentum=0.0, wd=0.0)
    report["local/sam/hand"] = {"close": close(got, hand), "max_diff": max_diff(got, hand)}


def accumulation(comm, report):
    """accumulate 2 at batch B across processes = one step at batch 2B in one process."""
    batches = data(2 * B)
    for case in ("sam", "fsam", "looksam"):
        opts, rho = VARIANTS[case]
        ref, _ = one_process(case, "norm_only", batches, rho, opts)
        got, _ = across(comm, case, "norm_only", batches, rho, opts, accumulate=2)
        report[f"accumulate/{case}"] = {"close": close(got, ref), "max_diff": max_diff(got, ref)}


def bytes_per_step(comm, report):
    """Only the perturbed tensors' gradients are all-reduced in the ascent, in one call per step."""
    batches = data(B)
    model = ln_net()
    sizes = {n: p.numel() for n, p in model.named_parameters()}
    for mask, ascent in (("norm_only", "synced"), ("all", "synced"), ("all", "local")):
        distributed.reset_counts()
        calls = {"n": 0}
        real = comm.average_

        def counting(tensors, tag="ascent", _real=real):
            calls["n"] += tag == "ascent"
            return _real(tensors, tag)
        comm.average_ = counting
        try:
            across(comm, "sam", mask, batches, 0.3, {}, ascent=ascent)
        finally:
            comm.average_ = real
        report[f"bytes/{mask}/{ascent}"] = {"ascent": distributed.counts().get("ascent", 0) // STEPS,
                                            "calls": calls["n"], "steps": STEPS}
    report["sizes"] = sizes


def bytes_of_paper_models(comm, report):
    """The ascent all-reduce of SAM-ON (norm_only) against dense SAM (all) on resnet20 and wrn28_10:
    one synced ascent each, from .grad (no forward needed), bytes counted by the Comm."""
    for name, dataset in (("resnet20", "cifar10"), ("wrn28_10", "cifar100")):
        torch.manual_seed(0)
        model = create_model_for(name, dataset)
        for p in model.parameters():
            p.grad = torch.ones_like(p)
        for mask in ("all", "norm_only"):
            opt = SAM(model, sgd(model), rho=0.5, mask=mask, comm=comm)
            opt.build_mask()
            distributed.reset_counts()
            opt.first_step()
            opt.unperturb()
            report[f"bytes/{name}/{mask}"] = {"ascent": distributed.counts().get("ascent", 0),
                                              "perturbed": opt.n_perturbed}
        report[f"bytes/{name}/params"] = sum(p.numel() for p in model.parameters())
        del model


TINY_RUN = {"dataset": "digits", "model": "vit_ci", "epochs": 1, "variant": "sam", "mask": "norm_only",
            "rho": 0.5, "augment": False, "device": "cpu", "batch_size": 64, "nproc": 2}


def files_written(comm, report, run_dir: Path):
    """A whole run (bench.engine.train.run) in both processes: which files each process writes."""
    written = []
    for fn in ("write_json", "write_jsonl", "save_checkpoint"):
        real = getattr(io, fn)

        def spy(path, *args, _real=real, **kw):
            written.append(str(path))
            return _real(path, *args, **kw)
        setattr(io, fn, spy)
    result = train.run(TINY_RUN, run_dir, progress=False, log=lambda m: None)
    report["files"] = {"written": sorted(set(written)), "status": result["status"]}


class Poisoned(nn.Module):
    """The model with an inf in its output: an overflow in the pass that runs through it."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, x):
        return self.inner(x) + float("inf")


def fp16_overflow(comm, report):
    """fp16: an overflow in rank 1's ascent skips the step on every rank, weights bit-equal, the
    scale backed off; without an overflow the scaled step is the fp32 step (the scale is a power of 2)."""
    batches = data(B)
    for ascent in ("synced", "local"):
        model = ln_net()
        before = params(model)
        poison = Poisoned(model) if comm.rank == 1 else None
        scaler = LossScaler()
        got, opt = across(comm, "fsam", "all", batches[:1], 0.3, VARIANTS["fsam"][0], ascent=ascent, scaler=scaler,
                          model=model, ascent_model=poison)
        report[f"fp16/ascent_overflow/{ascent}"] = {
            "bit_equal": all(torch.equal(got[n], before[n]) for n in got),
            "base_state_empty": len(opt.base_optimizer.state) == 0, "scale": scaler.scale_value,
            "skipped": scaler.skipped, "variant_state_empty": not opt.variant.ema}
    ref, _ = one_process("fsam", "all", batches, 0.3, VARIANTS["fsam"][0])
    got, _ = across(comm, "fsam", "all", batches, 0.3, VARIANTS["fsam"][0], scaler=LossScaler())
    report["fp16/no_overflow"] = {"close": close(got, ref), "max_diff": max_diff(got, ref)}


def batchnorm_per_process(comm, report):
    """A BatchNorm model without SyncBatchNorm (CPU): trains, and every rank holds the same weights."""
    torch.manual_seed(0)
    model = create_model("resnet_ci", num_classes=10, in_chans=1, img_size=8)
    g = torch.Generator().manual_seed(2)
    batches = [(torch.randn(16, 1, 8, 8, generator=g), torch.randint(0, 10, (16,), generator=g)) for _ in range(2)]
    ddp = DistributedDataParallel(model)
    opt = SAM(model, sgd(model), rho=0.5, mask="norm_only", comm=comm)
    for x, y in batches:
        lo, hi = comm.rank * 8, comm.rank * 8 + 8
        out, loss = train_step(ddp, opt, x[lo:hi], y[lo:hi], CRITERION, NO_AMP)
    p = params(model)
    report["batchnorm"] = {"finite": all(bool(torch.isfinite(t).all()) for t in p.values()), "params": flat(p)[:200]}


def main(out: str) -> None:
    comm = distributed.init_from_env("cpu")
    torch.set_num_threads(1)
    report: dict = {"rank": comm.rank, "world": comm.world}
    for check in (synced_equals_one_process, local_equals_m_sharpness, accumulation, bytes_per_step,
                  bytes_of_paper_models, fp16_overflow, batchnorm_per_process):
        check(comm, report)
        comm.barrier()
    files_written(comm, report, Path(out) / "run")
    Path(out).mkdir(parents=True, exist_ok=True)
    (Path(out) / f"rank{comm.rank}.json").write_text(json.dumps(report))
    distributed.destroy()


if __name__ == "__main__":
    main(sys.argv[1])
