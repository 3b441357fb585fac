"""One training run: data, model, masked SAM, epochs, the four files of a run folder.

    result = bench.engine.train.run(config, run_dir)

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
import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from bench import config, env, io, loggers, rundir
from bench.engine.build import Setup, build, share_selection
from bench.engine.step import evaluate, train_step
from masks.registry import plugin_frame


class CheckpointMismatch(RuntimeError):
    """The checkpoint in a run folder belongs to another config."""


def lr_factor(step: int, total: int, warmup: int, schedule: str) -> float:
    """Linear warm-up, then cosine (per step) or constant."""
    if warmup and step < warmup:
        return (step + 1) / warmup
    if schedule == "constant":
        return 1.0
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


class Progress:
    """The live line of a run on a terminal (stderr), redrawn a few times a second::

        3f2a9c1b04de epoch 3/20 step 7/12  loss 1.2345 acc 56.78%  21.3 it/s  ETA 1:05

    loss and accuracy are the epoch's so far (on a process group: rank 0's shard), it/s this
    epoch's training steps per second, ETA the rest of the run at the pace since it (re)started,
    evaluations included. When stderr is not a terminal, or ``enabled`` is false, it writes
    nothing: logs keep the one line per epoch the run prints anyway.
    """

    def __init__(self, rid: str, epochs: int, steps_per_epoch: int, enabled: bool, stream=None):
        from bench.console import LiveLine

        self.line = LiveLine(sys.stderr if stream is None else stream, enabled=enabled)
        self.rid, self.epochs, self.steps_per_epoch = rid, epochs, max(1, steps_per_epoch)
        self.t_start = self.t_epoch = time.perf_counter()
        self.steps_done = 0      # since this process started the run
        self.epoch_steps = 0

    def start_epoch(self) -> None:
        self.t_epoch, self.epoch_steps = time.perf_counter(), 0

    def step(self, epoch: int, step: int, read_stats: Callable[[], tuple[float, float, float]]) -> None:
        """After training step ``step`` (1-based) of ``epoch`` (0-based); ``read_stats()`` gives
        the epoch's (loss sum, correct, samples) so far and is called only when the line is redrawn
        (it syncs with the device)."""
        self.steps_done += 1
        self.epoch_steps += 1
        if not self.line.due():
            return
        loss_sum, correct, n = read_stats()
        now = time.perf_counter()
        rate = self.epoch_steps / max(now - self.t_epoch, 1e-9)
        left = (self.epochs - epoch - 1) * self.steps_per_epoch + self.steps_per_epoch - step
        eta = left * (now - self.t_start) / self.steps_done
        from bench.console import duration

        self.line.show(f"{self.rid} epoch {epoch + 1}/{self.epochs} step {step}/{self.steps_per_epoch}  "
                       f"loss {loss_sum / max(n, 1):.4f} acc {100.0 * correct / max(n, 1):.2f}%  "
                       f"{rate:.1f} it/s  ETA {duration(eta)}")

    def clear(self) -> None:
        """Erase the line (before the epoch's log line; the next step draws it again)."""
        self.line.clear()


def norm_gammas(model) -> list[float]:
    import masks

    params = dict(model.named_parameters())
    out = []
    for n in masks.norm_param_names(model):
        if n.rsplit(".", 1)[-1] == "weight":
            out.extend(round(float(v), 6) for v in params[n].detach().float().flatten().cpu())
    return out


KNOWN_ERRORS = {cls.__name__: cls for cls in (rundir.RunLocked, rundir.ForeignRunDir)}


def run(cfg: dict, run_dir: str | Path, suite: str | None = None, progress: bool = True,
        log: Callable[[str], None] | None = None, submission: str | None = None) -> dict:
    """Train (or resume, or return the finished result of) one run; return result.json's content.

    ``submission`` (an id chosen by the suite runner) is stored in result.json, so the runner
    knows which results its own submission produced. A folder holding another run is refused
    (rundir.ForeignRunDir) before anything is written.

    In a process group (:mod:`bench.engine.distributed`; nproc x nodes processes) every process calls
    this: rank 0 takes the folder (owner, lock, old result), tells the others what it found, and
    alone writes files; every process trains its shard of each batch.
    """
    from bench.engine import distributed

    cfg = config.resolve(cfg)  # a config the caller resolved comes back as it is
    rid = config.run_id(cfg)
    run_dir = Path(run_dir)
    comm = distributed.current()
    check_world(cfg, comm)
    if comm is not None and not comm.is_main:
        finished = distributed.follow(comm, KNOWN_ERRORS)
        return finished if finished is not None else _train(cfg, rid, run_dir, False, _silent)
    log = log or _print
    with contextlib.ExitStack() as held:
        try:
            rundir.check_owner(run_dir, rid)
            run_dir.mkdir(parents=True, exist_ok=True)
            held.enter_context(rundir.run_lock(run_dir))
            finished, note = rundir.take_up(run_dir)
        except Exception as exc:
            distributed.announce(comm, error=exc)
            raise
        distributed.announce(comm, outcome=finished)
        if finished is not None:
            return measure_sharpness(cfg, run_dir, finished, log)
        if note:
            log(f"[{rid}] {note}")
        rundir.write_config(run_dir, rid, suite, cfg, config.variant_options(cfg), keep=True)
        try:
            result = _train(cfg, rid, run_dir, progress, log, suite)
        except Exception as exc:  # recorded, so a crashed run never blocks the others
            failed = rundir.failure_from_exception(exc, plugin_frame(exc), rid=rid, rank=0, config=cfg,
                                                   submission=submission)
            rundir.write_failure(run_dir, failed)
            raise
        result["submission"] = submission
        rundir.write_result(run_dir, result)
        return measure_sharpness(cfg, run_dir, result, log)


def measure_sharpness(cfg: dict, run_dir: Path, result: dict, log) -> dict:
    """The run's ``sharpness`` measures, when its config asks and result.json lacks them (never raises)."""
    from bench.engine import sharpness_runs

    return sharpness_runs.after_training(cfg, run_dir, result, log)


def check_world(cfg: dict, comm) -> None:
    """The run's nproc x nodes must be the number of processes training it."""
    from bench.engine.distributed import DistributedError

    want, have = config.world_size(cfg), 1 if comm is None else comm.world
    if want != have:
        how = ("start it with `sambench train --nproc N`, torchrun, or a suite" if have == 1
               else "the launcher started another number")
        raise DistributedError(f"the run asks for nproc x nodes = {want} processes, but {have} train it: {how}")


def _print(msg: str) -> None:
    print(msg, flush=True)


def _silent(msg: str) -> None:
    """The log of processes other than rank 0."""


@dataclass
class TrainState:
    """Where training stands: restored from checkpoint.pt, advanced every epoch."""

    epoch: int = 0
    elapsed: float = 0.0
    epoch_times: list[float] = field(default_factory=list)
    metrics: list[dict] = field(default_factory=list)
    threads_used: list[int] = field(default_factory=list)


def _train(cfg: dict, rid: str, run_dir: Path, progress: bool, log, suite: str | None = None) -> dict:
    """Set up, resume, train the remaining epochs; return the result (not yet written). In a
    process group, this process's part of the run.

    The run's loggers (bench.loggers; rank 0 only) open after the resume and continue the same
    logger runs; each epoch is logged once its checkpoint is written, the final metrics before
    result.json. If training raises, they finish as failed.
    """
    import torch

    from bench.engine import distributed

    comm = distributed.current()

    t_start = time.perf_counter()
    setup = build(cfg, comm)
    state = resume(setup, cfg, rid, run_dir, log)
    threads = torch.get_num_threads()
    if threads not in state.threads_used:
        state.threads_used.append(threads)
    if _writes(comm):
        io.write_jsonl(run_dir / "metrics.jsonl", state.metrics)
    rank = 0 if comm is None else comm.rank
    with loggers.open_loggers(cfg["logging"], run_dir, rid, suite, cfg, history=state.metrics,
                              rank=rank, steps_per_epoch=len(setup.train_loader)) as run_loggers:
        status, last = "done", (state.metrics[-1] if state.metrics else {})
        bar = Progress(rid, cfg["epochs"], len(setup.train_loader), progress and _writes(comm))
        for epoch in range(state.epoch, cfg["epochs"]):
            stats = train_epoch(setup, cfg, rid, epoch, bar, run_loggers.log_step if run_loggers.loggers else None)
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


def _writes(comm) -> bool:
    """Whether this process writes the run's files (rank 0, or the only process)."""
    return comm is None or comm.is_main


def resume(setup: Setup, cfg: dict, rid: str, run_dir: Path, log) -> TrainState:
    """Restore model, optimizer and progress from checkpoint.pt, if there is a usable one.

    A checkpoint that cannot be read is kept under another name and the run starts over;
    one of another run is refused (CheckpointMismatch). Across processes rank 0 decides and
    every process loads the same checkpoint.
    """
    from bench.engine import distributed

    comm = setup.comm
    if _writes(comm):
        try:
            state = _resume_main(setup, cfg, rid, run_dir, log)
        except Exception as exc:
            distributed.announce(comm, error=exc)
            raise
        distributed.announce(comm, outcome=state.epoch)
        return state
    if not distributed.follow(comm, {"CheckpointMismatch": CheckpointMismatch}):
        return TrainState()
    return _load_state(setup, io.load_checkpoint(run_dir / "checkpoint.pt"))


def _load_state(setup: Setup, ckpt: dict) -> TrainState:
    setup.model.load_state_dict(ckpt["model"])
    setup.opt.load_state_dict(ckpt["optimizer"])
    return TrainState(epoch=int(ckpt["epoch"]), elapsed=float(ckpt["elapsed"]),
                      epoch_times=[float(t) for t in ckpt["epoch_times"]],
                      metrics=[dict(m) for m in ckpt["metrics"]],  # the file may hold epochs past it
                      threads_used=[int(t) for t in ckpt.get("threads_used", [])])


def _resume_main(setup: Setup, cfg: dict, rid: str, run_dir: Path, log) -> TrainState:
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
    state = _load_state(setup, ckpt)
    log(f"[{rid}] resuming after epoch {state.epoch}/{cfg['epochs']}")
    threads = torch.get_num_threads()
    if state.threads_used and threads not in state.threads_used and setup.device.type == "cpu":
        log(f"[{rid}] warning: resuming with {threads} CPU thread(s); the epochs so far used "
            f"{', '.join(map(str, state.threads_used))}. On CPU the thread count changes the numbers "
            f"slightly: this run will not match an uninterrupted one bit for bit")
    return state


def step_scalars(setup: Setup, window: list[float]) -> dict[str, float]:
    """A logged step's scalars: train loss and accuracy over the steps since the last logged one
    (``window``: loss x samples, correct, samples), the learning rate, and the SAM step's rho_t, ||e||
    and ascent-gradient norm (when it perturbed and recorded them)."""
    loss, correct, samples = window
    out = {"step/loss": loss / samples, "step/acc": 100.0 * correct / samples,
           "step/lr": float(setup.base.param_groups[0]["lr"])}
    for key, value in (getattr(setup.opt, "stats", None) or {}).items():
        if value is not None:
            out[f"sam/{key}"] = float(value)
    return out


def set_lr(setup: Setup, factor: float) -> None:
    """Every parameter group of the base optimizer at its configured learning rate times ``factor``."""
    for group, lr in zip(setup.base.param_groups, setup.base_lrs):
        group["lr"] = lr * factor


def train_epoch(setup: Setup, cfg: dict, rid: str, epoch: int, bar: Progress | None = None,
                step_log: Callable[[int, dict], None] | None = None) -> dict:
    """One pass over the training set; ``{train_loss, train_acc, epoch_time_s}`` (loss may be nan),
    summed over the processes. ``bar``: the run's live line (:class:`Progress`), if any;
    ``step_log(global step, scalars)`` every ``log_every`` steps."""
    import torch

    s = setup
    s.mask_loader.set_epoch(epoch + 1)
    if s.opt.on_epoch_start(epoch, cfg["epochs"], s.mask_loader):
        share_selection(s.opt, s.comm)
    s.train_loader.set_epoch(epoch)
    s.model.train()
    steps_per_epoch = len(s.train_loader)
    total_steps, warmup = cfg["epochs"] * steps_per_epoch, cfg["warmup_epochs"] * steps_per_epoch
    sums = torch.zeros(2, device=s.device, dtype=torch.float64)  # loss x samples, correct
    bar = bar or Progress(rid, cfg["epochs"], steps_per_epoch, enabled=False)
    bar.start_epoch()
    t0 = time.perf_counter()
    seen, logged = 0, [0.0, 0.0, 0]  # logged: loss x samples, correct, samples at the last log
    local_seen = 0

    def so_far() -> tuple[float, float, float]:  # this process's loss sum, correct, samples
        return (*sums.tolist(), local_seen)

    for i, (x, y, sizes, total) in enumerate(s.train_loader.steps()):
        s.opt.record_stats, s.opt.stats = step_log is not None and (i + 1) % cfg["log_every"] == 0, None
        if cfg["channels_last"]:
            x = x.contiguous(memory_format=torch.channels_last)
        set_lr(s, lr_factor(epoch * steps_per_epoch + i, total_steps, warmup, cfg["schedule"]))
        if s.step is not None and (sizes is None or len(sizes) == 1):  # one micro-batch
            out, loss = s.step(x, y)
        else:
            out, loss = train_step(s.forward, s.opt, x, y, s.criterion, s.amp_ctx, sizes, total,
                                   ascent_model=s.ascent_forward)
        sums[0] += loss.detach().double() * y.numel()
        sums[1] += (out.detach().argmax(1) == y).sum()
        seen += total
        local_seen += y.numel()
        bar.step(epoch, i + 1, so_far)
        if (i + 1) % cfg["log_every"] == 0:
            check = sums.clone()  # one host sync every log_every steps, agreed across processes
            if s.comm is not None:
                s.comm.sum_(check)
            if not math.isfinite(float(check[0])):
                break
            if step_log is not None:
                now = [float(check[0]), float(check[1]), seen]
                step_log(epoch * steps_per_epoch + i + 1, step_scalars(s, [a - b for a, b in zip(now, logged)]))
                logged = now
    if s.device.type == "cuda":
        torch.cuda.synchronize(s.device)
    epoch_time = time.perf_counter() - t0
    bar.clear()
    if s.comm is not None:
        s.comm.sum_(sums)
    n_train = s.train_loader.samples_per_epoch
    return {"train_loss": float(sums[0]) / n_train, "train_acc": 100.0 * float(sums[1]) / n_train,
            "epoch_time_s": epoch_time}


def finish_epoch(setup: Setup, cfg: dict, rid: str, run_dir: Path, epoch: int, stats: dict,
                 state: TrainState, t_start: float, log, run_loggers: loggers.Loggers) -> dict:
    """Evaluate, append the epoch to metrics.jsonl, write checkpoint.pt (rank 0), then log the epoch
    to the run's loggers; return its metrics."""
    import torch

    test_loss, test_acc = evaluate(setup.ascent_forward, setup.test_loader, setup.eval_criterion, setup.amp_ctx,
                                   setup.comm)
    state.epoch_times.append(stats["epoch_time_s"])
    last = {"epoch": epoch + 1, "train_loss": stats["train_loss"], "train_acc": stats["train_acc"],
            "test_loss": test_loss, "test_acc": test_acc, **validate(setup), "lr": setup.base.param_groups[0]["lr"],
            "epoch_time_s": stats["epoch_time_s"], "perturbed_fraction": setup.opt.perturbed_fraction,
            "threads": torch.get_num_threads()}
    state.metrics.append(last)
    state.epoch = epoch + 1
    if _writes(setup.comm):
        io.write_jsonl(run_dir / "metrics.jsonl", state.metrics)
        io.save_checkpoint(run_dir / "checkpoint.pt", {
            "run_id": rid, "epoch": epoch + 1, "elapsed": state.elapsed + time.perf_counter() - t_start,
            "epoch_times": state.epoch_times, "metrics": state.metrics, "threads_used": state.threads_used,
            "model": setup.model.state_dict(), "optimizer": setup.opt.state_dict()})
    run_loggers.log_epoch(last)
    log(f"[{rid}] epoch {epoch + 1}/{cfg['epochs']}  train loss {stats['train_loss']:.4f} "
        f"acc {stats['train_acc']:.2f}  test loss {test_loss:.4f} acc {test_acc:.2f}"
        + (f"  val loss {last['val_loss']:.4f} acc {last['val_acc']:.2f}" if "val_acc" in last else "")
        + f"  {stats['epoch_time_s']:.1f}s")
    if setup.comm is not None:
        setup.comm.barrier()  # the checkpoint is complete before any process goes on (a dead rank 0: an error)
    return last


def validate(setup: Setup) -> dict:
    """``{val_loss, val_acc}`` on the held-out validation split (val_split), evaluated like the test
    set; ``{}`` without one."""
    if setup.val_loader is None:
        return {}
    val_loss, val_acc = evaluate(setup.ascent_forward, setup.val_loader, setup.eval_criterion, setup.amp_ctx,
                                 setup.comm)
    return {"val_loss": val_loss, "val_acc": val_acc}


def validation_summary(setup: Setup, metrics: list[dict], last: dict) -> dict:
    """result.json's validation numbers: the last epoch's ``val_acc``/``val_loss``, and early stopping by
    validation (a selection on held-out data, named as one): ``best_val_epoch`` (the first epoch with
    the highest val_acc), its ``best_val_acc`` and the test numbers at that epoch
    (``test_acc_at_best_val``, ``test_loss_at_best_val``); ``{}`` without a validation split."""
    if setup.val_loader is None:
        return {}
    scored = [m for m in metrics if isinstance(m.get("val_acc"), float) and math.isfinite(m["val_acc"])]
    best = max(scored, key=lambda m: m["val_acc"], default={})  # max keeps the first of equal values
    return {"val_acc": last.get("val_acc"), "val_loss": last.get("val_loss"), "best_val_acc": best.get("val_acc"),
            "best_val_epoch": best.get("epoch"), "test_acc_at_best_val": best.get("test_acc"),
            "test_loss_at_best_val": best.get("test_loss"), "val_size": setup.val_loader.num_samples}


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
        "best_test_acc": max((m["test_acc"] for m in state.metrics), default=None),  # the oracle's early stop
        **validation_summary(setup, state.metrics, last),
        "epochs": last.get("epoch", 0),
        "wall_time_s": state.elapsed + time.perf_counter() - t_start,
        "seconds_per_epoch": sum(times) / len(times) if times else None,
        "n_params": setup.n_params,
        "n_perturbed": setup.opt.n_perturbed,
        "perturbed_fraction": setup.opt.perturbed_fraction,
        "threads_used": state.threads_used,
        "world_size": config.world_size(cfg),
        "backend": None if setup.comm is None else setup.comm.backend,
        "env": env.environment(setup.device),
        "config": cfg,
        "variant_options": config.variant_options(cfg),
    }
    if setup.opt.scaler is not None:
        result["skipped_steps"] = setup.opt.scaler.skipped  # fp16 steps skipped for an overflow
    if setup.step is not None:
        result["fast_step"] = setup.step.describe()
    if cfg["save_gamma"]:
        gammas = norm_gammas(setup.model)
        if gammas:
            result["norm_gamma"] = gammas
    return result
