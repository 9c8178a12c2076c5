"""What the decision functions look at: the objects as read, the observed Jobs, and the
operator-wide defaults. Plain frozen values, built by the handlers from what the clients
read, so the decisions can be tested with literals.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from kubetune.api import (
    FineTuningTaskSpec,
    FineTuningTaskStatus,
    StorageSpec,
    TunedModelSpec,
    TunedModelStatus,
)
from kubetune.contract import TrialProgress, TrialResult


@dataclass(frozen=True)
class TaskObject:
    """A FineTuningTask as read from the apiserver."""

    name: str
    namespace: str
    uid: str
    generation: int
    spec: FineTuningTaskSpec
    status: FineTuningTaskStatus

    @classmethod
    def from_body(cls, body: Mapping[str, Any]) -> TaskObject:
        """Parse a FineTuningTask; raises `pydantic.ValidationError` for a spec the operator
        cannot use (see `decide.invalid_spec`)."""
        meta = body["metadata"]
        return cls(
            name=meta["name"],
            namespace=meta["namespace"],
            uid=meta["uid"],
            generation=int(meta.get("generation", 1)),
            spec=FineTuningTaskSpec.model_validate(body.get("spec") or {}),
            status=FineTuningTaskStatus.model_validate(body.get("status") or {}),
        )


@dataclass(frozen=True)
class ModelObject:
    """A TunedModel as read; `resource_version` makes lineage updates conditional."""

    name: str
    namespace: str
    generation: int
    resource_version: str
    spec: TunedModelSpec
    status: TunedModelStatus

    @classmethod
    def from_body(cls, body: Mapping[str, Any]) -> ModelObject:
        meta = body["metadata"]
        return cls(
            name=meta["name"],
            namespace=meta["namespace"],
            generation=int(meta.get("generation", 1)),
            resource_version=str(meta.get("resourceVersion", "")),
            spec=TunedModelSpec.model_validate(body.get("spec") or {}),
            status=TunedModelStatus.model_validate(body.get("status") or {}),
        )


JobPhase = Literal["Pending", "Running", "Succeeded", "Failed"]


@dataclass(frozen=True)
class ObservedJob:
    """One trial Job as observed (see `decide.observe_job`).

    For a Succeeded Job the handler reads the trial's `result.json` (`decide.results_to_read`
    says which) and passes it as `result`, or passes `result_error` when it is missing or
    invalid; a transient read failure should abort the reconcile instead. With early
    stopping, it also reads the progress file of running trials (`decide.progress_to_read`)
    into `progress`, leaving it None when there is none yet or it cannot be read.
    """

    name: str
    trial_index: int
    attempt: int
    phase: JobPhase
    created_at: datetime | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    exit_code: int | None = None
    reason: str | None = None
    termination_message: str | None = None
    deleting: bool = False
    waiting_reason: str | None = None
    """Why a Pending Job's Pod does not run (FailedCreate, Unschedulable, ImagePullBackOff)."""
    waiting_message: str | None = None
    result: TrialResult | None = None
    result_error: str | None = None
    progress: TrialProgress | None = None

    @property
    def active(self) -> bool:
        return self.phase in ("Pending", "Running") and not self.deleting


@dataclass(frozen=True)
class Defaults:
    """Operator-wide settings a spec may leave out."""

    storage: StorageSpec
    trainer_image: str
    mlflow_tracking_uri: str | None = None
    trainer_image_pull_policy: str | None = None
    trainer_service_account: str | None = None
    """The trainer pods' ServiceAccount (the Helm chart's, which has no API rights)."""
    log_format: str = "text"
    """The operator's log format, which its trainer pods use too."""
