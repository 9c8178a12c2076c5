"""Status of a `FineTuningTask`: everything the operator needs to resume an attempt.

Written only by the operator (through the status subresource). Each trial, the winner,
the promotion's progress and the MLflow links live here, never in operator memory.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from pydantic import Field

from kubetune.api.base import (
    ApiModel,
    Conditions,
    DnsLabel,
    Message,
    ParamMap,
    ShortText,
    Uri,
)
from kubetune.api.conditions import Phase
from kubetune.api.finetuningtask import MAX_TRIALS, MAX_WARM_START
from kubetune.contract import Metric

TrialPhase = Literal["Pending", "Running", "Succeeded", "Failed", "Canceled", "Pruned"]
SuggestionOrigin = Literal["grid", "random", "tpe", "warm-start"]
MAX_EVALUATIONS = 100
"""Intermediate evaluations kept per trial (the latest ones)."""


class StepValue(ApiModel):
    """The objective metric at one evaluation step of a trial."""

    step: int = Field(ge=0, description="The training step.")
    value: float = Field(description="The objective metric's value.")


class PrunedAt(ApiModel):
    """Where early stopping stopped a trial."""

    step: int = Field(ge=0, description="The evaluation step it was stopped at.")
    value: float = Field(description="Its objective metric at that step.")
    median: float = Field(description="The completed trials' median at that step.")


class TrialStatus(ApiModel):
    """One trial: one hyperparameter set, one Job."""

    index: int = Field(ge=0, description="Index of the trial within the attempt.")
    name: DnsLabel = Field(description="The trial's name, also its Job's name.")
    parameters: ParamMap = Field(
        default_factory=dict, description="The searched hyperparameters of this trial."
    )
    origin: SuggestionOrigin | None = Field(
        default=None,
        description="Where the parameters came from: `grid`, `random` (also TPE's startup "
        "draws), `tpe`, or `warm-start` (a previous iteration's best set).",
    )
    phase: TrialPhase = Field(
        description="Pending, Running, Succeeded, Failed, Canceled or Pruned (stopped early)."
    )
    reason: ShortText | None = Field(
        default=None,
        description="Why it failed, was canceled or pruned, in CamelCase; while Pending, why "
        "its Pod does not run yet (`Suspended`: queued in Kueue; `FailedCreate`: refused by "
        "admission, e.g. a quota; `Unschedulable`; `ImagePullBackOff`, ...).",
    )
    message: Message | None = Field(
        default=None,
        description="The trainer's termination message, on failure; while Pending, what "
        "Kubernetes said about the Pod.",
    )
    exit_code: int | None = Field(default=None, description="The trainer's exit code.")
    metric: float | None = Field(default=None, description="The objective metric's value.")
    baseline: float | None = Field(
        default=None, description="The objective metric of the starting model."
    )
    metrics: Annotated[dict[ShortText, float], Field(max_length=32)] | None = Field(
        default=None, description="All evaluation metrics after training."
    )
    evaluations: Annotated[list[StepValue], Field(max_length=MAX_EVALUATIONS)] | None = Field(
        default=None,
        description="The objective metric at each intermediate evaluation (with "
        "`earlyStopping`), read from the trainer's progress file.",
    )
    pruned: PrunedAt | None = Field(
        default=None, description="For a pruned trial: the step and value it was stopped at."
    )
    checkpoint_uri: Uri = Field(description="Where the trial writes its checkpoint.")
    mlflow_run_id: ShortText | None = Field(default=None, description="The MLflow run.")
    started_at: datetime | None = Field(default=None, description="When the Job started.")
    finished_at: datetime | None = Field(default=None, description="When the Job ended.")


class TrialCounts(ApiModel):
    """Trial counts of the current attempt."""

    total: int = Field(default=0, ge=0, description="Trials the attempt will run at most.")
    created: int = Field(default=0, ge=0, description="Trials started so far.")
    running: int = Field(default=0, ge=0, description="Trials pending or running.")
    succeeded: int = Field(default=0, ge=0, description="Trials that succeeded.")
    failed: int = Field(default=0, ge=0, description="Trials that failed.")
    canceled: int = Field(default=0, ge=0, description="Trials stopped by the operator.")
    pruned: int = Field(default=0, ge=0, description="Trials stopped early as hopeless.")
    done: int = Field(default=0, ge=0, description="Trials that ended, for any reason.")


class BestTrial(ApiModel):
    """The winning trial."""

    index: int = Field(ge=0, description="Its index.")
    name: DnsLabel = Field(description="Its name.")
    metric: Metric = Field(description="The objective metric.")
    value: float = Field(description="The objective metric's value.")


PromotionStep = Literal[
    "Copy", "Verify", "WriteManifest", "PointLineage", "DeleteLosers", "DeleteSuperseded", "Done"
]
PROMOTION_STEPS: tuple[PromotionStep, ...] = (
    "Copy",
    "Verify",
    "WriteManifest",
    "PointLineage",
    "DeleteLosers",
    "DeleteSuperseded",
    "Done",
)


class PromotionStatus(ApiModel):
    """Progress of the winner's promotion; each step is recorded before the next starts,
    so a restarted operator resumes at the step that did not finish."""

    step: PromotionStep = Field(description="The next step to perform.")
    source_uri: Uri = Field(description="The winning trial's checkpoint.")
    target_uri: Uri = Field(description="The iteration's model directory.")
    manifest_uri: Uri = Field(description="The iteration's manifest, written last.")
    verify_failures: int = Field(
        default=0, ge=0, description="Verifications that found the copy incomplete."
    )
    started_at: datetime = Field(description="When the promotion started.")


class MlflowStatus(ApiModel):
    """Where the attempt is tracked."""

    experiment_name: ShortText = Field(description="The attempt's MLflow experiment.")
    experiment_id: ShortText | None = Field(default=None, description="Its id.")


class WarmStartStatus(ApiModel):
    """The parameter sets the attempt re-runs first, fixed when it starts."""

    iteration: int = Field(ge=1, description="The promoted iteration they come from.")
    parameters: Annotated[list[ParamMap], Field(max_length=MAX_WARM_START)] = Field(
        default_factory=list, description="The sets, best first; trial i runs set i."
    )


class FineTuningTaskStatus(ApiModel):
    """What the task has done so far; everything the operator needs to resume."""

    observed_generation: int | None = Field(
        default=None, ge=0, description="The generation the status was computed for."
    )
    phase: Phase | None = Field(
        default=None, description="Pending, Running, Succeeded, Failed or Canceled."
    )
    conditions: Conditions = Field(
        default_factory=list,
        description="InputsReady, Running, Succeeded, Failed and Canceled.",
    )
    attempt: int = Field(default=0, ge=0, description="Attempts started (0: not started).")
    observed_restart_generation: int = Field(
        default=0, ge=0, description="The `spec.restartGeneration` the attempt answers."
    )
    iteration: int | None = Field(
        default=None, ge=1, description="The lineage iteration this attempt produces."
    )
    starting_model: Uri | None = Field(default=None, description="The model trials start from.")
    starting_iteration: int | None = Field(
        default=None, ge=1, description="The iteration started from; unset: the base model."
    )
    scratch_uri: Uri | None = Field(
        default=None, description="Prefix of the trials' checkpoints, deleted at the end."
    )
    warm_start: WarmStartStatus | None = Field(
        default=None, description="The previous iteration's sets the first trials re-run."
    )
    trials: Annotated[list[TrialStatus], Field(max_length=MAX_TRIALS)] = Field(
        default_factory=list, description="One entry per trial started."
    )
    trials_summary: Annotated[str, Field(max_length=16)] | None = Field(
        default=None, description="Trials done/total, for `kubectl get`."
    )
    counts: TrialCounts = Field(default_factory=TrialCounts, description="Trial counts.")
    best_trial: BestTrial | None = Field(default=None, description="The best trial so far.")
    promotion: PromotionStatus | None = Field(
        default=None, description="Progress of the promotion."
    )
    promoted_uri: Uri | None = Field(
        default=None, description="The promoted model, once the lineage points at it."
    )
    mlflow: MlflowStatus | None = Field(default=None, description="MLflow tracking.")
    started_at: datetime | None = Field(default=None, description="When the attempt started.")
    finished_at: datetime | None = Field(default=None, description="When the attempt ended.")
