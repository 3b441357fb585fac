"""One training run: data, model, masked SAM, epochs, the four files of a run folder.

    result = bench.train.run(config, run_dir)

``run_dir`` receives config.json, metrics.jsonl (one line per epoch), checkpoint.pt
(every epoch) and, atomically at the end, result.json. A rerun on the same folder
resumes from the checkpoint and gives, on CPU with the same number of threads, the same
numbers as an uninterrupted run: every epoch's data order and augmentation depend only on
(seed, epoch). The thread counts used are recorded (metrics, checkpoint, result); a resume
with another count says so. The loggers of the run's ``logging`` block (TensorBoard by
default: event files in the run folder, with ``loggers.json``, their resume state) follow
the same epochs. Which folder may be trained, its lock and what happens to an
old result are the run-folder rule of :mod:`bench.rundir`.
"""
from __future__ import annotations

import contextlib
import copy
import functools
import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench import config, env, io, loggers, rundir


class CheckpointMismatch(RuntimeError):
    """The checkpoint in a run folder belongs to another config."""


def base_optimizer_class(name: str):
    """The class behind ``base.name`` (config.BASE_OPTIMIZERS lists each one's options)."""
    import torch

    if name == "lion":
        from lion_pytorch import Lion  # Chen et al. 2023, the lion-pytorch package

        return Lion
    return {"sgd": torch.optim.SGD, "adamw": torch.optim.AdamW}[name]


def make_base_optimizer(cfg: dict, params):
    opts = {k: v for k, v in cfg["base"].items() if k != "name"}
    if "betas" in opts:
        opts["betas"] = tuple(opts["betas"])
    return base_optimizer_class(cfg["base"]["name"])(params, **opts)


def lr_factor(step: int, total: int, warmup: int, schedule: str) -> float:
    """Linear warm-up, then cosine (per step) or constant."""
    if warmup and step < warmup:
        return (step + 1) / warmup
    if schedule == "constant":
        return 1.0
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


class Progress:
    """tqdm on a terminal; otherwise one line per epoch (set by the caller)."""

    def __init__(self, total: int, desc: str, enabled: bool):
        self.bar = None
        if enabled and sys.stderr.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=total, desc=desc, unit="step", leave=False)

    def update(self, n: int, **postfix: Any) -> None:
        if self.bar is not None:
            self.bar.update(n)
            if postfix:
                self.bar.set_postfix(postfix, refresh=False)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def norm_gammas(model) -> list[float]:
    import masks

    params = dict(model.named_parameters())
    out = []
    for n in masks.norm_param_names(model):
        if n.rsplit(".", 1)[-1] == "weight":
            out.extend(round(float(v), 6) for v in params[n].detach().float().flatten().cpu())
    return out


def train_step(model, opt, x, y, criterion, amp_ctx):
    """One optimizer step on the batch (x, y); returns (logits, loss) of the clean forward.

    A step that perturbs (``opt.sam_now``) runs, for each group of ``m`` samples (m-sharpness;
    one group, the whole batch, by default):
      1. ``_ascent``:  the clean forward, then ``opt.first_step(loss=...)``: the ascent gradient of
                       the perturbed tensors only and w <- w + e (MSAM: e from the momentum, no
                       forward here);
      2. ``_descent``: forward/backward at w + e, accumulated into .grad with the group's share of
                       the batch (ESAM: on the samples whose loss rose most);
      3. ``opt.unperturb()``;
    then ``opt.second_step``: the variant's correction of the descent gradient and the base step.
    Any other step (variant none, before ``sam_start_epoch``, LookSAM between its SAM steps) is
    ``_plain_step``: one forward/backward at w and the base step. ``criterion`` is a torch loss
    module (ESAM's selection reads per-sample losses from a copy with ``reduction="none"``).
    MSAM has no clean forward: it returns the forward at w + e.
    """
    import torch

    if not opt.sam_now:
        return _plain_step(model, opt, x, y, criterion, amp_ctx)
    n = y.shape[0]
    outs, losses = [], []
    for part in opt.groups(n):
        share = (part.stop - part.start) / n
        xg, yg = (x, y) if share == 1.0 else (x[part], y[part])
        out, loss, per_sample = _ascent(model, opt, xg, yg, criterion, amp_ctx, share)
        out2, loss2 = _descent(model, opt, xg, yg, criterion, amp_ctx, share, per_sample)
        opt.unperturb()
        outs.append(out2 if out is None else out)
        losses.append(loss2 if loss is None else loss)
    opt.second_step(zero_grad=True)
    if len(outs) == 1:
        return outs[0], losses[0]
    shares = [(p.stop - p.start) / n for p in opt.groups(n)]
    return torch.cat(outs), sum(loss.detach() * w for loss, w in zip(losses, shares))


def _plain_step(model, opt, x, y, criterion, amp_ctx):
    """One forward/backward at w and the base optimizer's step (with LookSAM's correction)."""
    with amp_ctx():
        out = model(x)
        loss = criterion(out, y)
    loss.backward()
    if opt.in_sam_phase:
        opt.second_step(zero_grad=True)
    else:  # the base optimizer alone, exactly as the baseline runs it
        opt.base_optimizer.step()
        opt.base_optimizer.zero_grad(set_to_none=True)
    return out, loss


def _ascent(model, opt, x, y, criterion, amp_ctx, share):
    """The clean forward, the ascent gradient and the perturbation; (logits, loss, per-sample losses)."""
    if not opt.variant.ascent:
        opt.first_step()
        return None, None, None
    per_sample = None
    with amp_ctx():
        out = model(x)
        if opt.variant.selects_data:
            per_sample = per_sample_loss(criterion)(out, y)
            loss = per_sample.mean()
        else:
            loss = criterion(out, y)
    opt.first_step(loss=loss, weight=share)  # ascent gradients for the perturbed tensors only
    return out, loss, per_sample


def _descent(model, opt, x, y, criterion, amp_ctx, share, loss_before):
    """The descent gradient at w + e, added to .grad with the group's share; (logits, loss)."""
    import torch

    with amp_ctx():
        if loss_before is not None:
            with torch.no_grad():
                loss_after = per_sample_loss(criterion)(model(x), y)
            keep = opt.variant.select(loss_before.detach(), loss_after)
            if keep is not None:
                x, y = x[keep], y[keep]
        out = model(x)
        loss = criterion(out, y)
    (loss if share == 1.0 else loss * share).backward()
    return out, loss


def per_sample_loss(criterion):
    """A copy of a torch loss module that returns one loss per sample."""
    per_sample = copy.copy(criterion)
    per_sample.reduction = "none"
    return per_sample


def amp_context(enabled: bool):
    """A factory of autocast contexts: bf16 on CUDA when enabled, else a no-op."""
    import torch

    if enabled:
        return lambda: torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext


def evaluate(model, loader, criterion, amp_ctx) -> tuple[float, float]:
    import torch

    model.eval()
    loss_sum = torch.zeros((), device=loader.device)
    correct = torch.zeros((), device=loader.device, dtype=torch.long)
    with torch.no_grad():
        for x, y in loader:
            with amp_ctx():
                out = model(x)
            loss_sum += criterion(out.float(), y) * y.numel()
            correct += (out.argmax(1) == y).sum()
    n = loader.num_samples
    return float(loss_sum) / n, 100.0 * float(correct) / n


def run(cfg: dict, run_dir: str | Path, suite: str | None = None, progress: bool = True,
        log: Callable[[str], None] | None = None, submission: str | None = None) -> dict:
    """Train (or resume, or return the finished result of) one run; return result.json's content.

    ``submission`` (an id chosen by the suite runner) is stored in result.json, so the runner
    knows which results its own submission produced. A folder holding another run is refused
    (rundir.ForeignRunDir) before anything is written.
    """
    cfg = config.resolve(cfg)
    rid = config.run_id(cfg)
    run_dir = Path(run_dir)
    rundir.check_owner(run_dir, rid)
    run_dir.mkdir(parents=True, exist_ok=True)
    log = log or _print
    with rundir.run_lock(run_dir):
        finished, note = rundir.take_up(run_dir)
        if finished is not None:
            return measure_sharpness(cfg, run_dir, finished, log)
        if note:
            log(f"[{rid}] {note}")
        write_config(run_dir, rid, suite, cfg)
        try:
            result = _train(cfg, rid, run_dir, progress, log, suite)
        except Exception as exc:  # recorded, so a crashed run never blocks the others
            io.write_json(run_dir / "result.json", {
                "status": "failed", "run_id": rid, "error": f"{type(exc).__name__}: {exc}",
                "traceback": _traceback(), "config": cfg, "submission": submission})
            raise
        result["submission"] = submission
        io.write_json(run_dir / "result.json", result)
        return measure_sharpness(cfg, run_dir, result, log)


def measure_sharpness(cfg: dict, run_dir: Path, result: dict, log) -> dict:
    """The run's ``sharpness`` measures, when its config asks and result.json lacks them (never raises)."""
    from bench import sharpness_runs

    return sharpness_runs.after_training(cfg, run_dir, result, log)


def write_config(run_dir: Path, rid: str, suite: str | None, cfg: dict) -> None:
    """config.json, unless the folder has one (it then names this run: rundir.check_owner)."""
    path = run_dir / "config.json"
    if not path.exists():
        io.write_json(path, {"run_id": rid, "suite": suite, "config": cfg,
                             "variant_options": config.variant_options(cfg)})


def _print(msg: str) -> None:
    print(msg, flush=True)


def _traceback() -> str:
    import traceback

    return traceback.format_exc()[-4000:]


@dataclass
class Setup:
    """Everything a run trains with, built from its config."""

    device: Any
    train_loader: Any
    test_loader: Any
    mask_loader: Any
    model: Any
    forward: Any              # the model, or its torch.compile wrapper
    base: Any                 # the base optimizer
    opt: Any                  # bench.sam.SAM around it
    base_lrs: list[float]
    n_params: int
    criterion: Any
    eval_criterion: Any
    amp_ctx: Any
    step: Any = None          # bench.fast_step.FastStep (compile_step), else train_step runs


@dataclass
class TrainState:
    """Where training stands: restored from checkpoint.pt, advanced every epoch."""

    epoch: int = 0
    elapsed: float = 0.0
    epoch_times: list[float] = field(default_factory=list)
    metrics: list[dict] = field(default_factory=list)
    threads_used: list[int] = field(default_factory=list)


def _train(cfg: dict, rid: str, run_dir: Path, progress: bool, log, suite: str | None = None) -> dict:
    """Set up, resume, train the remaining epochs; return the result (not yet written).

    The run's loggers (bench.loggers; rank 0 only) open after the resume and continue the same
    logger runs; each epoch is logged once its checkpoint is written, the final metrics before
    result.json. If training raises, they finish as failed.
    """
    import torch

    t_start = time.perf_counter()
    setup = build(cfg)
    state = resume(setup, cfg, rid, run_dir, log)
    threads = torch.get_num_threads()
    if threads not in state.threads_used:
        state.threads_used.append(threads)
    io.write_jsonl(run_dir / "metrics.jsonl", state.metrics)
    with loggers.open_loggers(cfg["logging"], run_dir, rid, suite, cfg, history=state.metrics) as run_loggers:
        status, last = "done", (state.metrics[-1] if state.metrics else {})
        for epoch in range(state.epoch, cfg["epochs"]):
            stats = train_epoch(setup, cfg, rid, epoch, progress)
            if not math.isfinite(stats["train_loss"]):
                status = "diverged"
                last = {"epoch": epoch + 1, "train_loss": float("nan"), "train_acc": stats["train_acc"],
                        "test_loss": float("nan"), "test_acc": float("nan")}
                log(f"[{rid}] epoch {epoch + 1}: loss is not finite, run diverged")
                break
            last = finish_epoch(setup, cfg, rid, run_dir, epoch, stats, state, t_start, log, run_loggers)
        result = make_result(setup, cfg, rid, status, last, state, t_start)
        run_loggers.log_final(result, cfg)
    return result


def build(cfg: dict) -> Setup:
    """Data, model, base optimizer and SAM, seeded by the config."""
    import torch

    import masks
    from bench.data import DeviceLoader, load_dataset, make_loaders, with_label_noise
    from bench.models import create_model, pick_device
    from bench.sam import SAM

    device = pick_device(cfg["device"])
    torch.manual_seed(cfg["seed"])
    spec = load_dataset(cfg["dataset"], root=cfg["data_root"], download=cfg["download"])
    spec = with_label_noise(spec, cfg["label_noise"], cfg["label_noise_type"], cfg["seed"])
    train_loader, test_loader = make_loaders(spec, cfg["batch_size"], cfg["eval_batch_size"],
                                             cfg["seed"], device, cfg["augment"])
    # batches for masks that need data (Fisher, dynamic): fixed order, no augmentation; it shares
    # the training tensors already on the device
    mask_loader = DeviceLoader(train_loader.x, train_loader.y, cfg["batch_size"], shuffle=True,
                               augment=False, crop_pad=0, flip=False, seed=cfg["seed"] + 7919, device=device)
    torch.manual_seed(cfg["seed"])
    model = create_model(cfg["model"], num_classes=spec.num_classes, in_chans=spec.in_chans,
                         img_size=spec.img_size).to(device)
    if cfg["channels_last"]:
        model = model.to(memory_format=torch.channels_last)
    base = make_base_optimizer(cfg, model.parameters())
    opt = SAM(model, base, rho=cfg["rho"], variant=cfg["variant"], mask=config.make_mask(cfg),
              rho_norm=cfg["rho_norm"], freeze_bn_second=cfg["freeze_bn_second"], **cfg["variant_opts"])
    if opt.is_sam and not opt.selection:
        mask_loader.set_epoch(0)
        opt.build_mask(mask_loader)
    setup = Setup(device=device, train_loader=train_loader, test_loader=test_loader, mask_loader=mask_loader,
                 model=model, forward=torch.compile(model) if cfg["compile"] else model, base=base, opt=opt,
                 base_lrs=[g["lr"] for g in base.param_groups], n_params=masks.n_trainable(model),
                 criterion=torch.nn.CrossEntropyLoss(label_smoothing=cfg["label_smoothing"]),
                 eval_criterion=torch.nn.CrossEntropyLoss(),
                 amp_ctx=amp_context(cfg["amp"] == "bf16" and device.type == "cuda"))
    if cfg["compile_step"]:
        from bench.fast_step import FastStep

        reference = functools.partial(train_step, setup.forward, opt, criterion=setup.criterion,
                                      amp_ctx=setup.amp_ctx)
        setup.step = FastStep(model, opt, setup.criterion, setup.amp_ctx, reference, compiled=True,
                              forward=setup.forward)
    return setup


def resume(setup: Setup, cfg: dict, rid: str, run_dir: Path, log) -> TrainState:
    """Restore model, optimizer and progress from checkpoint.pt, if there is a usable one.

    A checkpoint that cannot be read is kept under another name and the run starts over;
    one of another run is refused (CheckpointMismatch).
    """
    import torch

    path = run_dir / "checkpoint.pt"
    if not path.exists():
        return TrainState()
    try:
        ckpt = io.load_checkpoint(path)
    except io.CheckpointError as exc:
        kept = rundir.move_aside(path)
        log(f"[{rid}] {exc}: kept as {kept.name}, training from the start")
        return TrainState()
    if ckpt.get("run_id") != rid:
        raise CheckpointMismatch(f"{path} belongs to run {ckpt.get('run_id')}, not {rid}")
    setup.model.load_state_dict(ckpt["model"])
    setup.opt.load_state_dict(ckpt["optimizer"])
    state = TrainState(epoch=int(ckpt["epoch"]), elapsed=float(ckpt["elapsed"]),
                      epoch_times=[float(t) for t in ckpt["epoch_times"]],
                      metrics=[dict(m) for m in ckpt["metrics"]],  # the file may hold epochs past it
                      threads_used=[int(t) for t in ckpt.get("threads_used", [])])
    log(f"[{rid}] resuming after epoch {state.epoch}/{cfg['epochs']}")
    threads = torch.get_num_threads()
    if state.threads_used and threads not in state.threads_used and setup.device.type == "cpu":
        log(f"[{rid}] warning: resuming with {threads} CPU thread(s); the epochs so far used "
            f"{', '.join(map(str, state.threads_used))}. On CPU the thread count changes the numbers "
            f"slightly: this run will not match an uninterrupted one bit for bit")
    return state


def train_epoch(setup: Setup, cfg: dict, rid: str, epoch: int, progress: bool) -> dict:
    """One pass over the training set; ``{train_loss, train_acc, epoch_time_s}`` (loss may be nan)."""
    import torch

    s = setup
    s.mask_loader.set_epoch(epoch + 1)
    s.opt.on_epoch_start(epoch, cfg["epochs"], s.mask_loader)
    s.train_loader.set_epoch(epoch)
    s.model.train()
    steps_per_epoch = len(s.train_loader)
    total_steps, warmup = cfg["epochs"] * steps_per_epoch, cfg["warmup_epochs"] * steps_per_epoch
    loss_sum = torch.zeros((), device=s.device)
    correct = torch.zeros((), device=s.device, dtype=torch.long)
    bar = Progress(steps_per_epoch, f"{rid} epoch {epoch + 1}/{cfg['epochs']}", progress)
    t0 = time.perf_counter()
    for i, (x, y) in enumerate(s.train_loader):
        if cfg["channels_last"]:
            x = x.contiguous(memory_format=torch.channels_last)
        factor = lr_factor(epoch * steps_per_epoch + i, total_steps, warmup, cfg["schedule"])
        for group, lr in zip(s.base.param_groups, s.base_lrs):
            group["lr"] = lr * factor
        if s.step is not None:
            out, loss = s.step(x, y)
        else:
            out, loss = train_step(s.forward, s.opt, x, y, s.criterion, s.amp_ctx)
        loss_sum += loss.detach().float() * y.numel()
        correct += (out.detach().argmax(1) == y).sum()
        if (i + 1) % cfg["log_every"] == 0:
            if not math.isfinite(float(loss_sum)):  # one host sync every log_every steps
                break
            bar.update(cfg["log_every"], loss=f"{float(loss_sum) / ((i + 1) * y.numel()):.3f}")
    if s.device.type == "cuda":
        torch.cuda.synchronize(s.device)
    epoch_time = time.perf_counter() - t0
    bar.close()
    n_train = s.train_loader.num_samples
    return {"train_loss": float(loss_sum) / n_train, "train_acc": 100.0 * float(correct) / n_train,
            "epoch_time_s": epoch_time}


def finish_epoch(setup: Setup, cfg: dict, rid: str, run_dir: Path, epoch: int, stats: dict,
                 state: TrainState, t_start: float, log, run_loggers: loggers.Loggers) -> dict:
    """Evaluate, append the epoch to metrics.jsonl, write checkpoint.pt, then log the epoch to the
    run's loggers; return its metrics."""
    import torch

    test_loss, test_acc = evaluate(setup.forward, setup.test_loader, setup.eval_criterion, setup.amp_ctx)
    state.epoch_times.append(stats["epoch_time_s"])
    last = {"epoch": epoch + 1, "train_loss": stats["train_loss"], "train_acc": stats["train_acc"],
            "test_loss": test_loss, "test_acc": test_acc, "lr": setup.base.param_groups[0]["lr"],
            "epoch_time_s": stats["epoch_time_s"], "perturbed_fraction": setup.opt.perturbed_fraction,
            "threads": torch.get_num_threads()}
    state.metrics.append(last)
    state.epoch = epoch + 1
    io.write_jsonl(run_dir / "metrics.jsonl", state.metrics)
    io.save_checkpoint(run_dir / "checkpoint.pt", {
        "run_id": rid, "epoch": epoch + 1, "elapsed": state.elapsed + time.perf_counter() - t_start,
        "epoch_times": state.epoch_times, "metrics": state.metrics, "threads_used": state.threads_used,
        "model": setup.model.state_dict(), "optimizer": setup.opt.state_dict()})
    run_loggers.log_epoch(last)
    log(f"[{rid}] epoch {epoch + 1}/{cfg['epochs']}  train loss {stats['train_loss']:.4f} "
        f"acc {stats['train_acc']:.2f}  test loss {test_loss:.4f} acc {test_acc:.2f}  {stats['epoch_time_s']:.1f}s")
    return last


def make_result(setup: Setup, cfg: dict, rid: str, status: str, last: dict, state: TrainState,
                t_start: float) -> dict:
    """result.json's content: the last epoch's numbers, timing, the mask's size, the environment."""
    times = state.epoch_times
    result = {
        "status": status,
        "run_id": rid,
        "test_acc": last.get("test_acc"),
        "test_loss": last.get("test_loss"),
        "train_acc": last.get("train_acc"),
        "train_loss": last.get("train_loss"),
        "best_test_acc": max((m["test_acc"] for m in state.metrics), default=None),
        "epochs": last.get("epoch", 0),
        "wall_time_s": state.elapsed + time.perf_counter() - t_start,
        "seconds_per_epoch": sum(times) / len(times) if times else None,
        "n_params": setup.n_params,
        "n_perturbed": setup.opt.n_perturbed,
        "perturbed_fraction": setup.opt.perturbed_fraction,
        "threads_used": state.threads_used,
        "env": env.environment(setup.device),
        "config": cfg,
        "variant_options": config.variant_options(cfg),
    }
    if setup.step is not None:
        result["fast_step"] = setup.step.describe()
    if cfg["save_gamma"]:
        gammas = norm_gammas(setup.model)
        if gammas:
            result["norm_gamma"] = gammas
    return result
