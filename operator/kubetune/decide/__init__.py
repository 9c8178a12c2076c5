"""Pure reconciliation decisions: no kopf, no Kubernetes client, no S3, no clock.

A handler reads the objects, builds the inputs (`TaskObject`, `ModelObject`,
`observe_job` for each Job, `Defaults`), calls `decide_task` or `decide_model` with the
current time, applies the returned actions in order, then writes the returned status
(only if it differs from what it read) and records the events. See `actions` for how
each action is applied and what to do when one fails.
"""

from kubetune.decide.actions import (
    Action,
    CopyCheckpoint,
    CreateJob,
    DeleteJob,
    DeleteStorage,
    DropIterations,
    Event,
    ModelAction,
    ModelDecision,
    ReserveIteration,
    TaskDecision,
    UpdateLineage,
    VerifyCheckpoint,
    WriteManifest,
)
from kubetune.decide.context import experiment_name
from kubetune.decide.inputs import Defaults, ModelObject, ObservedJob, TaskObject
from kubetune.decide.lineage import apply_to_model, decide_model, deletion_actions, needs_finalizer
from kubetune.decide.observe import (
    events_needed,
    observe_job,
    pods_needed,
    progress_to_read,
    results_to_read,
)
from kubetune.decide.sampling import GridSampler, RandomSampler, Sampler, sampler_for
from kubetune.decide.task import action_failed, best_trial, decide_task, invalid_spec

__all__ = [
    "Action",
    "CopyCheckpoint",
    "CreateJob",
    "Defaults",
    "DeleteJob",
    "DeleteStorage",
    "DropIterations",
    "Event",
    "GridSampler",
    "ModelAction",
    "ModelDecision",
    "ModelObject",
    "ObservedJob",
    "RandomSampler",
    "ReserveIteration",
    "Sampler",
    "TaskDecision",
    "TaskObject",
    "UpdateLineage",
    "VerifyCheckpoint",
    "WriteManifest",
    "action_failed",
    "apply_to_model",
    "best_trial",
    "decide_model",
    "decide_task",
    "deletion_actions",
    "events_needed",
    "experiment_name",
    "invalid_spec",
    "needs_finalizer",
    "observe_job",
    "pods_needed",
    "progress_to_read",
    "results_to_read",
    "sampler_for",
]
