"""Condition types, reasons and the one helper that sets a condition.

Tools read conditions; people read `FineTuningTask.status.phase`, which `task_phase`
derives from them, so the two can never disagree. `set_condition` follows the Kubernetes
convention: `lastTransitionTime` moves only when the status flips, `observedGeneration` is
stamped every time, and the return value says whether anything changed.
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from kubetune.api.base import Condition

ConditionStatus = Literal["True", "False", "Unknown"]
Phase = Literal["Pending", "Running", "Succeeded", "Failed", "Canceled"]
PHASES: tuple[Phase, ...] = ("Pending", "Running", "Succeeded", "Failed", "Canceled")
TERMINAL_PHASES: frozenset[Phase] = frozenset({"Succeeded", "Failed", "Canceled"})

# FineTuningTask condition types.
INPUTS_READY = "InputsReady"
"""The model, storage and spec are usable; False says what the operator could not resolve."""
RUNNING = "Running"
"""Trials are running or the winner is being promoted."""
SUCCEEDED = "Succeeded"
"""The best trial was promoted and the superseded artifacts are gone."""
FAILED = "Failed"
"""The task ended without a promotion; the reason says why."""
CANCELED = "Canceled"
"""The task was suspended while it ran; its Jobs were deleted."""

# TunedModel condition types.
READY = "Ready"
"""The lineage has a promoted iteration that can be served."""

# Reasons.
REASON_RESOLVED = "Resolved"
REASON_MODEL_NOT_FOUND = "ModelNotFound"
REASON_STORAGE_NOT_CONFIGURED = "StorageNotConfigured"
REASON_INVALID_SPEC = "InvalidSpec"
REASON_ACTION_FAILED = "ActionFailed"
"""An operation on the cluster, S3 or MLflow failed; it is retried with backoff."""
REASON_SUSPENDED = "Suspended"
REASON_STARTED = "Started"
REASON_TRIALS_RUNNING = "TrialsRunning"
REASON_PROMOTING = "Promoting"
REASON_PROMOTED = "Promoted"
REASON_PROMOTION_FAILED = "PromotionFailed"
REASON_MAX_FAILED_TRIALS = "MaxFailedTrialsReached"
REASON_NO_SUCCESSFUL_TRIAL = "NoSuccessfulTrial"
REASON_RESTARTED = "Restarted"
REASON_NO_ITERATION = "NoPromotedIteration"
REASON_GOAL_REACHED = "GoalReached"
"""A trial reached `objective.goal`: no further trials start."""
REASON_EARLY_STOPPED = "EarlyStopped"
"""A trial's intermediate metric was worse than the median of the completed trials'."""


def get_condition(conditions: list[Condition], type_: str) -> Condition | None:
    return next((c for c in conditions if c.type == type_), None)


def is_true(conditions: list[Condition], type_: str) -> bool:
    condition = get_condition(conditions, type_)
    return condition is not None and condition.status == "True"


def set_condition(
    conditions: list[Condition],
    type_: str,
    status: ConditionStatus,
    reason: str,
    message: str,
    generation: int | None,
    now: datetime,
) -> bool:
    """Set one condition in place; True when anything about it changed."""
    current = get_condition(conditions, type_)
    if current is None:
        conditions.append(
            Condition(
                type=type_,
                status=status,
                reason=reason,
                message=message,
                last_transition_time=now,
                observed_generation=generation,
            )
        )
        return True
    changed = (current.status, current.reason, current.message, current.observed_generation) != (
        status,
        reason,
        message,
        generation,
    )
    if current.status != status:
        current.last_transition_time = now
    current.status = status
    current.reason = reason
    current.message = message
    current.observed_generation = generation
    return changed


_PHASE_BY_TERMINAL_CONDITION: tuple[tuple[str, Phase], ...] = (
    (CANCELED, "Canceled"),
    (FAILED, "Failed"),
    (SUCCEEDED, "Succeeded"),
)


def task_phase(conditions: list[Condition]) -> Phase:
    """The one-word phase of a FineTuningTask, derived from its conditions."""
    for type_, phase in _PHASE_BY_TERMINAL_CONDITION:
        if is_true(conditions, type_):
            return phase
    return "Running" if is_true(conditions, RUNNING) else "Pending"
