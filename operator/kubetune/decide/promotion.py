"""Promotion of the winning trial, as a crash-safe state machine.

    Copy -> Verify -> WriteManifest -> PointLineage -> DeleteLosers -> DeleteSuperseded -> Done

Each reconcile performs the action of the recorded step and records the next step with
it; the handler writes that status only after the action succeeded. A crash between any
two steps therefore repeats the unfinished step, and every step is idempotent. The
lineage points at a checkpoint only after it was copied, verified and sealed with its
manifest; losers and superseded iterations are deleted only after that.
"""

from __future__ import annotations

from typing import Any

from kubetune.api import PromotedIteration, PromotionStatus, PromotionStep, TrialStatus
from kubetune.api import conditions as c
from kubetune.decide.actions import (
    CopyCheckpoint,
    DeleteJob,
    DeleteStorage,
    UpdateLineage,
    VerifyCheckpoint,
    WriteManifest,
)
from kubetune.decide.context import Reconcile
from kubetune.decide.lineage import retention_actions
from kubetune.decide.warmstart import top_trials
from kubetune.locations import iteration_uri, lineage_root, manifest_uri, model_uri

MAX_VERIFY_FAILURES = 3
_NEEDS_MODEL: frozenset[PromotionStep] = frozenset(
    {"Copy", "Verify", "WriteManifest", "PointLineage"}
)


def start(r: Reconcile, winner: TrialStatus) -> None:
    """Record the promotion's plan; its first step runs in the next reconcile."""
    model, storage, status = r.model, r.storage, r.status
    assert model is not None and storage is not None and status.iteration is not None
    prefix = iteration_uri(lineage_root(storage, r.task.namespace, model.name), status.iteration)
    status.promotion = PromotionStatus(
        step="Copy",
        source_uri=winner.checkpoint_uri,
        target_uri=model_uri(prefix),
        manifest_uri=manifest_uri(prefix),
        started_at=r.now,
    )
    message = f"promoting trial {winner.name} ({winner.metric}) to iteration {status.iteration}"
    r.condition(c.RUNNING, "True", c.REASON_PROMOTING, message)
    r.event(False, c.REASON_PROMOTING, message)
    r.requeue(0)


def _winner(r: Reconcile) -> TrialStatus:
    best = r.status.best_trial
    assert best is not None
    return next(t for t in r.status.trials if t.index == best.index)


def _manifest(r: Reconcile, winner: TrialStatus) -> dict[str, Any]:
    """What the iteration is, written beside it last; enough to reproduce it."""
    spec, status, model = r.task.spec, r.status, r.model
    assert model is not None and status.promotion is not None
    return {
        "schemaVersion": 1,
        "namespace": r.task.namespace,
        "lineage": model.name,
        "iteration": status.iteration,
        "uri": status.promotion.target_uri,
        "baseModel": model.spec.base_model,
        "startingModel": status.starting_model,
        "startingIteration": status.starting_iteration,
        "sourceTask": r.task.name,
        "sourceTrial": winner.name,
        "attempt": status.attempt,
        "method": spec.method.to_json(),
        "loss": spec.loss.to_json() if spec.loss else None,
        "fixedHyperparameters": spec.hyperparameters.fixed.to_json()
        if spec.hyperparameters.fixed
        else {},
        "parameters": winner.parameters,
        "objective": {**spec.objective.to_json(), "value": winner.metric},
        "baseline": winner.baseline,
        "metrics": winner.metrics or {},
        "dataset": spec.dataset.to_json(),
        "mlflowRunId": winner.mlflow_run_id,
    }


def advance(r: Reconcile) -> None:
    """Perform the recorded step and record the next one."""
    promotion = r.status.promotion
    assert promotion is not None
    storage = r.storage
    if promotion.step in _NEEDS_MODEL and (r.model is None or storage is None):
        reason = c.REASON_MODEL_NOT_FOUND
        r.end(c.FAILED, reason, f"TunedModel {r.task.spec.model_ref.name} is gone; not promoted")
        return
    if promotion.verify_failures >= MAX_VERIFY_FAILURES:
        r.end(
            c.FAILED,
            c.REASON_PROMOTION_FAILED,
            f"the copy of {promotion.source_uri} failed verification "
            f"{promotion.verify_failures} times",
        )
        return
    winner = _winner(r)
    step = promotion.step
    if step == "Copy":
        assert storage is not None
        r.actions.append(CopyCheckpoint(promotion.source_uri, promotion.target_uri, storage))
        promotion.step = "Verify"
    elif step == "Verify":
        assert storage is not None
        r.actions.append(VerifyCheckpoint(promotion.source_uri, promotion.target_uri, storage))
        promotion.step = "WriteManifest"
    elif step == "WriteManifest":
        r.actions.append(WriteManifest(promotion.manifest_uri, _manifest(r, winner), storage))
        promotion.step = "PointLineage"
    elif step == "PointLineage":
        _point_lineage(r, winner)
    elif step == "DeleteLosers":
        _delete_losers(r, winner)
    elif step == "DeleteSuperseded":
        _delete_superseded(r)
    if promotion.step != "Done":
        r.requeue(0)


def _point_lineage(r: Reconcile, winner: TrialStatus) -> None:
    status, model, promotion = r.status, r.model, r.status.promotion
    assert model is not None and promotion is not None and status.iteration is not None
    assert winner.metric is not None
    entry = PromotedIteration(
        iteration=status.iteration,
        uri=promotion.target_uri,
        metric=r.task.spec.objective.metric,
        value=winner.metric,
        parameters=winner.parameters,
        top_trials=top_trials(status.trials, r.task.spec.objective),
        source_task=r.task.name,
        source_trial=winner.name,
        promoted_at=r.now,
    )
    r.actions.append(UpdateLineage(model=model.name, entry=entry))
    status.promoted_uri = promotion.target_uri
    promotion.step = "DeleteLosers"
    r.event(
        False,
        c.REASON_PROMOTED,
        f"{model.name} now at iteration {status.iteration}: "
        f"{entry.metric}={entry.value:.4f} from {winner.name}",
    )


def _delete_losers(r: Reconcile, winner: TrialStatus) -> None:
    """Every trial checkpoint (the winner's was copied) and every other trial's Job."""
    status, promotion, storage = r.status, r.status.promotion, r.storage
    assert promotion is not None
    if status.scratch_uri and storage is not None:
        r.actions.append(DeleteStorage(status.scratch_uri, storage, "trial checkpoints"))
    for trial in status.trials:
        job = r.job(trial.name)
        if trial.name != winner.name and job is not None and not job.deleting:
            r.actions.append(DeleteJob(trial.name))
    promotion.step = "DeleteSuperseded"


def _delete_superseded(r: Reconcile) -> None:
    status, promotion, model, storage = r.status, r.status.promotion, r.model, r.storage
    assert promotion is not None
    if model is not None and storage is not None:
        deletions, drop = retention_actions(model.name, model.spec.retention, model.status, storage)
        r.actions += deletions
        if drop is not None:
            r.actions.append(drop)
    promotion.step = "Done"
    message = f"iteration {status.iteration} promoted: {status.promoted_uri}"
    r.condition(c.SUCCEEDED, "True", c.REASON_PROMOTED, message)
    r.condition(c.RUNNING, "False", c.REASON_PROMOTED, message)
    status.finished_at = r.now
    r.event(False, c.SUCCEEDED, message)
