"""``sambench perf``: step time of SAM variants × masks relative to SGD, in one process.

Every configuration runs the real training step (bench.engine.step.train_step) through the
real bench.engine.sam.SAM on one model and one batch; the configurations are interleaved
(round-robin) after a warm-up, so drifting machine load hits them all alike, and the
median is reported. On CUDA each step is timed with CUDA events.

``loop_sam`` is an in-repo baseline: the straightforward SAM that clones every parameter
and loops over tensors, with full gradients in both passes (what most public code does).

``--nproc N`` (:func:`time_steps_ddp`): the same step in N processes of one process group, the
model in DDP, each process on its shard of the batch, SAM with ``ascent`` synced or local; it
reports ms/step and the bytes all-reduced per step: the ascent (SAM's one bucketed call, the
perturbed tensors only) and the descent (DDP's gradient buckets, counted by a comm hook).
"""
from __future__ import annotations

import functools
import gc
import statistics
import time
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from bench.data.datasets import dataset_shape, load_dataset
from bench.data.loader import make_loaders
from bench.engine.amp import autocast_factory
from bench.engine.build import build_optimizer
from bench.engine.fast_step import FastStep
from bench.engine.sam import SAM
from bench.engine.step import train_step
from bench.models import create_model, create_model_for, has_batchnorm
from bench.perf.configs import (  # noqa: F401 -- PRESETS, parse_configs, with_compiled: this module's API
    PRESETS,
    PerfConfig,
    parse_configs,
    with_compiled,
)


class LoopSAM:
    """Reference: per-parameter loop, every parameter cloned, full gradients in both passes."""

    is_sam = True

    def __init__(self, model: nn.Module, base: torch.optim.Optimizer, rho: float):
        self.model, self.base_optimizer, self.rho = model, base, rho
        self.old: dict[nn.Parameter, torch.Tensor] = {}

    def step(self, model, x, y, criterion, amp_ctx):
        with amp_ctx():
            loss = criterion(model(x), y)
        loss.backward()
        with torch.no_grad():
            params = [p for p in model.parameters() if p.grad is not None]
            norm = torch.norm(torch.stack([p.grad.norm(p=2) for p in params]), p=2)
            scale = self.rho / (norm + 1e-12)
            for p in params:
                self.old[p] = p.data.clone()
                p.add_(p.grad * scale)
        self.base_optimizer.zero_grad(set_to_none=True)
        with amp_ctx():
            criterion(model(x), y).backward()
        with torch.no_grad():
            for p in params:
                p.data = self.old[p]
        self.base_optimizer.step()
        self.base_optimizer.zero_grad(set_to_none=True)


@dataclass
class Bench:
    """The model and the one batch every configuration steps on."""

    model_name: str
    dataset: str
    device: torch.device
    model: nn.Module
    forward: Any              # the model, or torch.compile of it
    x: torch.Tensor
    y: torch.Tensor
    criterion: nn.Module
    amp_ctx: Any

    @property
    def cuda(self) -> bool:
        return self.device.type == "cuda"


def make_bench(model_name: str, batch_size: int, device: str, amp: bool, dataset: str | None = None,
               channels_last: bool = False, compile: bool = False) -> Bench:
    """A model for the dataset's shape (cifar100 by default) and a random batch; ``amp``: bf16 autocast."""
    dataset = dataset or "cifar100"
    dev = torch.device(device)
    num_classes, in_chans, img_size = dataset_shape(dataset)
    torch.manual_seed(0)
    model = create_model_for(model_name, dataset).to(dev)
    model.train()
    x = torch.randn(batch_size, in_chans, img_size, img_size, device=dev)
    y = torch.randint(0, num_classes, (batch_size,), device=dev)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    return Bench(model_name, dataset, dev, model, torch.compile(model) if compile else model, x, y,
                 nn.CrossEntropyLoss(label_smoothing=0.1), autocast_factory("bf16" if amp else "none", dev))


def _make_step(cfg: PerfConfig, bench: Bench):
    """(the function that runs one configuration's step (a LookSAM cycle), its perturbed fraction)."""
    b = bench
    if cfg.is_loop:
        base = torch.optim.SGD(b.model.parameters(), lr=1e-4, momentum=0.9, weight_decay=5e-4)
        loop = LoopSAM(b.model, base, cfg.rho)
        return lambda: loop.step(b.forward, b.x, b.y, b.criterion, b.amp_ctx), 1.0
    opt = build_optimizer(cfg.run_config(b.model_name, b.dataset), b.model, mask_data=[(b.x, b.y)])
    cycle = getattr(opt.variant, "k", 1)  # LookSAM: time a whole cycle (one SAM step, k - 1 others)
    one_step = _one_step(cfg, b.model, b.forward, opt, b.criterion, b.amp_ctx)

    def steps():
        for _ in range(cycle):
            one_step(b.x, b.y)
    steps.cycle = cycle
    return steps, opt.perturbed_fraction


def _one_step(cfg: PerfConfig, model, forward, opt, criterion, amp_ctx):
    """The step a configuration times: the reference train_step, or bench.engine.fast_step's."""
    reference = functools.partial(train_step, forward, opt, criterion=criterion, amp_ctx=amp_ctx)
    if cfg.step == "reference":
        return reference
    fast = FastStep(model, opt, criterion, amp_ctx, reference, compiled=cfg.step == "compiled", forward=forward)
    if not fast.fused:
        raise ValueError(f"the fast step does not cover {fast.reason}")
    return fast


def _peak_memory(fn, dev) -> int:
    """Peak CUDA memory of one step of a configuration alive alone (after a warm-up step)."""
    fn()  # lazily allocated state: momentum buffers, SAM backups
    torch.cuda.synchronize(dev)
    torch.cuda.reset_peak_memory_stats(dev)
    fn()
    torch.cuda.synchronize(dev)
    return torch.cuda.max_memory_allocated(dev)


def _prepare(bench: Bench, configs: list[PerfConfig]) -> tuple[list[PerfConfig], list, list]:
    """(the configurations that build on this model, their steps, their peak CUDA memory or None).
    On CUDA each configuration runs alone first, for its peak memory, and is then built again, so
    that no configuration's state was there while another was measured."""
    kept, peaks, made = [], [], []
    for c in configs:
        try:
            step = _make_step(c, bench)
        except (ValueError, TypeError) as exc:  # e.g. a layerwise block the model does not have
            print(f"skipped {c.label}: {exc}")
            continue
        kept.append(c)
        if bench.cuda:
            peaks.append(_peak_memory(step[0], bench.device))
            step = None
            gc.collect()  # its state goes before the next one is measured
        else:
            peaks.append(None)
            made.append(step)
    if bench.cuda:
        made = [_make_step(c, bench) for c in kept]
    return kept, made, peaks


def _interleaved_ms(made: list, warmup: int, steps: int, cuda: bool) -> list[list[float]]:
    """ms per step of each configuration, round-robin over them (CUDA events on CUDA); warm-up dropped."""
    times: list[list[float]] = [[] for _ in made]
    for rep in range(warmup + steps):
        for i, (fn, _) in enumerate(made):
            if cuda:
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                fn()
                end.record()
                end.synchronize()
                ms = start.elapsed_time(end)
            else:
                t0 = time.perf_counter()
                fn()
                ms = (time.perf_counter() - t0) * 1e3
            if rep >= warmup:
                times[i].append(ms / getattr(fn, "cycle", 1))  # per step
    return times


def time_steps(model_name: str, batch_size: int, device: str, amp: bool, configs: list[PerfConfig],
               steps: int = 20, warmup: int = 3, dataset: str | None = None,
               channels_last: bool = False, compile: bool = False) -> list[dict]:
    """Median ms/step of each configuration and its ratio to SGD's (the base optimizer alone)."""
    bench = make_bench(model_name, batch_size, device, amp, dataset, channels_last, compile)
    configs, made, peaks = _prepare(bench, configs)
    medians = [statistics.median(t) for t in _interleaved_ms(made, warmup, steps, bench.cuda)]
    sgd = next((m for c, m in zip(configs, medians) if c.is_baseline), None)
    dev = bench.device
    return [
        {"model": model_name, "batch_size": batch_size, "device": str(dev), "amp": bool(amp),
         "variant": c.variant, "mask": c.mask, "label": c.label, "step": c.step, "ms": round(m, 3),
         "ratio_vs_sgd": round(m / sgd, 3) if sgd else None, "perturbed_fraction": frac,
         "device_name": torch.cuda.get_device_name(dev) if bench.cuda else "cpu",
         "threads": torch.get_num_threads(), "steps": steps,
         "peak_mem_mib": round(peak / 2 ** 20, 1) if peak is not None else None}
        for c, m, (_, frac), peak in zip(configs, medians, made, peaks)
    ]


def time_epoch(model_name: str, dataset: str, batch_size: int, device: str, amp: bool,
               data_root: str | None = None) -> dict:
    """A full SGD+SAM-ON epoch through the device loader vs the sum of its step times.

    Warm-up covers the shapes of an epoch (full batches and the last, partial one), so one-time
    set-up for a new shape (cuDNN plans, oneDNN primitives) is not charged to the epoch.
    ``loader_s``: one pass over the loader alone (gather, crop, flip; no training).
    """
    dev = torch.device(device)
    spec = load_dataset(dataset, root=data_root)
    train_loader, _ = make_loaders(spec, batch_size, 1024, 0, dev, augment=True)
    torch.manual_seed(0)
    model = create_model(model_name, num_classes=spec.num_classes, in_chans=spec.in_chans,
                         img_size=spec.img_size).to(dev)
    opt = SAM(model, torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9), rho=0.5, mask="norm_only")
    criterion = nn.CrossEntropyLoss()
    amp_ctx = autocast_factory("bf16" if amp else "none", dev)
    sync = (lambda: torch.cuda.synchronize(dev)) if dev.type == "cuda" else (lambda: None)
    batches = list(train_loader)
    for xb, yb in batches[:3] + batches[-1:]:  # warm-up, every batch shape of the epoch
        train_step(model, opt, xb, yb, criterion, amp_ctx)
    sync()
    step_total = 0.0
    first, last = batches[0], batches[-1]
    del batches
    for i in range(len(train_loader)):  # the same steps (batch sizes too), no data handling
        xb, yb = last if i == len(train_loader) - 1 else first
        t0 = time.perf_counter()
        train_step(model, opt, xb, yb, criterion, amp_ctx)
        sync()
        step_total += time.perf_counter() - t0
    train_loader.set_epoch(2)
    sync()
    t0 = time.perf_counter()
    for _ in train_loader:
        pass
    sync()
    loader_s = time.perf_counter() - t0
    train_loader.set_epoch(1)
    sync()
    t0 = time.perf_counter()
    for xb, yb in train_loader:
        train_step(model, opt, xb, yb, criterion, amp_ctx)
    sync()
    epoch_s = time.perf_counter() - t0
    return {"model": model_name, "dataset": dataset, "batch_size": batch_size, "device": str(dev),
            "amp": bool(amp), "steps": len(train_loader), "epoch_s": round(epoch_s, 4),
            "sum_step_s": round(step_total, 4), "ratio": round(epoch_s / step_total, 3),
            "loader_s": round(loader_s, 4)}


def print_table(records: list[dict]) -> None:
    width = max(len(r["label"]) for r in records)
    head = records[0]
    print(f"model {head['model']}, batch {head['batch_size']}, {head['device_name']} ({head['device']}), "
          f"{'bf16' if head['amp'] else 'fp32'}, {head['threads']} threads, "
          f"median of {head['steps']} interleaved steps")
    print(f"{'configuration':<{width}}  {'ms/step':>9}  {'x SGD':>6}  {'perturbed':>9}")
    for r in records:
        ratio = f"{r['ratio_vs_sgd']:.2f}" if r["ratio_vs_sgd"] else "-"
        print(f"{r['label']:<{width}}  {r['ms']:>9.2f}  {ratio:>6}  {r['perturbed_fraction']:>9.5f}")


def time_fisher(model_name: str, dataset: str, device: str, num_samples: int) -> dict:
    """The batched Fisher mask against the sample-by-sample loop, on random data of the dataset's shape."""
    from masks.fisher import benchmark

    num_classes, in_chans, img_size = dataset_shape(dataset)
    torch.manual_seed(0)
    model = create_model_for(model_name, dataset).to(device)
    xs = torch.randn(num_samples, in_chans, img_size, img_size, device=device)
    ys = torch.randint(0, num_classes, (num_samples,), device=device)
    batches = [(xs[i:i + 128], ys[i:i + 128]) for i in range(0, num_samples, 128)]
    out = benchmark(model, batches, num_samples=num_samples)
    return {"benchmark": "fisher", "model": model_name, "device": device, "num_samples": num_samples, **out}


# --- several processes ----------------------------------------------------------------------------

def _counting_hook(state: dict, bucket):
    """DDP's own all-reduce of a gradient bucket, counting its bytes."""
    from torch.distributed.algorithms.ddp_comm_hooks import default_hooks

    buf = bucket.buffer()
    state["bytes"] += buf.numel() * buf.element_size()
    return default_hooks.allreduce_hook(None, bucket)


def _make_ddp_step(cfg: PerfConfig, bench: Bench, comm, sync_bn: bool):
    import copy

    from torch.nn.parallel import DistributedDataParallel

    replica = copy.deepcopy(bench.model)
    if sync_bn and has_batchnorm(replica):
        replica = nn.SyncBatchNorm.convert_sync_batchnorm(replica)
    dev = bench.device
    ddp = DistributedDataParallel(replica, device_ids=[dev.index] if dev.type == "cuda" else None)
    counter = {"bytes": 0}
    ddp.register_comm_hook(counter, _counting_hook)
    opt = build_optimizer(cfg.run_config(bench.model_name, bench.dataset), replica, comm=comm,
                          mask_data=[(bench.x, bench.y)])
    total = len(bench.y) * comm.world

    def step():
        train_step(ddp, opt, bench.x, bench.y, bench.criterion, bench.amp_ctx, total=total)
    return step, counter, opt.perturbed_fraction


def time_steps_ddp(model_name: str, batch_size: int, device: str, amp: bool, configs: list[PerfConfig],
                   comm, steps: int = 20, warmup: int = 3, dataset: str | None = None) -> list[dict]:
    """Median ms/step of each configuration across ``comm.world`` processes (interleaved; every
    process on its shard of one global batch), and the bytes all-reduced per step."""
    from bench.data.loader import shard_bounds
    from bench.engine import distributed

    dev = distributed.device_for(device)
    bench = make_bench(model_name, batch_size, str(dev), amp, dataset)  # the same model and batch on every process
    lo, hi = shard_bounds(batch_size, comm.rank, comm.world)
    bench.x, bench.y = bench.x[lo:hi], bench.y[lo:hi]
    sync_bn = dev.type == "cuda"
    made = [_make_ddp_step(c, bench, comm, sync_bn) for c in configs]
    times: list[list[float]] = [[] for _ in configs]
    sent = [{"ascent": 0, "clean": 0, "flags": 0, "descent": 0} for _ in configs]
    for rep in range(warmup + steps):
        for i, (fn, counter, _) in enumerate(made):
            comm.barrier()
            before, ddp_before = distributed.counts(), counter["bytes"]
            if dev.type == "cuda":
                torch.cuda.synchronize(dev)
            t0 = time.perf_counter()
            fn()
            if dev.type == "cuda":
                torch.cuda.synchronize(dev)
            ms = (time.perf_counter() - t0) * 1e3
            if rep >= warmup:
                times[i].append(ms)
                after = distributed.counts()
                for tag in ("ascent", "clean", "flags"):
                    sent[i][tag] += after.get(tag, 0) - before.get(tag, 0)
                sent[i]["descent"] += counter["bytes"] - ddp_before
    medians = torch.tensor([statistics.median(t) for t in times], dtype=torch.float64, device=dev)
    comm.sum_(medians, tag="perf")  # the mean over processes of each median
    medians = (medians / comm.world).tolist()
    sgd = next((m for c, m in zip(configs, medians) if c.is_baseline), None)
    return [
        {"model": model_name, "batch_size": batch_size, "device": str(dev), "amp": bool(amp), "nproc": comm.world,
         "backend": comm.backend, "variant": c.variant, "mask": c.mask, "ascent": c.ascent, "label": c.label,
         "ms": round(m, 3), "ratio_vs_sgd": round(m / sgd, 3) if sgd else None, "perturbed_fraction": frac,
         "ascent_bytes": (b["ascent"] + b["clean"]) // steps, "descent_bytes": b["descent"] // steps,
         "other_bytes": b["flags"] // steps, "sync_bn": sync_bn,
         "device_name": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu",
         "threads": torch.get_num_threads(), "steps": steps}
        for c, m, b, (_, _, frac) in zip(configs, medians, sent, made)
    ]


def _bytes(n: int) -> str:
    for unit, size in (("GB", 1e9), ("MB", 1e6), ("KB", 1e3)):
        if n >= size:
            return f"{n / size:.2f} {unit}"
    return f"{n} B"


def print_ddp_table(records: list[dict]) -> None:
    width = max(len(r["label"]) for r in records)
    head = records[0]
    print(f"model {head['model']}, global batch {head['batch_size']}, {head['nproc']} processes ({head['backend']}), "
          f"{head['device_name']} ({head['device']}), {'bf16' if head['amp'] else 'fp32'}, {head['threads']} "
          f"thread(s) each, BatchNorm {'synced' if head['sync_bn'] else 'per process'}, median of {head['steps']} "
          f"interleaved steps (mean over processes)")
    print(f"{'configuration':<{width}}  {'ms/step':>9}  {'x SGD':>6}  {'ascent all-reduce':>17}  "
          f"{'descent (DDP)':>13}  {'ascent/descent':>14}")
    for r in records:
        ratio = f"{r['ratio_vs_sgd']:.2f}" if r["ratio_vs_sgd"] else "-"
        share = f"{100 * r['ascent_bytes'] / r['descent_bytes']:.4f}%" if r["descent_bytes"] else "-"
        print(f"{r['label']:<{width}}  {r['ms']:>9.2f}  {ratio:>6}  {_bytes(r['ascent_bytes']):>17}  "
              f"{_bytes(r['descent_bytes']):>13}  {share:>14}")
