"""The working state of one task reconcile, shared by `task` and `promotion`.

It holds the inputs, the status being rewritten, the actions and events collected so far,
and the few operations both modules need: ending the attempt, stopping Jobs, building a
trial's Job.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime

from kubetune.api import FineTuningTaskStatus, TrialStatus
from kubetune.api import conditions as c
from kubetune.decide.actions import Action, CreateJob, DeleteJob, DeleteStorage, Event, TaskDecision
from kubetune.decide.inputs import Defaults, ModelObject, ObservedJob, TaskObject
from kubetune.decide.trialconfig import build_trial_config
from kubetune.locations import ResolvedStorage, baseline_uri, resolve_storage
from kubetune.manifests import job_manifest

ACTIVE_TRIAL_PHASES = ("Pending", "Running")
MESSAGE_LIMIT = 4096


def experiment_name(namespace: str, model: str, iteration: int) -> str:
    """The MLflow experiment of one iteration of a lineage."""
    return f"{namespace}/{model}/iteration-{iteration}"


def recount(status: FineTuningTaskStatus) -> None:
    """Recompute `counts` (keeping the planned total) and `trialsSummary` from `trials`."""
    phases = [t.phase for t in status.trials]
    counts = status.counts
    counts.created = len(phases)
    counts.running = sum(p in ACTIVE_TRIAL_PHASES for p in phases)
    counts.succeeded = phases.count("Succeeded")
    counts.failed = phases.count("Failed")
    counts.canceled = phases.count("Canceled")
    counts.pruned = phases.count("Pruned")
    counts.done = counts.succeeded + counts.failed + counts.canceled + counts.pruned
    status.trials_summary = f"{counts.done}/{counts.total}"


@dataclass
class Reconcile:
    task: TaskObject
    model: ModelObject | None
    jobs: Sequence[ObservedJob]
    defaults: Defaults
    now: datetime
    status: FineTuningTaskStatus
    actions: list[Action] = field(default_factory=list)
    events: list[Event] = field(default_factory=list)
    requeue_after: float | None = None

    @property
    def storage(self) -> ResolvedStorage | None:
        if self.model is None:
            return None
        return resolve_storage(self.model.spec.storage, self.defaults.storage)

    def condition(self, type_: str, status: c.ConditionStatus, reason: str, message: str) -> bool:
        return c.set_condition(
            self.status.conditions, type_, status, reason, message, self.task.generation, self.now
        )

    def event(self, warning: bool, reason: str, message: str) -> None:
        self.events.append(Event("Warning" if warning else "Normal", reason, message))

    def requeue(self, seconds: float) -> None:
        if self.requeue_after is None or seconds < self.requeue_after:
            self.requeue_after = seconds

    def job(self, name: str) -> ObservedJob | None:
        return next((j for j in self.jobs if j.name == name), None)

    def create_job(self, trial: TrialStatus) -> None:
        """Build the trial's config and Job; raises `pydantic.ValidationError` if invalid."""
        model, storage, status = self.model, self.storage, self.status
        assert model is not None and storage is not None
        assert status.iteration is not None and status.starting_model is not None
        spec = self.task.spec
        config = build_trial_config(
            spec=spec,
            namespace=self.task.namespace,
            task=self.task.name,
            model=model.name,
            iteration=status.iteration,
            index=trial.index,
            name=trial.name,
            parameters=trial.parameters,
            starting_model=status.starting_model,
            checkpoint_uri=trial.checkpoint_uri,
            experiment=status.mlflow.experiment_name if status.mlflow else None,
            baseline_uri=baseline_uri(status.scratch_uri) if status.scratch_uri else None,
        )
        manifest = job_manifest(
            config=config,
            task_uid=self.task.uid,
            model=model.name,
            attempt=status.attempt,
            trainer=spec.trainer.model_copy(
                update={
                    "image_pull_policy": spec.trainer.image_pull_policy
                    or self.defaults.trainer_image_pull_policy,
                    "service_account_name": spec.trainer.service_account_name
                    or self.defaults.trainer_service_account,
                }
            ),
            image=spec.trainer.image or self.defaults.trainer_image,
            storage=storage,
            tracking_uri=self.defaults.mlflow_tracking_uri,
            log_format=self.defaults.log_format,
        )
        self.actions.append(CreateJob(name=trial.name, trial_index=trial.index, manifest=manifest))

    def stop_active_trials(self, reason: str) -> None:
        """Delete the Jobs of unfinished trials and mark those trials Canceled."""
        for trial in self.status.trials:
            if trial.phase not in ACTIVE_TRIAL_PHASES:
                continue
            job = self.job(trial.name)
            if job is not None and not job.deleting:
                self.actions.append(DeleteJob(trial.name))
            trial.phase = "Canceled"
            trial.reason = reason
            trial.finished_at = self.now

    def end(self, type_: str, reason: str, message: str) -> None:
        """End the attempt without a promotion: stop trials, delete the scratch prefix,
        set the terminal condition."""
        self.stop_active_trials(reason)
        storage = self.storage
        if self.status.scratch_uri and storage is not None:
            self.actions.append(
                DeleteStorage(uri=self.status.scratch_uri, storage=storage, why=reason)
            )
        self.condition(type_, "True", reason, message)
        self.condition(c.RUNNING, "False", reason, message)
        self.status.finished_at = self.now
        self.event(type_ != c.CANCELED, reason, message)

    def decision(self) -> TaskDecision:
        status = self.status
        status.observed_generation = self.task.generation
        status.phase = c.task_phase(status.conditions)
        if status.attempt > 0:
            recount(status)
        return TaskDecision(
            actions=tuple(self.actions),
            status=status,
            events=tuple(self.events),
            requeue_after=self.requeue_after,
        )
