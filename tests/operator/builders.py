"""Small builders for the operator's unit tests, and `World`: a fake cluster and bucket
that applies decisions the way the handlers will, so whole task lifecycles (and crashes
between any two steps) run in milliseconds."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any

from kubetune.api import (
    FineTuningTaskSpec,
    FineTuningTaskStatus,
    StorageSpec,
    TunedModelSpec,
    TunedModelStatus,
)
from kubetune.contract import TrialResult
from kubetune.decide import (
    CopyCheckpoint,
    CreateJob,
    Defaults,
    DeleteJob,
    DeleteStorage,
    DropIterations,
    ModelObject,
    ObservedJob,
    ReserveIteration,
    TaskDecision,
    TaskObject,
    UpdateLineage,
    VerifyCheckpoint,
    WriteManifest,
    apply_to_model,
    decide_task,
)

NOW = datetime(2025, 1, 1, 12, 0, tzinfo=UTC)
NAMESPACE = "team"
DEFAULTS = Defaults(
    storage=StorageSpec(bucket="models", prefix="kubetune"),
    trainer_image="ghcr.io/kubetune/trainer:test",
    mlflow_tracking_uri="http://mlflow:5000",
)


def task_spec(**overrides: Any) -> FineTuningTaskSpec:
    document: dict[str, Any] = {
        "modelRef": {"name": "minilm"},
        "dataset": {"train": ["s3://data/train.jsonl"]},
        "hyperparameters": {
            "searchSpace": [
                {"name": "learningRate", "categorical": {"values": [1e-5, 5e-5]}},
                {"name": "batchSize", "categorical": {"values": [32, 64]}},
            ],
            "parallelTrials": 2,
        },
    }
    document.update(overrides)
    return FineTuningTaskSpec.model_validate(document)


def task(
    spec: FineTuningTaskSpec | None = None,
    status: FineTuningTaskStatus | None = None,
    generation: int = 1,
    name: str = "tune",
) -> TaskObject:
    return TaskObject(
        name=name,
        namespace=NAMESPACE,
        uid="uid-1234",
        generation=generation,
        spec=spec or task_spec(),
        status=status or FineTuningTaskStatus(),
    )


def model(status: TunedModelStatus | None = None, retention: int = 1) -> ModelObject:
    return ModelObject(
        name="minilm",
        namespace=NAMESPACE,
        generation=1,
        resource_version="7",
        spec=TunedModelSpec(base_model="/models/all-MiniLM-L6-v2", retention=retention),
        status=status or TunedModelStatus(),
    )


def result(job: ObservedJob, checkpoint_uri: str, value: float) -> TrialResult:
    return TrialResult.model_validate(
        {
            "trial": {
                "namespace": NAMESPACE,
                "task": "tune",
                "lineage": "minilm",
                "iteration": 1,
                "index": job.trial_index,
                "name": job.name,
            },
            "objective": {"metric": "ndcg@10", "direction": "maximize"},
            "value": value,
            "baseline_value": 0.8,
            "metrics": {"ndcg@10": value},
            "baseline_metrics": {"ndcg@10": 0.8},
            "parameters": {},
            "steps": 10,
            "epochs": 1.0,
            "train_samples": 100,
            "eval_queries": 10,
            "eval_corpus": 20,
            "samples_per_second": 50.0,
            "train_seconds": 2.0,
            "wall_seconds": 3.0,
            "checkpoint_uri": checkpoint_uri,
            "base_model": "/models/all-MiniLM-L6-v2",
            "train_data": ["s3://data/train.jsonl"],
            "validation_data": None,
            "eval_max_seq_length": 128,
            "device": "cpu",
            "mlflow_run_id": f"run-{job.trial_index}",
            "trainer_version": "test",
        }
    )


def apply_merge_patch(document: dict[str, Any], patch: dict[str, Any]) -> dict[str, Any]:
    """What the apiserver does with a JSON merge patch (RFC 7386): nulls remove."""
    merged = dict(document)
    for key, value in patch.items():
        if value is None:
            merged.pop(key, None)
        elif isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = apply_merge_patch(merged[key], value)
        else:
            merged[key] = value
    return merged


class Crash(Exception):
    pass


@dataclass
class World:
    """A task, its model, its Jobs and a bucket, changed only through decisions."""

    spec: FineTuningTaskSpec = field(default_factory=task_spec)
    status: FineTuningTaskStatus = field(default_factory=FineTuningTaskStatus)
    model: ModelObject | None = field(default_factory=model)
    jobs: dict[str, ObservedJob] = field(default_factory=dict)
    objects: set[str] = field(default_factory=set)
    manifests: dict[str, dict[str, Any]] = field(default_factory=dict)
    created: list[str] = field(default_factory=list)
    clock: datetime = NOW
    generation: int = 1

    def task(self) -> TaskObject:
        return task(self.spec, self.status, self.generation)

    def reconcile(self, crash_before_status: bool = False) -> TaskDecision:
        self.clock += timedelta(seconds=1)
        decision = decide_task(
            self.task(), self.model, list(self.jobs.values()), DEFAULTS, self.clock
        )
        for action in decision.actions:
            self.apply(action)
        if crash_before_status:
            raise Crash()
        self.status = decision.status
        return decision

    def apply(self, action: object) -> None:
        if isinstance(action, CreateJob):
            if action.name not in self.jobs:
                self.created.append(action.name)
                labels = action.manifest["metadata"]["labels"]
                self.jobs[action.name] = ObservedJob(
                    name=action.name,
                    trial_index=action.trial_index,
                    attempt=int(labels["kubetune.dev/attempt"]),
                    phase="Pending",
                )
        elif isinstance(action, DeleteJob):
            self.jobs.pop(action.name, None)
        elif isinstance(action, ReserveIteration | UpdateLineage | DropIterations):
            assert self.model is not None
            self.model = replace(self.model, status=apply_to_model(self.model.status, action))
        elif isinstance(action, CopyCheckpoint):
            for key in [k for k in self.objects if k.startswith(action.source_uri)]:
                self.objects.add(action.target_uri + key[len(action.source_uri) :])
        elif isinstance(action, VerifyCheckpoint):
            source = {
                k[len(action.source_uri) :] for k in self.objects if k.startswith(action.source_uri)
            }
            target = {
                k[len(action.target_uri) :] for k in self.objects if k.startswith(action.target_uri)
            }
            assert source and source <= target, "verification failed"
        elif isinstance(action, WriteManifest):
            self.objects.add(action.uri)
            self.manifests[action.uri] = action.document
        elif isinstance(action, DeleteStorage):
            self.objects = {k for k in self.objects if not k.startswith(action.uri)}
        else:
            raise AssertionError(f"unexpected action {action}")

    def finish(self, name: str, value: float | None) -> None:
        """The Job ends: Succeeded with a checkpoint and a result, or Failed (None)."""
        job = self.jobs[name]
        trial = next(t for t in self.status.trials if t.name == name)
        if value is None:
            self.jobs[name] = replace(
                job, phase="Failed", exit_code=3, termination_message="TrainingFailed: nan loss"
            )
            return
        for part in ("config.json", "model.safetensors"):
            self.objects.add(trial.checkpoint_uri + part)
        self.jobs[name] = replace(
            job, phase="Succeeded", result=result(job, trial.checkpoint_uri, value)
        )

    def settle(self, limit: int = 50) -> None:
        """Reconcile until a decision has no actions and asks for no requeue."""
        for _ in range(limit):
            decision = self.reconcile()
            if not decision.actions and decision.requeue_after != 0:
                return
        raise AssertionError("did not settle")
