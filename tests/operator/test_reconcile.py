"""The reconciler's reads: what one reconcile asks the apiserver, against an in-memory
cluster that logs every call."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from kubetune.config import OperatorConfig
from kubetune.decide import (
    CreateJob,
    DeleteJob,
    ModelObject,
    ReserveIteration,
    apply_to_model,
)
from kubetune.decide.actions import Action
from kubetune.locations import ResolvedStorage
from kubetune.patch import merge_patch
from kubetune.reconcile import Reconciler, Written
from tests.operator.builders import (
    DEFAULTS,
    NAMESPACE,
    apply_merge_patch,
    model,
    task_spec,
)


class Cluster:
    """Stands in for both the apiserver (`Kube`) and `Effects`: one task, its TunedModel and
    its Jobs, with every call logged in order."""

    def __init__(self) -> None:
        spec = task_spec().model_dump(mode="json", by_alias=True, exclude_none=True)
        lineage = model()
        self.objects: dict[str, dict[str, Any]] = {
            "finetuningtasks": {
                "metadata": {"name": "tune", "namespace": NAMESPACE, "uid": "u1", "generation": 1},
                "spec": spec,
            },
            "tunedmodels": {
                "metadata": {"name": lineage.name, "namespace": NAMESPACE, "resourceVersion": "7"},
                "spec": lineage.spec.model_dump(mode="json", by_alias=True, exclude_none=True),
                "status": {},
            },
        }
        self.jobs: dict[str, dict[str, Any]] = {}
        self.calls: list[str] = []

    # -- Kube
    def get(self, plural: str, namespace: str, name: str) -> dict[str, Any] | None:
        self.calls.append(f"get {plural}")
        return self.objects[plural]

    def task_jobs(self, namespace: str, task: str) -> list[dict[str, Any]]:
        self.calls.append("list jobs")
        return list(self.jobs.values())

    def task_pods(self, namespace: str, task: str) -> list[dict[str, Any]]:
        self.calls.append("list pods")
        return []

    def pod_creation_failures(self, namespace: str, job: str) -> list[dict[str, Any]]:
        self.calls.append(f"list events of {job}")
        return [{"reason": "FailedCreate", "message": f"{job}: exceeded quota"}]

    def patch_status(
        self, plural: str, namespace: str, name: str, status_patch: dict[str, Any]
    ) -> dict[str, Any]:
        self.calls.append(f"patch {plural}/status")
        self.objects[plural] = apply_merge_patch(self.objects[plural], {"status": status_patch})
        return self.objects[plural]

    # -- Effects
    def preflight(self, namespace: str, storage: ResolvedStorage) -> None:
        self.calls.append("preflight")

    def apply(self, namespace: str, action: Action) -> dict[str, Any] | None:
        self.calls.append(type(action).__name__)
        if isinstance(action, CreateJob):
            self.jobs[action.name] = action.manifest
        elif isinstance(action, DeleteJob):
            self.jobs.pop(action.name, None)
        elif isinstance(action, ReserveIteration):
            body = self.objects["tunedmodels"]
            old = ModelObject.from_body(body).status
            new = apply_to_model(old, action)
            body = apply_merge_patch(body, {"status": merge_patch(old.to_json(), new.to_json())})
            body["metadata"]["resourceVersion"] = str(int(body["metadata"]["resourceVersion"]) + 1)
            self.objects["tunedmodels"] = body
            return body
        return None

    def read_json(self, namespace: str, storage: ResolvedStorage, uri: str) -> Any | None:
        self.calls.append("read")
        return None


def _reconciler(cluster: Cluster) -> Reconciler:
    config = OperatorConfig(defaults=replace(DEFAULTS, mlflow_tracking_uri=None))
    return Reconciler(cluster, cluster, config, lambda *event: None)  # type: ignore[arg-type]


def test_a_new_task_lists_its_jobs_once_before_creating_the_first() -> None:
    cluster = Cluster()
    _reconciler(cluster).task(NAMESPACE, "tune")
    first_create = cluster.calls.index("CreateJob")
    assert cluster.calls[:first_create] == [
        "get finetuningtasks",
        "get tunedmodels",
        "list jobs",
        "ReserveIteration",
        "patch finetuningtasks/status",
        "preflight",
    ]
    assert len(cluster.jobs) == 2


def test_a_round_that_creates_jobs_leaves_the_next_round_to_list_them() -> None:
    cluster = Cluster()
    reconciler = _reconciler(cluster)
    delay, written = reconciler._task_round(NAMESPACE, "tune", Written())
    assert (delay, written.jobs) == (0, [])
    delay, written = reconciler._task_round(NAMESPACE, "tune", written)
    assert "CreateJob" in cluster.calls
    assert written.jobs is None


def test_a_trial_whose_job_has_no_pod_reads_the_jobs_events() -> None:
    cluster = Cluster()
    reconciler = _reconciler(cluster)
    written = Written()
    for _ in range(3):
        _, written = reconciler._task_round(NAMESPACE, "tune", written)
    last_round = cluster.calls[cluster.calls.index("list pods") - 1 :]
    assert last_round[:4] == [
        "list jobs",
        "list pods",
        "list events of tune-t0",
        "list events of tune-t1",
    ]
    trials = cluster.objects["finetuningtasks"]["status"]["trials"]
    assert [(t["phase"], t["reason"], t["message"]) for t in trials] == [
        ("Pending", "FailedCreate", "tune-t0: exceeded quota"),
        ("Pending", "FailedCreate", "tune-t1: exceeded quota"),
    ]
