"""TensorBoard: event files in the run folder (on by default); per-step scalars in its ``steps/``."""
from __future__ import annotations

from bench.loggers.base import Logger


class TensorBoardLogger(Logger):
    """Event files in the run folder (``tensorboard --logdir <suite folder>`` shows every run).

    Epoch scalars are at step = epoch; the per-step scalars (step = training step) go to the run
    folder's ``steps/`` (shown as the run ``<run id>/steps``), so that a resume's purge of epochs
    past the last logged one never touches them, and theirs is by step."""

    name = "tensorboard"
    STEPS = "steps"

    def start(self, ctx, state):
        from torch.utils.tensorboard import SummaryWriter

        last = int(state.get("logged_epoch", 0))
        # a resumed run: anything a kill left past the last logged epoch is dropped by the reader
        # (with no state file, every earlier event: the history is logged again)
        resumed = last or ctx["resumed"]
        self.writer = SummaryWriter(log_dir=str(ctx["run_dir"]), purge_step=last + 1 if resumed else None)
        self.steps_dir, self.step_writer = ctx["run_dir"] / self.STEPS, None
        self.step_purge = int(state.get("logged_step", 0)) + 1 if resumed else None

    def log_epoch(self, epoch, scalars):
        for tag, value in scalars.items():
            self.writer.add_scalar(tag, value, global_step=epoch)
        self.writer.flush()
        if self.step_writer is not None:
            self.step_writer.flush()

    def log_step(self, step, scalars):
        if self.step_writer is None:  # opened at the first step: runs that log none have no steps/
            from torch.utils.tensorboard import SummaryWriter

            self.step_writer = SummaryWriter(log_dir=str(self.steps_dir), purge_step=self.step_purge)
        for tag, value in scalars.items():
            self.step_writer.add_scalar(tag, value, global_step=step)

    def log_final(self, hparams, final, step):
        from torch.utils.tensorboard.summary import hparams as hparams_summary

        values = {k: (str(v) if isinstance(v, bool) or not isinstance(v, (int, float, str)) else v)
                  for k, v in hparams.items()}
        for summary in hparams_summary(values, final):
            self.writer.file_writer.add_summary(summary)
        for tag, value in final.items():
            self.writer.add_scalar(tag, value, global_step=step)
        self.writer.flush()

    def log_summary(self, scalars, step):
        for tag, value in scalars.items():
            self.writer.add_scalar(tag, value, global_step=step)
        self.writer.flush()

    def finish(self, status):
        if self.step_writer is not None:
            self.step_writer.close()
        self.writer.close()
