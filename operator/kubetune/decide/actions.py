"""What a decision asks the handlers to do, as plain values.

Handlers apply the actions of a decision in order and write the decision's status only
after all of them succeeded; every action is idempotent (creating what exists or deleting
what is gone is success), so a crash before the status write just repeats them. When an
action fails, the handler writes `decide.action_failed(...)` instead and retries later.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from kubetune.api import FineTuningTaskStatus, PromotedIteration, TunedModelStatus
from kubetune.locations import ResolvedStorage


@dataclass(frozen=True)
class ReserveIteration:
    """Set `TunedModel.status.lastIteration` to `iteration`, conditional on the model's
    resourceVersion (a conflict means another task reserved first: reconcile again)."""

    model: str
    iteration: int
    resource_version: str


@dataclass(frozen=True)
class CreateJob:
    """Create the trial's Job; AlreadyExists is success (the name is deterministic)."""

    name: str
    trial_index: int
    manifest: dict[str, Any] = field(compare=False)


@dataclass(frozen=True)
class DeleteJob:
    """Delete a Job and its Pods (propagationPolicy Background); NotFound is success."""

    name: str


@dataclass(frozen=True)
class CopyCheckpoint:
    """Server-side copy of every object under `source_uri` to `target_uri`."""

    source_uri: str
    target_uri: str
    storage: ResolvedStorage


@dataclass(frozen=True)
class VerifyCheckpoint:
    """Check that every object under `source_uri` exists under `target_uri` with the same
    size; a mismatch is reported as a failure of this action."""

    source_uri: str
    target_uri: str
    storage: ResolvedStorage


@dataclass(frozen=True)
class WriteManifest:
    """Write `document` as JSON to `uri`: the marker of a complete iteration."""

    uri: str
    document: dict[str, Any] = field(compare=False)
    storage: ResolvedStorage | None = None


@dataclass(frozen=True)
class UpdateLineage:
    """Point the TunedModel at `entry` (`decide.apply_to_model` computes the new status)."""

    model: str
    entry: PromotedIteration


@dataclass(frozen=True)
class DeleteStorage:
    """Delete every object under the prefix `uri`."""

    uri: str
    storage: ResolvedStorage
    why: str


@dataclass(frozen=True)
class DropIterations:
    """Remove deleted iterations from the TunedModel's history."""

    model: str
    iterations: tuple[int, ...]


Action = (
    ReserveIteration
    | CreateJob
    | DeleteJob
    | CopyCheckpoint
    | VerifyCheckpoint
    | WriteManifest
    | UpdateLineage
    | DeleteStorage
    | DropIterations
)
ModelAction = ReserveIteration | UpdateLineage | DropIterations
"""Actions that change `TunedModel.status`: apply them with `decide.apply_to_model`."""


@dataclass(frozen=True)
class Event:
    """A Kubernetes Event to record on the object after the decision is applied."""

    type: Literal["Normal", "Warning"]
    reason: str
    message: str


@dataclass(frozen=True)
class TaskDecision:
    """The outcome of `decide.decide_task`.

    `requeue_after`: seconds until the handler should reconcile again even if nothing
    changes (0: at once, more work is ready); None: wait for the next watch event.
    """

    actions: tuple[Action, ...]
    status: FineTuningTaskStatus
    events: tuple[Event, ...] = ()
    requeue_after: float | None = None


@dataclass(frozen=True)
class ModelDecision:
    """The outcome of `decide.decide_model`."""

    actions: tuple[Action, ...]
    status: TunedModelStatus
    events: tuple[Event, ...] = ()
