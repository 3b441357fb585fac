"""Weights & Biases (the ``wandb`` extra): one W&B run per sambench run, resumed by id."""
from __future__ import annotations

import hashlib

from bench.loggers.base import Logger


def wandb_run_id(run_id: str, suite: str | None, restarts: int = 0) -> str:
    """The W&B run id: the run id, plus a short hash of the suite (one config may be in two
    suites), plus ``-r<n>`` after the n-th restart from an earlier epoch (W&B steps only grow)."""
    wid = run_id if not suite else f"{run_id}-{hashlib.sha1(suite.encode()).hexdigest()[:6]}"
    return f"{wid}-r{restarts}" if restarts else wid


# the epoch scalars' tags (bench.loggers.base.TAGS), drawn against "epoch" when W&B counts training steps
EPOCH_PATTERNS = ("train/*", "test/*", "time/*", "lr", "perturbed_fraction", "threads")


class WandbLogger(Logger):
    """A W&B run: name = run id, group = suite, id derived from the run id (resumed after a requeue).

    Its step is the epoch, or, when the run says how many training steps an epoch has, the
    training step (per-step scalars every ``log_every`` steps; an epoch's line at its last step)."""

    name = "wandb"

    def __init__(self, opts: dict):
        self.opts = opts

    def start(self, ctx, state):
        import wandb

        run_id = state.setdefault("wandb_id", wandb_run_id(ctx["run_id"], ctx["suite"], state.get("restarts", 0)))
        settings = wandb.Settings(silent=True, console="off")
        self.run = wandb.init(
            project=self.opts["project"], entity=self.opts["entity"], mode=self.opts["mode"],
            tags=list(self.opts["tags"]) or None, id=run_id, name=ctx["run_id"], group=ctx["suite"],
            resume="allow", dir=str(ctx["run_dir"]), settings=settings,
            config={k: v for k, v in ctx["config"].items() if k != "logging"})
        self.steps_per_epoch = ctx.get("steps_per_epoch")
        if self.steps_per_epoch:  # W&B steps are training steps: epoch scalars drawn against "epoch"
            self.run.define_metric("epoch")
            for pattern in EPOCH_PATTERNS:
                self.run.define_metric(pattern, step_metric="epoch")

    def log_epoch(self, epoch, scalars):
        step = epoch * self.steps_per_epoch if self.steps_per_epoch else epoch
        self.run.log({**scalars, "epoch": epoch}, step=step)

    def log_step(self, step, scalars):
        self.run.log(scalars, step=step)

    def log_final(self, hparams, final, step):
        self.log_summary(final, step)

    def log_summary(self, scalars, step):
        for key, value in scalars.items():
            self.run.summary[key] = value

    def finish(self, status):
        import wandb

        self.run.finish(exit_code=0 if status in ("done", "diverged") else 1)
        wandb.teardown()  # wait for W&B's service to write out the run's files
