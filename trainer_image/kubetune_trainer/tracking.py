"""Reporting a trial while it runs: log lines, the progress file, and MLflow.

The training loop and the trial report to one `Observer` interface; each destination is an
implementation. Reporting never decides the trial's outcome: an unreachable MLflow server
logs a warning and MLflow is switched off for the rest of the trial, because `result.json`,
not MLflow, is what the operator reads. Without a tracking URI (in the config or
`MLFLOW_TRACKING_URI`) there is no MLflow at all.

MLflow metric names cannot contain '@', so `ndcg@10` is logged as `eval/ndcg_at_10`.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from kubetune.contract import (
    Evaluation,
    TrialConfig,
    TrialProgress,
    TrialResult,
    mlflow_eval_metric,
)
from kubetune_trainer.errors import StorageError
from kubetune_trainer.storage import Storage

log = logging.getLogger(__name__)

Phase = Literal["starting", "baseline", "training", "exporting", "done"]


@dataclass(frozen=True)
class LogPoint:
    """Training figures at a logging step; rates are over the steps since the previous one."""

    step: int
    total_steps: int
    epoch: float
    loss: float
    learning_rate: float
    samples_per_second: float
    tokens_per_second: float
    eta_seconds: float


class Observer:
    """Receives a trial's events; every hook does nothing unless overridden."""

    def on_phase(self, phase: Phase, total_steps: int) -> None:
        """The trial entered `phase`."""

    def on_baseline(self, metrics: dict[str, float]) -> None:
        """The starting model's evaluation."""

    def on_log(self, point: LogPoint) -> None:
        """A logging step of the training loop."""

    def on_eval(self, step: int, metrics: dict[str, float]) -> None:
        """An evaluation during or at the end of training."""

    def on_result(self, result: TrialResult) -> None:
        """The trial succeeded."""

    def on_failure(self, error: BaseException) -> None:
        """The trial failed."""


class Observers(Observer):
    """Fans every event out to several observers, in order."""

    def __init__(self, observers: Sequence[Observer]) -> None:
        self.observers = list(observers)

    def on_phase(self, phase: Phase, total_steps: int) -> None:
        for observer in self.observers:
            observer.on_phase(phase, total_steps)

    def on_baseline(self, metrics: dict[str, float]) -> None:
        for observer in self.observers:
            observer.on_baseline(metrics)

    def on_log(self, point: LogPoint) -> None:
        for observer in self.observers:
            observer.on_log(point)

    def on_eval(self, step: int, metrics: dict[str, float]) -> None:
        for observer in self.observers:
            observer.on_eval(step, metrics)

    def on_result(self, result: TrialResult) -> None:
        for observer in self.observers:
            observer.on_result(result)

    def on_failure(self, error: BaseException) -> None:
        for observer in self.observers:
            observer.on_failure(error)


def format_metrics(metrics: dict[str, float]) -> str:
    return " ".join(f"{name} {value:.4f}" for name, value in metrics.items())


class LogObserver(Observer):
    """Progress lines in the log: at most one every `min_interval` seconds, and the last."""

    def __init__(
        self, min_interval: float = 10.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.min_interval = min_interval
        self.clock = clock
        self._last: float | None = None

    def on_phase(self, phase: Phase, total_steps: int) -> None:
        fields = {"phase": phase, "total_steps": total_steps}
        log.info("phase %s (%d steps)", phase, total_steps, extra={"fields": fields})

    def on_baseline(self, metrics: dict[str, float]) -> None:
        fields = {"evaluation": "baseline", "metrics": metrics}
        log.info("baseline: %s", format_metrics(metrics), extra={"fields": fields})

    def on_log(self, point: LogPoint) -> None:
        now = self.clock()
        last = point.step == point.total_steps
        if not last and self._last is not None and now - self._last < self.min_interval:
            return
        self._last = now
        log.info(
            "step %d/%d (%.0f%%) epoch %.2f loss %.4f lr %.2e %.1f samples/s %.0f tokens/s eta %s",
            point.step,
            point.total_steps,
            100 * point.step / point.total_steps,
            point.epoch,
            point.loss,
            point.learning_rate,
            point.samples_per_second,
            point.tokens_per_second,
            timedelta(seconds=round(point.eta_seconds)),
            extra={"fields": asdict(point)},  # the same figures, as numbers, in JSON lines
        )

    def on_eval(self, step: int, metrics: dict[str, float]) -> None:
        fields = {"evaluation": "step", "step": step, "metrics": metrics}
        log.info("eval at step %d: %s", step, format_metrics(metrics), extra={"fields": fields})

    def on_failure(self, error: BaseException) -> None:
        log.error("trial failed: %s", error)


class ProgressObserver(Observer):
    """Keeps the `TrialProgress` document at `uri` current: on every phase and evaluation,
    and at logging steps at most every `min_interval` seconds."""

    def __init__(
        self,
        storage: Storage,
        uri: str,
        trial: str,
        min_interval: float = 15.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.storage = storage
        self.uri = uri
        self.min_interval = min_interval
        self.clock = clock
        self._last: float | None = None
        self._progress = TrialProgress(
            trial=trial, phase="starting", step=0, total_steps=0, epoch=0.0, updated_at=_now()
        )

    def _write(self, **changes: Any) -> None:
        self._progress = self._progress.model_copy(update=changes | {"updated_at": _now()})
        self._last = self.clock()
        try:
            self.storage.put_json(self.uri, self._progress.model_dump(mode="json"))
        except StorageError as error:
            log.warning("cannot write progress: %s", error)

    def on_phase(self, phase: Phase, total_steps: int) -> None:
        self._write(phase=phase, total_steps=total_steps)

    def on_baseline(self, metrics: dict[str, float]) -> None:
        self._write(baseline_metrics=metrics)

    def on_log(self, point: LogPoint) -> None:
        changes = {
            "step": point.step,
            "total_steps": point.total_steps,
            "epoch": point.epoch,
            "loss": point.loss,
            "learning_rate": point.learning_rate,
            "samples_per_second": point.samples_per_second,
            "eta_seconds": point.eta_seconds,
        }
        if self._last is not None and self.clock() - self._last < self.min_interval:
            self._progress = self._progress.model_copy(update=changes)
            return
        self._write(**changes)

    def on_eval(self, step: int, metrics: dict[str, float]) -> None:
        evaluations = [*self._progress.evaluations, Evaluation(step=step, metrics=metrics)]
        self._write(step=step, metrics=metrics, evaluations=evaluations)

    def on_result(self, result: TrialResult) -> None:
        self._write(phase="done", step=result.steps, metrics=result.metrics, eta_seconds=0.0)


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def flatten(
    document: dict[str, Any], prefix: str = ""
) -> dict[str, str | int | float | bool | None]:
    """`{"a": {"b": 1}}` -> `{"a.b": 1}`; lists become comma-separated text."""
    flat: dict[str, str | int | float | bool | None] = {}
    for key, value in document.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat |= flatten(value, f"{name}.")
        elif isinstance(value, list):
            flat[name] = ",".join(map(str, value))
        else:
            flat[name] = value
    return flat


def trial_parameters(config: TrialConfig) -> dict[str, str | int | float | bool | None]:
    """The resolved settings that shape the model, flattened: MLflow params and the result's."""
    return flatten(
        config.model_dump(mode="json", exclude={"schema_version", "trial", "output", "mlflow"})
    )


def run_url(tracking_uri: str, experiment_id: str, run_id: str) -> str:
    """Where the MLflow UI shows the run (a server's URI), else the store and the run."""
    if tracking_uri.startswith(("http://", "https://")):
        return f"{tracking_uri.rstrip('/')}/#/experiments/{experiment_id}/runs/{run_id}"
    return f"{run_id} in {tracking_uri}"


def _mlflow_name(name: str) -> str:
    return name.replace("@", "_at_")


class MlflowObserver(Observer):
    """One MLflow run per trial, under the task's experiment (or the operator's run_id)."""

    def __init__(self, config: TrialConfig, tracking_uri: str, resume_run_id: str | None) -> None:
        import mlflow

        self.mlflow = mlflow
        self.active = True
        mlflow.set_tracking_uri(tracking_uri)
        run_id = config.mlflow.run_id or resume_run_id
        tags = {
            "kubetune.namespace": config.trial.namespace,
            "kubetune.task": config.trial.task,
            "kubetune.lineage": config.trial.lineage,
            "kubetune.iteration": str(config.trial.iteration),
            "kubetune.trial": config.trial.name,
        } | config.mlflow.tags
        system_metrics = _importable("psutil")
        if run_id is not None:
            run = mlflow.start_run(run_id=run_id, log_system_metrics=system_metrics)
        else:
            mlflow.set_experiment(config.experiment_name)
            run = mlflow.start_run(
                run_name=config.mlflow.run_name or config.trial.name,
                tags=tags,
                log_system_metrics=system_metrics,
            )
        self.run_id: str = run.info.run_id
        if run_id is None:
            mlflow.log_params(trial_parameters(config))
        else:
            mlflow.set_tags(tags)
        log.info("MLflow run: %s", run_url(tracking_uri, run.info.experiment_id, self.run_id))

    def _call(self, action: Callable[[], object]) -> None:
        from mlflow.exceptions import MlflowException

        if not self.active:
            return
        try:
            action()
        except (MlflowException, OSError) as error:
            self.active = False
            log.warning("MLflow failed, continuing without it: %s", error)

    def on_baseline(self, metrics: dict[str, float]) -> None:
        values = {f"baseline/{_mlflow_name(k)}": v for k, v in metrics.items()}
        values |= {mlflow_eval_metric(k): v for k, v in metrics.items()}
        self._call(lambda: self.mlflow.log_metrics(values, step=0))

    def on_log(self, point: LogPoint) -> None:
        values = {
            "train/loss": point.loss,
            "train/learning_rate": point.learning_rate,
            "train/epoch": point.epoch,
            "train/samples_per_second": point.samples_per_second,
            "train/tokens_per_second": point.tokens_per_second,
        }
        self._call(lambda: self.mlflow.log_metrics(values, step=point.step))

    def on_eval(self, step: int, metrics: dict[str, float]) -> None:
        values = {mlflow_eval_metric(k): v for k, v in metrics.items()}
        self._call(lambda: self.mlflow.log_metrics(values, step=step))

    def on_result(self, result: TrialResult) -> None:
        summary = {
            "result/samples_per_second": result.samples_per_second,
            "result/train_seconds": result.train_seconds,
            "result/wall_seconds": result.wall_seconds,
            "result/improvement": result.improvement,
        }

        def finish() -> None:
            self.mlflow.log_metrics(summary, step=result.steps)
            self.mlflow.set_tag("kubetune.checkpoint_uri", result.checkpoint_uri)
            self.mlflow.log_dict(result.model_dump(mode="json"), "result.json")

        self._call(finish)
        self._call(lambda: self.mlflow.end_run("FINISHED"))

    def on_failure(self, error: BaseException) -> None:
        self._call(lambda: self.mlflow.set_tag("kubetune.error", str(error)[:5000]))
        self._call(lambda: self.mlflow.end_run("FAILED"))


def _importable(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


def mlflow_tracking_uri(config: TrialConfig) -> str | None:
    """Where to track: the config's URI, else `MLFLOW_TRACKING_URI`, else nowhere."""
    return config.mlflow.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or None
