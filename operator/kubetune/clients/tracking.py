"""MLflow: one experiment per FineTuningTask, one run per trial.

The operator creates the experiment (so the task's status can link it before any trainer
starts) and each trial's run (so a retried pod logs into the same run instead of a new
one). Trainers log into the run whose id they are given.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from mlflow.entities import RunStatus
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient


class TrackingError(RuntimeError):
    """The tracking server could not be reached or refused a request."""


class Tracking:
    def __init__(self, tracking_uri: str) -> None:
        self.uri = tracking_uri
        self._client = MlflowClient(tracking_uri)

    def ensure_experiment(self, name: str, tags: dict[str, str]) -> str:
        try:
            existing = self._client.get_experiment_by_name(name)
            if existing is not None:
                return str(existing.experiment_id)
            return str(self._client.create_experiment(name, tags=tags))
        except MlflowException as error:
            # A concurrent create of the same name: read what won.
            existing = self._client.get_experiment_by_name(name)
            if existing is not None:
                return str(existing.experiment_id)
            raise TrackingError(f"experiment {name!r}: {error}") from error

    def ensure_run(self, experiment_id: str, run_name: str, tags: dict[str, str]) -> str:
        """The run named ``run_name`` in the experiment, created if it does not exist yet."""
        try:
            found = self._client.search_runs(
                [experiment_id], filter_string=f"attributes.run_name = '{run_name}'", max_results=1
            )
            if found:
                return str(found[0].info.run_id)
            run = self._client.create_run(experiment_id, run_name=run_name, tags=tags)
            return str(run.info.run_id)
        except MlflowException as error:
            raise TrackingError(f"run {run_name!r}: {error}") from error

    def finish_run(self, run_id: str, succeeded: bool) -> None:
        status = RunStatus.to_string(RunStatus.FINISHED if succeeded else RunStatus.FAILED)
        try:
            run = self._client.get_run(run_id)
            if run.info.status in ("FINISHED", "FAILED", "KILLED"):
                return
            self._client.set_terminated(run_id, status=status)
        except MlflowException as error:
            raise TrackingError(f"finishing run {run_id}: {error}") from error

    def metric_history(self, run_id: str, key: str) -> list[tuple[int, float]]:
        try:
            return [(m.step, m.value) for m in self._client.get_metric_history(run_id, key)]
        except MlflowException as error:
            raise TrackingError(f"history of {key} in run {run_id}: {error}") from error

    def log_summary(
        self, experiment_id: str, run_name: str, tags: dict[str, str], files: dict[str, bytes]
    ) -> str:
        """Write `files` as artifacts of the experiment's summary run (created once)."""
        run_id = self.ensure_run(experiment_id, run_name, tags)
        try:
            for name, content in files.items():
                with tempfile.TemporaryDirectory() as directory:
                    path = Path(directory) / name
                    path.write_bytes(content)
                    self._client.log_artifact(run_id, str(path))
            self.finish_run(run_id, succeeded=True)
        except MlflowException as error:
            raise TrackingError(f"summary of experiment {experiment_id}: {error}") from error
        return run_id

    def experiment_url(self, experiment_id: str) -> str:
        return f"{self.uri.rstrip('/')}/#/experiments/{experiment_id}"
