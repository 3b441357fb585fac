"""MLflow (the ``mlflow`` extra): one MLflow run per sambench run, in a file store or a tracking server."""
from __future__ import annotations

import os
from pathlib import Path

from bench.loggers.base import Logger, flat_config


class MlflowLogger(Logger):
    """An MLflow run (name = run id) in the experiment named by the suite; a local file store by
    default (``<suite folder>/mlruns``, or ``<run folder>/mlruns`` for a lone run)."""

    name = "mlflow"

    def __init__(self, opts: dict):
        self.opts = opts

    def start(self, ctx, state):
        uri = self.opts["tracking_uri"] or state.get("mlflow_tracking_uri") or self.default_uri(ctx)
        if uri.startswith("file:") or "://" not in uri:
            # MLflow 3 keeps its file store in maintenance mode behind this switch; a local store
            # needs no server and takes parallel workers writing their own runs
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        from mlflow.tracking import MlflowClient

        self.client = MlflowClient(tracking_uri=uri)
        state["mlflow_tracking_uri"] = uri
        run = self._existing_run(state.get("mlflow_run_id"))
        if run is None:
            experiment = self._experiment_id(self.opts["experiment"] or ctx["suite"] or "sambench")
            run = self.client.create_run(experiment, run_name=ctx["run_id"],
                                         tags={"sambench.run_id": ctx["run_id"], "sambench.suite": ctx["suite"] or ""})
            self._log_params(run.info.run_id, ctx["config"])
            state["mlflow_run_id"] = run.info.run_id
        else:
            self.client.update_run(run.info.run_id, status="RUNNING")
        self.run_id = run.info.run_id
        self.logged = self._last_step()
        self.logged_step = self._last_step("step/loss")

    @staticmethod
    def default_uri(ctx) -> str:
        folder = Path(ctx["run_dir"]).resolve()
        if ctx["suite"]:
            folder = folder.parent
        return (folder / "mlruns").as_uri()

    def _existing_run(self, mlflow_run_id):
        if not mlflow_run_id:
            return None
        from mlflow.exceptions import MlflowException

        try:
            return self.client.get_run(mlflow_run_id)
        except MlflowException:
            return None

    def _experiment_id(self, name: str) -> str:
        from mlflow.exceptions import MlflowException

        found = self.client.get_experiment_by_name(name)
        if found is not None:
            return found.experiment_id
        try:
            return self.client.create_experiment(name)
        except MlflowException:  # another worker created it first
            return self.client.get_experiment_by_name(name).experiment_id

    def _log_params(self, run_id: str, config: dict) -> None:
        from mlflow.entities import Param

        params = [Param(k, str(v)[:6000]) for k, v in sorted(flat_config(config).items())]
        for i in range(0, len(params), 100):
            self.client.log_batch(run_id, params=params[i:i + 100])

    def _last_step(self, key: str = "epoch") -> int:
        """The last epoch (or training step) this MLflow run already holds (a kill may fall between
        log and state)."""
        history = self.client.get_metric_history(self.run_id, key)
        return max((m.step for m in history), default=0)

    def _log(self, values: dict[str, float], step: int) -> None:
        import time

        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[Metric(k, v, now, step) for k, v in values.items()])

    def log_epoch(self, epoch, scalars):
        if epoch <= self.logged:
            return
        self._log({**scalars, "epoch": float(epoch)}, epoch)
        self.logged = epoch

    def log_step(self, step, scalars):
        if step > self.logged_step:
            self._log(scalars, step)
            self.logged_step = step

    def log_final(self, hparams, final, step):
        self._log(final, step)

    def log_summary(self, scalars, step):
        self._log(scalars, step)

    def finish(self, status):
        self.client.set_terminated(self.run_id, status="FINISHED" if status in ("done", "diverged") else "FAILED")
