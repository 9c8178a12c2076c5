"""Trials that fail, tasks that are canceled, and an operator that is killed mid-task."""

from __future__ import annotations

import time
from pathlib import Path

from kubernetes import client

from devcluster.audit import successful_creates
from devcluster.processes import is_alive
from devcluster.state import ClusterInfo
from tests.conftest import Kubectl
from tests.e2e.fixtures import (
    E2eData,
    OperatorProcess,
    apply,
    fine_tuning_task,
    get,
    tuned_model,
    wait_phase,
)
from tests.support import wait_for


def _precision_task(name: str, data: E2eData, max_failed: int) -> dict:  # type: ignore[type-arg]
    """Two trials; fp16 on a CPU is bad input to the trainer, so that trial fails."""
    task = fine_tuning_task(name, "minilm", data, [1e-4])
    task["spec"]["hyperparameters"]["searchSpace"].append(
        {"name": "precision", "categorical": {"values": ["fp32", "fp16"]}}
    )
    task["spec"]["hyperparameters"]["maxFailedTrials"] = max_failed
    return task


def test_a_failed_trial_is_recorded_and_the_limit_decides_the_task(
    kubectl: Kubectl, tenant: str, e2e_data: E2eData
) -> None:
    apply(
        kubectl,
        tenant,
        tuned_model("minilm", e2e_data.base_model),
        _precision_task("tolerant", e2e_data, 1),
        _precision_task("strict", e2e_data, 0),
    )
    tolerant = wait_phase(kubectl, tenant, "tolerant", {"Succeeded", "Failed"})["status"]
    assert tolerant["phase"] == "Succeeded", tolerant
    failed = [t for t in tolerant["trials"] if t["phase"] == "Failed"]
    assert len(failed) == 1
    assert failed[0]["parameters"]["precision"] == "fp16"
    assert failed[0]["exitCode"] == 2
    assert "fp16 needs a CUDA device" in failed[0]["message"]

    strict = wait_phase(kubectl, tenant, "strict", {"Succeeded", "Failed"})["status"]
    assert strict["phase"] == "Failed", strict
    failed_condition = next(c for c in strict["conditions"] if c["type"] == "Failed")
    assert failed_condition["reason"] == "MaxFailedTrialsReached"
    model = get(kubectl, tenant, "tunedmodel", "minilm")["status"]
    assert model["currentIteration"]["sourceTask"] == "tolerant"


def _running_pids(core: client.CoreV1Api, namespace: str) -> list[int]:
    pids = []
    for pod in core.list_namespaced_pod(namespace).items:
        statuses = pod.status.container_statuses or []
        if pod.status.phase == "Running" and statuses and statuses[0].container_id:
            pids.append(int(statuses[0].container_id.removeprefix("devcluster://")))
    return pids


def test_cancel_stops_running_trainings(
    kubectl: Kubectl,
    tenant: str,
    e2e_data: E2eData,
    core: client.CoreV1Api,
    batch: client.BatchV1Api,
) -> None:
    task = fine_tuning_task("cancelme", "minilm", e2e_data, [1e-5, 1e-4])
    task["spec"]["hyperparameters"]["fixed"]["maxSteps"] = 10_000
    apply(kubectl, tenant, tuned_model("minilm", e2e_data.base_model), task)
    pids = wait_for(
        lambda: (p := _running_pids(core, tenant)) and len(p) == 2 and p,
        "two trainers running",
        timeout=120,
    )
    task["spec"]["suspend"] = True
    apply(kubectl, tenant, task)
    status = wait_phase(kubectl, tenant, "cancelme", {"Canceled"}, timeout=120)["status"]
    assert {t["phase"] for t in status["trials"]} == {"Canceled"}
    wait_for(lambda: not any(is_alive(p) for p in pids), "trainer processes killed", 60)
    wait_for(lambda: not batch.list_namespaced_job(tenant).items, "Jobs deleted", 60)


def test_killing_the_operator_mid_task_changes_nothing(
    kubectl: Kubectl,
    tenant: str,
    e2e_data: E2eData,
    operator: OperatorProcess,
    batch: client.BatchV1Api,
    devcluster: ClusterInfo,
) -> None:
    apply(
        kubectl,
        tenant,
        tuned_model("minilm", e2e_data.base_model),
        fine_tuning_task("survivor", "minilm", e2e_data, [1e-5, 5e-5, 1e-4]),
    )
    for jobs_seen in (1, 2, 3):
        wait_for(
            lambda n=jobs_seen: len(batch.list_namespaced_job(tenant).items) >= n,
            f"{jobs_seen} Jobs",
            timeout=300,
        )
        operator.kill()
        time.sleep(2)
        operator.start()
    status = wait_phase(kubectl, tenant, "survivor", {"Succeeded", "Failed"})["status"]
    assert status["phase"] == "Succeeded", status
    names = sorted(t["name"] for t in status["trials"])
    assert len(names) == 3
    # The audit log is the ground truth: every trial's Job was created exactly once.
    creates = successful_creates(Path(devcluster.state_dir), "jobs", tenant)
    assert creates == dict.fromkeys(names, 1), creates
