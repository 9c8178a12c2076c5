"""The TunedModel side: reserving iterations, pointing the lineage at a promoted
iteration, retention, and what deleting a TunedModel removes.

`apply_to_model` is how a handler turns a model action into the TunedModel's new status;
every change is idempotent, so replaying an action after a crash changes nothing.
`decide_model` is the TunedModel's own reconcile: its Ready condition and the deletion of
iterations beyond `spec.retention` (also when the user lowers it).
"""

from __future__ import annotations

from datetime import datetime

from kubetune.api import PromotedIteration, TunedModelStatus
from kubetune.api import conditions as c
from kubetune.api.tunedmodel import MAX_HISTORY
from kubetune.decide.actions import (
    Action,
    DeleteStorage,
    DropIterations,
    Event,
    ModelAction,
    ModelDecision,
    ReserveIteration,
    UpdateLineage,
)
from kubetune.decide.inputs import Defaults, ModelObject
from kubetune.locations import ResolvedStorage, iteration_prefix_of, lineage_root, resolve_storage


def apply_to_model(status: TunedModelStatus, action: ModelAction) -> TunedModelStatus:
    """The TunedModel status after `action`; unchanged when it was applied already."""
    new = status.model_copy(deep=True)
    if isinstance(action, ReserveIteration):
        new.last_iteration = max(new.last_iteration, action.iteration)
    elif isinstance(action, UpdateLineage):
        if all(entry.iteration != action.entry.iteration for entry in new.history):
            new.history = [action.entry, *new.history][:MAX_HISTORY]
            new.current_iteration = action.entry
            new.last_iteration = max(new.last_iteration, action.entry.iteration)
    else:
        new.history = [e for e in new.history if e.iteration not in action.iterations]
    return new


def superseded(retention: int, status: TunedModelStatus) -> list[PromotedIteration]:
    """History entries beyond the retention, never the current iteration."""
    current = status.current_iteration
    return [
        entry
        for entry in status.history[retention:]
        if current is None or (entry.iteration != current.iteration and entry.uri != current.uri)
    ]


def retention_actions(
    model: str, retention: int, status: TunedModelStatus, storage: ResolvedStorage
) -> tuple[list[Action], DropIterations | None]:
    """Deletions of the superseded iterations' objects, and the history update that must
    follow them (None when nothing is superseded)."""
    old = superseded(retention, status)
    if not old:
        return [], None
    deletions: list[Action] = [
        DeleteStorage(
            uri=iteration_prefix_of(entry.uri),
            storage=storage,
            why=f"iteration {entry.iteration} is beyond the retention of {retention}",
        )
        for entry in old
    ]
    return deletions, DropIterations(model=model, iterations=tuple(e.iteration for e in old))


def decide_model(model: ModelObject, defaults: Defaults, now: datetime) -> ModelDecision:
    """Ready condition, observedGeneration and retention of one TunedModel. The returned
    status already lacks the iterations whose deletion the actions perform."""
    status = model.status.model_copy(deep=True)
    status.observed_generation = model.generation
    events: list[Event] = []
    current = status.current_iteration
    if current is None:
        c.set_condition(
            status.conditions,
            c.READY,
            "False",
            c.REASON_NO_ITERATION,
            "no iteration promoted yet; tasks start from the base model",
            model.generation,
            now,
        )
    else:
        message = f"iteration {current.iteration}: {current.metric}={current.value:.4f}"
        changed = c.set_condition(
            status.conditions, c.READY, "True", c.REASON_PROMOTED, message, model.generation, now
        )
        if changed:
            events.append(Event("Normal", c.REASON_PROMOTED, f"{message} at {current.uri}"))
    storage = resolve_storage(model.spec.storage, defaults.storage)
    actions: list[Action] = []
    if storage is not None:
        actions, drop = retention_actions(model.name, model.spec.retention, status, storage)
        if drop is not None:
            status = apply_to_model(status, drop)
    return ModelDecision(actions=tuple(actions), status=status, events=tuple(events))


def needs_finalizer(model: ModelObject) -> bool:
    """A finalizer is only needed when deleting the TunedModel must delete its storage."""
    return model.spec.delete_storage_on_delete


def deletion_actions(model: ModelObject, defaults: Defaults) -> tuple[Action, ...]:
    """What deleting the TunedModel removes: its whole storage prefix, if the spec says so."""
    storage = resolve_storage(model.spec.storage, defaults.storage)
    if not model.spec.delete_storage_on_delete or storage is None:
        return ()
    root = lineage_root(storage, model.namespace, model.name)
    return (DeleteStorage(uri=root, storage=storage, why="deleteStorageOnDelete"),)
