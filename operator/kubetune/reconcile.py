"""One reconcile of a FineTuningTask or a TunedModel: read, decide, apply, write status.

Reads are fresh (GETs and label-selected lists), the decision is the pure `decide`
function, actions go through `Effects`, and status is written as a merge patch only when
it changed. The return value is when to reconcile again (None: on the next event).
Nothing here keeps state between calls.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

from pydantic import ValidationError

from kubetune.api import FINE_TUNING_TASK, TUNED_MODEL, FineTuningTaskStatus
from kubetune.api import conditions as c
from kubetune.charts import trial_metric_chart
from kubetune.clients.kube import ConflictError, Kube
from kubetune.clients.tracking import Tracking, TrackingError
from kubetune.config import OperatorConfig
from kubetune.contract import TrialProgress, TrialResult, mlflow_eval_metric
from kubetune.decide import (
    CreateJob,
    DeleteJob,
    Event,
    ModelObject,
    ObservedJob,
    TaskObject,
    action_failed,
    decide_model,
    decide_task,
    deletion_actions,
    events_needed,
    invalid_spec,
    needs_finalizer,
    observe_job,
    pods_needed,
    progress_to_read,
    results_to_read,
)
from kubetune.effects import CopyIncompleteError, EffectError, Effects, StaleReadError
from kubetune.locations import ResolvedStorage, resolve_storage
from kubetune.logs import about
from kubetune.manifests import LABEL_TASK
from kubetune.metrics import METRICS
from kubetune.patch import merge_patch

log = logging.getLogger("kubetune")
STORAGE_FINALIZER = "kubetune.dev/delete-storage"
MAX_ROUNDS = 20
"""Decisions that want an immediate follow-up are chained, up to this many per call."""

EventSink = Callable[[dict[str, Any], str, str, str], None]
"""(object body, type, reason, message) -> records a Kubernetes Event."""


def _now() -> datetime:
    return datetime.now(UTC)


def retry_delay(status: FineTuningTaskStatus, now: datetime) -> float:
    """Backoff from how long the failure has lasted (no counter kept in memory): 5 s at
    first, then half the time it has been failing, at most 5 minutes."""
    condition = c.get_condition(status.conditions, c.INPUTS_READY)
    if condition is None or condition.status != "False":
        return 5.0
    elapsed = (now - condition.last_transition_time).total_seconds()
    return float(min(300.0, max(5.0, elapsed / 2)))


@dataclass(frozen=True)
class Written:
    """The objects a round's writes returned, as the apiserver returned them. The next round
    of the same reconcile starts from them instead of reading them again; None: read."""

    task: dict[str, Any] | None = None
    model: dict[str, Any] | None = None
    jobs: list[dict[str, Any]] | None = None
    """The task's Jobs as this reconcile listed them, while no round since created or
    deleted one. A Job's own changes after the list come as events, like any change after
    a read."""

    def model_named(self, name: str) -> dict[str, Any] | None:
        """The written TunedModel, if it is the one named (the task's modelRef may have
        changed since)."""
        if self.model is None or self.model["metadata"]["name"] != name:
            return None
        return self.model


@dataclass
class Reconciler:
    kube: Kube
    effects: Effects
    config: OperatorConfig
    record_event: EventSink

    # -- FineTuningTask --------------------------------------------------------------
    def task(self, namespace: str, name: str) -> float | None:
        started = time.monotonic()
        written = Written()
        try:
            for _ in range(MAX_ROUNDS):
                delay, written = self._task_round(namespace, name, written)
                if delay != 0:
                    return delay
            return 0.5
        finally:
            METRICS.reconcile_seconds.labels(FINE_TUNING_TASK.kind).observe(
                time.monotonic() - started
            )

    def _task_round(
        self, namespace: str, name: str, written: Written
    ) -> tuple[float | None, Written]:
        """One round: read, decide, act, write the status. Returns the delay before the next
        round (0: at once) and the objects this round's writes returned, which the next
        round uses instead of reading them again."""
        body = written.task or self.kube.get(FINE_TUNING_TASK.plural, namespace, name)
        if body is None or body["metadata"].get("deletionTimestamp"):
            METRICS.task_state(namespace, name, None)
            return None, Written()
        now = _now()
        try:
            task = TaskObject.from_body(body)
        except ValidationError as error:
            old = FineTuningTaskStatus.model_validate(body.get("status") or {})
            generation = int(body["metadata"].get("generation", 1))
            message = f"the spec cannot be used: {_first_error(error)}"
            self._write_task_status(body, old, invalid_spec(old, generation, message, now))
            return None, Written()
        model_body = written.model_named(task.spec.model_ref.name) or self.kube.get(
            TUNED_MODEL.plural, namespace, task.spec.model_ref.name
        )
        model = ModelObject.from_body(model_body) if model_body else None
        listed = written.jobs
        if listed is None:
            listed = self.kube.task_jobs(namespace, task.name)
        try:
            jobs = self._observe_jobs(task, model, listed, now)
        except EffectError as error:
            where = about(FINE_TUNING_TASK.kind, namespace, name)
            log.warning("reading trial results failed: %s", error, extra=where)
            return retry_delay(task.status, now), Written()
        experiment_id = self._experiment(task)
        decision = decide_task(
            task, model, jobs, self.config.defaults, now, experiment_id=experiment_id
        )
        status = decision.status
        events = list(decision.events)
        checked = False
        model_written: dict[str, Any] | None = None
        for action in decision.actions:
            try:
                if isinstance(action, CreateJob) and model is not None and not checked:
                    # Once per round: the trials of one round share the lineage's storage.
                    storage = resolve_storage(model.spec.storage, self.config.defaults.storage)
                    if storage is not None:
                        self.effects.preflight(namespace, storage)
                    checked = True
                model_written = self.effects.apply(namespace, action) or model_written
            except StaleReadError:
                return 0, Written()
            except EffectError as error:
                METRICS.reconcile_errors.labels(FINE_TUNING_TASK.kind).inc()
                status = action_failed(
                    task,
                    action,
                    str(error),
                    now,
                    copy_incomplete=isinstance(error, CopyIncompleteError),
                )
                events = [
                    Event("Warning", c.REASON_ACTION_FAILED, f"{type(action).__name__}: {error}")
                ]
                self._write_task_status(body, task.status, status)
                self._emit(body, events)
                return retry_delay(status, now), Written()
        task_written = self._write_task_status(body, task.status, status)
        self._emit(body, events)
        self._count(task.status, status, now)
        if status.phase == "Succeeded" and task.status.phase != "Succeeded":
            self._record_chart(task, status)
        jobs_changed = any(isinstance(a, CreateJob | DeleteJob) for a in decision.actions)
        return decision.requeue_after, Written(
            task_written, model_written, None if jobs_changed else listed
        )

    def _record_chart(self, task: TaskObject, status: FineTuningTaskStatus) -> None:
        """Best effort: the chart helps people, the task's outcome does not depend on it."""
        tracking_uri = self.config.defaults.mlflow_tracking_uri
        experiment = status.mlflow.experiment_id if status.mlflow else None
        if not tracking_uri or not experiment:
            return
        metric = task.spec.objective.metric
        try:
            tracking = Tracking(tracking_uri)
            histories = {
                t.name: tracking.metric_history(t.mlflow_run_id, mlflow_eval_metric(metric))
                for t in status.trials
                if t.mlflow_run_id
            }
            winner = status.best_trial.name if status.best_trial else None
            title = f"{task.namespace}/{task.name}: {metric} per trial"
            png = trial_metric_chart(title, metric, histories, winner)
            tracking.log_summary(
                experiment,
                f"{task.name}-summary",
                {LABEL_TASK: task.name, "kubetune.dev/kind": "summary"},
                {"trials.png": png},
            )
        except (TrackingError, OSError) as error:
            where = about(FINE_TUNING_TASK.kind, task.namespace, task.name)
            log.warning("recording the trial chart failed: %s", error, extra=where)

    def _observe_jobs(
        self,
        task: TaskObject,
        model: ModelObject | None,
        jobs: list[dict[str, Any]],
        now: datetime,
    ) -> list[ObservedJob]:
        observed = [observe_job(j) for j in jobs]
        if pods_needed(task.status, observed, now):
            by_job: dict[str, list[dict[str, Any]]] = {}
            for pod in self.kube.task_pods(task.namespace, task.name):
                job_name = (pod["metadata"].get("labels") or {}).get("job-name")
                if job_name:
                    by_job.setdefault(job_name, []).append(pod)
            events = {
                name: self.kube.pod_creation_failures(task.namespace, name)
                for name in events_needed(observed, by_job, now)
            }
            observed = [
                observe_job(
                    j, by_job.get(j["metadata"]["name"], []), events.get(j["metadata"]["name"], [])
                )
                for j in jobs
            ]
        reads = dict(results_to_read(task.status, observed))
        progress = dict(progress_to_read(task.spec, task.status, observed))
        if not (reads or progress) or model is None:
            return observed
        storage = resolve_storage(model.spec.storage, self.config.defaults.storage)
        if storage is None:
            return observed
        completed = []
        for job in observed:
            uri = reads.get(job.name)
            if uri is not None:
                job = self._read_result(task.namespace, storage, job, uri)
            progress_uri = progress.get(job.name)
            if progress_uri is not None:
                job = replace(job, progress=self._read_progress(task, storage, progress_uri))
            completed.append(job)
        return completed

    def _read_result(
        self, namespace: str, storage: ResolvedStorage, job: ObservedJob, uri: str
    ) -> ObservedJob:
        document = self.effects.read_json(namespace, storage, uri)
        if document is None:
            return replace(job, result_error=f"{uri} is missing")
        try:
            return replace(job, result=TrialResult.model_validate(document))
        except ValidationError as error:
            return replace(job, result_error=f"{uri} is invalid: {_first_error(error)}")

    def _read_progress(
        self, task: TaskObject, storage: ResolvedStorage, uri: str
    ) -> TrialProgress | None:
        """Best effort: without progress a trial is just not judged in this reconcile."""
        try:
            document = self.effects.read_json(task.namespace, storage, uri)
            return None if document is None else TrialProgress.model_validate(document)
        except (EffectError, ValueError) as error:  # ValueError: bad JSON or a bad document
            where = about(FINE_TUNING_TASK.kind, task.namespace, task.name)
            log.warning("reading %s failed: %s", uri, error, extra=where)
            return None

    def _experiment(self, task: TaskObject) -> str | None:
        """Create the attempt's MLflow experiment once its name is known."""
        tracking_uri = self.config.defaults.mlflow_tracking_uri
        mlflow = task.status.mlflow
        if not tracking_uri or mlflow is None or mlflow.experiment_id:
            return None
        try:
            return Tracking(tracking_uri).ensure_experiment(
                mlflow.experiment_name,
                {LABEL_TASK: task.name, "kubetune.dev/namespace": task.namespace},
            )
        except (TrackingError, OSError) as error:
            log.warning("MLflow experiment %s: %s", mlflow.experiment_name, error)
            return None

    def _write_task_status(
        self, body: dict[str, Any], old: FineTuningTaskStatus, new: FineTuningTaskStatus
    ) -> dict[str, Any] | None:
        """The task as the apiserver returned it after the write; None when nothing changed."""
        meta = body["metadata"]
        waiting = tuple(t.reason for t in new.trials if t.phase == "Pending" and t.reason)
        METRICS.task_state(meta["namespace"], meta["name"], new.phase, waiting)
        patch = merge_patch(old.to_json(), new.to_json())
        if not patch:
            return None
        return self.kube.patch_status(
            FINE_TUNING_TASK.plural, meta["namespace"], meta["name"], patch
        )

    def _count(self, old: FineTuningTaskStatus, new: FineTuningTaskStatus, now: datetime) -> None:
        before = {t.name: t.phase for t in old.trials}
        for trial in new.trials:
            if (
                trial.phase in ("Succeeded", "Failed", "Canceled", "Pruned")
                and before.get(trial.name) != trial.phase
            ):
                ends = (trial.started_at, trial.finished_at)
                seconds = (ends[1] - ends[0]).total_seconds() if ends[0] and ends[1] else None
                METRICS.trial_finished(trial.phase.lower(), seconds)
        if old.promotion is not None and new.phase == "Succeeded" and old.phase != "Succeeded":
            METRICS.promotion_seconds.observe((now - old.promotion.started_at).total_seconds())

    def _emit(self, body: dict[str, Any], events: list[Event]) -> None:
        for event in events:
            self.record_event(body, event.type, event.reason, event.message)

    # -- TunedModel ------------------------------------------------------------------
    def model(self, namespace: str, name: str) -> float | None:
        started = time.monotonic()
        try:
            return self._model(namespace, name)
        finally:
            METRICS.reconcile_seconds.labels(TUNED_MODEL.kind).observe(time.monotonic() - started)

    def _model(self, namespace: str, name: str) -> float | None:
        body = self.kube.get(TUNED_MODEL.plural, namespace, name)
        if body is None:
            return None
        model = ModelObject.from_body(body)
        finalizers = list(body["metadata"].get("finalizers") or [])
        if body["metadata"].get("deletionTimestamp"):
            if STORAGE_FINALIZER not in finalizers:
                return None
            try:
                for action in deletion_actions(model, self.config.defaults):
                    self.effects.apply(namespace, action)
            except EffectError as error:
                self.record_event(body, "Warning", "StorageDeletionFailed", str(error))
                return 30.0
            finalizers.remove(STORAGE_FINALIZER)
            self.kube.patch_metadata(
                TUNED_MODEL.plural,
                namespace,
                name,
                {"finalizers": finalizers, "resourceVersion": body["metadata"]["resourceVersion"]},
            )
            return None
        wanted = needs_finalizer(model)
        if wanted != (STORAGE_FINALIZER in finalizers):
            finalizers = (
                [*finalizers, STORAGE_FINALIZER]
                if wanted
                else [f for f in finalizers if f != STORAGE_FINALIZER]
            )
            self.kube.patch_metadata(
                TUNED_MODEL.plural,
                namespace,
                name,
                {"finalizers": finalizers, "resourceVersion": body["metadata"]["resourceVersion"]},
            )
            return 0.1
        decision = decide_model(model, self.config.defaults, _now())
        try:
            for action in decision.actions:
                self.effects.apply(namespace, action)
        except EffectError as error:
            self.record_event(body, "Warning", c.REASON_ACTION_FAILED, str(error))
            return 30.0
        patch = merge_patch(model.status.to_json(), decision.status.to_json())
        if patch:
            try:
                self.kube.patch_status(
                    TUNED_MODEL.plural, namespace, name, patch, body["metadata"]["resourceVersion"]
                )
            except ConflictError:
                return 0.1  # a task updated the lineage meanwhile: decide again on fresh reads
        self._emit(body, list(decision.events))
        return None


def _first_error(error: ValidationError) -> str:
    first = error.errors()[0]
    location = ".".join(str(p) for p in first["loc"])
    return f"{location}: {first['msg']}" if location else str(first["msg"])
