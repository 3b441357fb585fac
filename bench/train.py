"""One training run: data, model, masked SAM, epochs, the four files of a run folder.

    result = bench.train.run(config, run_dir)

``run_dir`` receives config.json, metrics.jsonl (one line per epoch), checkpoint.pt
(every epoch) and, atomically at the end, result.json. A rerun on the same folder
resumes from the checkpoint and gives, on CPU, the same numbers as an uninterrupted run:
every epoch's data order and augmentation depend only on (seed, epoch).
"""
from __future__ import annotations

import contextlib
import fcntl
import math
import os
import sys
import time
import traceback
from pathlib import Path
from typing import Any, Callable

from bench import config as C
from bench import io


class RunLocked(RuntimeError):
    """Another process is training this run right now."""


class CheckpointMismatch(RuntimeError):
    """The checkpoint in a run folder belongs to another config."""


@contextlib.contextmanager
def run_lock(run_dir: Path):
    """An exclusive, non-blocking lock on the run folder (released if the process dies)."""
    fd = os.open(run_dir / ".lock", os.O_CREAT | os.O_RDWR, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RunLocked(f"{run_dir} is being trained by another process") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        yield
    finally:
        os.close(fd)


def pick_device(name: str):
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def make_base_optimizer(cfg: dict, params):
    import torch

    opts = {k: v for k, v in cfg["base"].items() if k != "name"}
    if cfg["base"]["name"] == "sgd":
        return torch.optim.SGD(params, **opts)
    if "betas" in opts:
        opts["betas"] = tuple(opts["betas"])
    return torch.optim.AdamW(params, **opts)


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
    """One optimizer step (SAM's two passes, or one for the baselines); returns (logits, loss)."""
    with amp_ctx():
        out = model(x)
        loss = criterion(out, y)
    if opt.is_sam:
        opt.first_step(loss=loss)  # ascent gradients for the perturbed tensors only
        with amp_ctx():
            loss2 = criterion(model(x), y)
        loss2.backward()
        opt.second_step(zero_grad=True)
    else:
        loss.backward()
        opt.base_optimizer.step()
        opt.base_optimizer.zero_grad(set_to_none=True)
    return out, loss


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
        log: Callable[[str], None] | None = None) -> dict:
    """Train (or resume, or return the finished result of) one run; return result.json's content."""
    cfg = C.resolve(cfg)
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    rid = C.run_id(cfg)
    result_path = run_dir / "result.json"
    if log is None:
        def log(msg: str) -> None:
            print(msg, flush=True)

    with run_lock(run_dir):
        if result_path.exists():
            previous = io.read_json(result_path)
            if previous.get("status") in ("done", "diverged"):
                return measure_sharpness(cfg, run_dir, previous, log)
            result_path.unlink()  # a failed run is retried
        cfg_path = run_dir / "config.json"
        if cfg_path.exists():
            stored = io.read_json(cfg_path)
            if stored.get("run_id") != rid:
                raise CheckpointMismatch(
                    f"{run_dir} holds run {stored.get('run_id')}, not {rid}: use another folder")
        else:
            io.write_json(cfg_path, {"run_id": rid, "suite": suite, "config": cfg})
        try:
            result = _train(cfg, rid, run_dir, progress, log)
        except Exception as exc:  # recorded, so a crashed run never blocks the others
            result = {"status": "failed", "run_id": rid, "error": f"{type(exc).__name__}: {exc}",
                      "traceback": traceback.format_exc()[-4000:], "config": cfg}
            io.write_json(result_path, result)
            raise
        return measure_sharpness(cfg, run_dir, result, log)


def measure_sharpness(cfg: dict, run_dir: Path, result: dict, log) -> dict:
    """The run's ``sharpness`` measures, when its config asks and result.json lacks them (never raises)."""
    from bench import sharpness

    return sharpness.after_training(cfg, run_dir, result, log)


def _train(cfg: dict, rid: str, run_dir: Path, progress: bool, log) -> dict:
    import torch

    import masks
    from bench import data as D
    from bench import env as E
    from bench import models as M
    from bench.sam import SAM

    t_start = time.perf_counter()
    device = pick_device(cfg["device"])
    torch.manual_seed(cfg["seed"])

    spec = D.load_dataset(cfg["dataset"], root=cfg["data_root"], download=cfg["download"])
    spec = D.with_label_noise(spec, cfg["label_noise"], cfg["label_noise_type"], cfg["seed"])
    train_loader, test_loader = D.make_loaders(spec, cfg["batch_size"], cfg["eval_batch_size"],
                                               cfg["seed"], device, cfg["augment"])
    # batches for masks that need data (Fisher, dynamic): fixed order, no augmentation; it shares
    # the training tensors already on the device
    mask_loader = D.DeviceLoader(train_loader.x, train_loader.y, cfg["batch_size"], shuffle=True,
                                 augment=False, crop_pad=0, flip=False, seed=cfg["seed"] + 7919,
                                 device=device)

    torch.manual_seed(cfg["seed"])
    model = M.create_model(cfg["model"], num_classes=spec.num_classes, in_chans=spec.in_chans,
                           img_size=spec.img_size).to(device)
    if cfg["channels_last"]:
        model = model.to(memory_format=torch.channels_last)
    n_params = masks.n_trainable(model)
    base = make_base_optimizer(cfg, model.parameters())
    base_lrs = [g["lr"] for g in base.param_groups]
    mask = C.make_mask(cfg)
    opt = SAM(model, base, rho=cfg["rho"], variant=cfg["variant"], mask=mask, rho_norm=cfg["rho_norm"],
              freeze_bn_second=cfg["freeze_bn_second"], **cfg["variant_opts"])
    if opt.is_sam and not opt.selection:
        mask_loader.set_epoch(0)
        opt.build_mask(mask_loader)
    forward = torch.compile(model) if cfg["compile"] else model

    criterion = torch.nn.CrossEntropyLoss(label_smoothing=cfg["label_smoothing"])
    eval_criterion = torch.nn.CrossEntropyLoss()
    amp_ctx = amp_context(cfg["amp"] == "bf16" and device.type == "cuda")

    steps_per_epoch = len(train_loader)
    total_steps = cfg["epochs"] * steps_per_epoch
    warmup = cfg["warmup_epochs"] * steps_per_epoch

    # --- resume ---------------------------------------------------------------------------
    start_epoch, elapsed, epoch_times = 0, 0.0, []
    ckpt_path = run_dir / "checkpoint.pt"
    if ckpt_path.exists():
        ckpt = io.load_checkpoint(ckpt_path)
        if ckpt.get("run_id") != rid:
            raise CheckpointMismatch(f"{ckpt_path} belongs to run {ckpt.get('run_id')}, not {rid}")
        model.load_state_dict(ckpt["model"])
        opt.load_state_dict(ckpt["optimizer"])
        start_epoch, elapsed = int(ckpt["epoch"]), float(ckpt["elapsed"])
        epoch_times = [float(t) for t in ckpt["epoch_times"]]
        metrics = [dict(m) for m in ckpt["metrics"]]  # the file may hold epochs past the checkpoint
        log(f"[{rid}] resuming after epoch {start_epoch}/{cfg['epochs']}")
    else:
        metrics = []
    io.write_jsonl(run_dir / "metrics.jsonl", metrics)

    status, last = "done", (metrics[-1] if metrics else {})
    for epoch in range(start_epoch, cfg["epochs"]):
        mask_loader.set_epoch(epoch + 1)
        opt.on_epoch_start(epoch, cfg["epochs"], mask_loader)
        train_loader.set_epoch(epoch)
        model.train()
        loss_sum = torch.zeros((), device=device)
        correct = torch.zeros((), device=device, dtype=torch.long)
        bar = Progress(steps_per_epoch, f"{rid} epoch {epoch + 1}/{cfg['epochs']}", progress)
        t0 = time.perf_counter()
        for i, (x, y) in enumerate(train_loader):
            if cfg["channels_last"]:
                x = x.contiguous(memory_format=torch.channels_last)
            factor = lr_factor(epoch * steps_per_epoch + i, total_steps, warmup, cfg["schedule"])
            for group, lr in zip(base.param_groups, base_lrs):
                group["lr"] = lr * factor
            out, loss = train_step(forward, opt, x, y, criterion, amp_ctx)
            loss_sum += loss.detach().float() * y.numel()
            correct += (out.detach().argmax(1) == y).sum()
            if (i + 1) % cfg["log_every"] == 0:
                if not math.isfinite(float(loss_sum)):  # one host sync every log_every steps
                    break
                bar.update(cfg["log_every"], loss=f"{float(loss_sum) / ((i + 1) * y.numel()):.3f}")
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        epoch_time = time.perf_counter() - t0
        bar.close()
        n_train = train_loader.num_samples
        train_loss, train_acc = float(loss_sum) / n_train, 100.0 * float(correct) / n_train
        if not math.isfinite(train_loss):
            status = "diverged"
            last = {"epoch": epoch + 1, "train_loss": float("nan"), "train_acc": train_acc,
                    "test_loss": float("nan"), "test_acc": float("nan")}
            log(f"[{rid}] epoch {epoch + 1}: loss is not finite, run diverged")
            break
        test_loss, test_acc = evaluate(forward, test_loader, eval_criterion, amp_ctx)
        epoch_times.append(epoch_time)
        last = {"epoch": epoch + 1, "train_loss": train_loss, "train_acc": train_acc, "test_loss": test_loss,
                "test_acc": test_acc, "lr": base.param_groups[0]["lr"], "epoch_time_s": epoch_time,
                "perturbed_fraction": opt.perturbed_fraction}
        metrics.append(last)
        now_elapsed = elapsed + time.perf_counter() - t_start
        io.write_jsonl(run_dir / "metrics.jsonl", metrics)
        io.save_checkpoint(ckpt_path, {
            "run_id": rid, "epoch": epoch + 1, "elapsed": now_elapsed, "epoch_times": epoch_times,
            "metrics": metrics, "model": model.state_dict(), "optimizer": opt.state_dict()})
        log(f"[{rid}] epoch {epoch + 1}/{cfg['epochs']}  train loss {train_loss:.4f} acc {train_acc:.2f}  "
            f"test loss {test_loss:.4f} acc {test_acc:.2f}  {epoch_time:.1f}s")

    result = {
        "status": status,
        "run_id": rid,
        "test_acc": last.get("test_acc"),
        "test_loss": last.get("test_loss"),
        "train_acc": last.get("train_acc"),
        "train_loss": last.get("train_loss"),
        "best_test_acc": max((m["test_acc"] for m in metrics), default=None),
        "epochs": last.get("epoch", 0),
        "wall_time_s": elapsed + time.perf_counter() - t_start,
        "seconds_per_epoch": sum(epoch_times) / len(epoch_times) if epoch_times else None,
        "n_params": n_params,
        "n_perturbed": opt.n_perturbed,
        "perturbed_fraction": opt.perturbed_fraction,
        "env": E.environment(device),
        "config": cfg,
    }
    if cfg["save_gamma"]:
        gammas = norm_gammas(model)
        if gammas:
            result["norm_gamma"] = gammas
    io.write_json(run_dir / "result.json", result)
    return result
