"""One optimizer step of masked SAM on a batch (ascent, descent, the base step), and evaluation.

    logits, loss = train_step(model, opt, x, y, criterion, amp_ctx)
    test_loss, test_acc = evaluate(model, loader, criterion, amp_ctx)
"""
from __future__ import annotations

import contextlib
import copy
from dataclasses import dataclass
from typing import Any


@dataclass
class Chunk:
    """One micro-batch of a step as this process holds it (its shard), and its weight in the step."""

    x: Any
    y: Any
    weight: float             # n x world / (the step's samples over all processes)
    per_sample: Any = None    # ESAM: per-sample losses at w, from the ascent forward


def _ddp_of(model):
    """The DistributedDataParallel wrapper of ``model`` (through torch.compile), or None."""
    from torch.nn.parallel import DistributedDataParallel

    inner = getattr(model, "_orig_mod", model)
    return inner if isinstance(inner, DistributedDataParallel) else None


def _chunks(x, y, sizes: list[int] | None, total: int | None, world: int) -> list[Chunk]:
    total = total or len(y) * world
    if not sizes or len(sizes) == 1:
        return [Chunk(x, y, len(y) * world / total)]
    out, at = [], 0
    for n in sizes:
        out.append(Chunk(x[at:at + n], y[at:at + n], n * world / total))
        at += n
    return out


def train_step(model, opt, x, y, criterion, amp_ctx, sizes: list[int] | None = None, total: int | None = None,
               ascent_model=None):
    """One optimizer step on the batch (x, y); returns (logits, loss) of the clean forward.

    ``x, y``: this process's samples of the step. With gradient accumulation they are its shards
    of several micro-batches, in order, and ``sizes`` says how many belong to each; ``total`` is
    the step's number of samples over all processes (default ``len(y) * opt.world``). Each
    micro-batch's loss weighs n x world / total, so DDP's average over the processes is the mean
    over the step's samples however they are split.

    ``model`` is what the descent runs through (DistributedDataParallel across processes: it
    averages the gradients; only the step's last backward synchronizes); the ascent runs through
    ``ascent_model`` (default: the module inside DDP), so its forward and backward stay outside
    DDP's hooks, and ``opt`` averages only the ascent tensors' gradients (ascent synced).

    A step that perturbs (``opt.sam_now``) runs, for each group (one group of every micro-batch
    by default; m-sharpness: groups of ``m`` samples within each micro-batch):
      1. ``_ascent``:  the clean forward of each micro-batch and ``opt.accumulate_ascent``, then
                       ``opt.first_step``: the ascent gradient of the perturbed tensors only and
                       w <- w + e once (MSAM: e from the momentum, no forward here);
      2. ``_descent``: forward/backward at w + e of each micro-batch, accumulated into .grad
                       (ESAM: on the samples whose loss rose most);
      3. ``opt.unperturb()``;
    then ``opt.second_step``: the variant's correction of the descent gradient and the base step
    (fp16: skipped after an overflow in either pass). Any other step (variant none, before
    ``sam_start_epoch``, LookSAM between its SAM steps) is ``_plain_step``: forward/backward at w
    and the base step. ``criterion`` is a torch loss module (ESAM's selection reads per-sample
    losses from a copy with ``reduction="none"``). MSAM has no clean forward: it returns the
    forward at w + e.
    """
    import torch

    chunks = _chunks(x, y, sizes, total, opt.world)
    if not opt.sam_now:
        outs, losses = _plain_step(model, opt, chunks, criterion, amp_ctx)
    else:
        ddp = _ddp_of(model)
        if ascent_model is None:
            ascent_model = ddp.module if ddp is not None else model
        groups = _groups(opt, chunks)
        outs, losses = [], []
        for i, group in enumerate(groups):
            out, loss = _ascent(ascent_model, opt, group, criterion, amp_ctx)
            out2, loss2 = _descent(model, opt, group, criterion, amp_ctx, last=i == len(groups) - 1)
            opt.unperturb()
            outs += out2 if out is None else out
            losses += loss2 if loss is None else loss
        opt.second_step(zero_grad=True)
    if len(outs) == 1:
        return outs[0], losses[0]
    counts = [len(o) for o in outs]
    mean = sum(loss.detach() * n for loss, n in zip(losses, counts)) / sum(counts)
    return torch.cat(outs), mean


def _groups(opt, chunks: list[Chunk]) -> list[list[Chunk]]:
    """The groups a step perturbs separately: all micro-batches together, or (m-sharpness) groups of
    m samples within each micro-batch (m divides the per-process batch: groups never span processes)."""
    if opt.variant.m is None:
        return [chunks]
    out = []
    for c in chunks:
        n = len(c.y)
        for part in opt.groups(n):
            share = (part.stop - part.start) / n
            out.append([c if share == 1.0 else Chunk(c.x[part], c.y[part], c.weight * share)])
    return out


def _plain_step(model, opt, chunks, criterion, amp_ctx):
    """Forward/backward at w of every micro-batch, then ``second_step``: the base optimizer's step
    (with LookSAM's correction in its SAM phase); the same numbers as the baseline's own step."""
    outs, losses = [], []
    for i, c in enumerate(chunks):
        with _sync(model, last=i == len(chunks) - 1):
            with amp_ctx():
                out = model(c.x)
                loss = criterion(out, c.y)
            opt.scale_loss(loss if c.weight == 1.0 else loss * c.weight).backward()
        outs.append(out)
        losses.append(loss)
    opt.second_step(zero_grad=True)
    return outs, losses


def _sync(model, last: bool):
    """DDP synchronizes (averages) the gradients in the step's last backward only."""
    ddp = _ddp_of(model)
    return ddp.no_sync() if ddp is not None and not last else contextlib.nullcontext()


def _ascent(model, opt, group, criterion, amp_ctx):
    """The clean forwards, the ascent gradient and the perturbation; (logits, losses) per micro-batch
    (None for MSAM, which has no ascent pass)."""
    if not opt.variant.ascent:
        opt.first_step()
        return None, None
    outs, losses = [], []
    n_local = sum(len(c.y) for c in group)
    for c in group:
        with amp_ctx():
            out = model(c.x)
            if opt.variant.selects_data:
                c.per_sample = per_sample_loss(criterion)(out, c.y)
                loss = c.per_sample.mean()
            else:
                loss = criterion(out, c.y)
        # synced: the global mean after the average over processes; else this process's mean
        weight = c.weight if opt.sync_ascent else len(c.y) / n_local
        opt.accumulate_ascent(loss, weight=weight)  # ascent gradients of the perturbed tensors only
        outs.append(out)
        losses.append(loss)
    # the clean gradient a variant keeps: this group's share of the step (averaged over processes
    # at the step's end unless the ascent already was)
    opt.first_step(weight=1.0 if opt.sync_ascent else sum(c.weight for c in group))
    return outs, losses


def _descent(model, opt, group, criterion, amp_ctx, last: bool):
    """The descent gradient at w + e, added to .grad with each micro-batch's weight; (logits, losses)."""
    import torch

    outs, losses = [], []
    for i, c in enumerate(group):
        x, y = c.x, c.y
        with _sync(model, last=last and i == len(group) - 1):
            with amp_ctx():
                if c.per_sample is not None:
                    with torch.no_grad():
                        loss_after = per_sample_loss(criterion)(model(x), y)
                    keep = opt.variant.select(c.per_sample.detach(), loss_after)
                    if keep is not None:
                        x, y = x[keep], y[keep]
                out = model(x)
                loss = criterion(out, y)
            opt.scale_loss(loss if c.weight == 1.0 else loss * c.weight).backward()
        outs.append(out)
        losses.append(loss)
    return outs, losses


def per_sample_loss(criterion):
    """A copy of a torch loss module that returns one loss per sample."""
    per_sample = copy.copy(criterion)
    per_sample.reduction = "none"
    return per_sample


def evaluate(model, loader, criterion, amp_ctx, comm=None) -> tuple[float, float]:
    """(mean loss, accuracy %) over the loader's data set; each process evaluates its shard of every
    batch and the sums are added over the processes."""
    import torch

    model.eval()
    sums = torch.zeros(3, device=loader.device, dtype=torch.float64)  # loss, correct, samples
    with torch.no_grad():
        for x, y in loader:
            if not len(y):
                continue
            with amp_ctx():
                out = model(x)
            sums[0] += criterion(out.float(), y).double() * y.numel()
            sums[1] += (out.argmax(1) == y).sum()
            sums[2] += y.numel()
    if comm is not None:
        comm.sum_(sums)
    loss_sum, correct, n = (float(v) for v in sums)
    return loss_sum / n, 100.0 * correct / n
