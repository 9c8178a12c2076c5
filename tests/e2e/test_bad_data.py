"""Bad training data, end to end: the trainer's termination message reaches the task's
Failed condition, and the failure is not retried even when the Job allows retries."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from devcluster.audit import successful_creates
from devcluster.state import ClusterInfo
from tests.conftest import Kubectl
from tests.e2e.fixtures import (
    DATA_BUCKET,
    E2eData,
    apply,
    fine_tuning_task,
    tuned_model,
    wait_phase,
)


def test_an_empty_dataset_fails_the_task_with_the_trainers_message(
    kubectl: Kubectl, tenant: str, e2e_data: E2eData, devcluster: ClusterInfo, s3: Any
) -> None:
    key = f"{tenant}/empty.jsonl"
    s3.put_object(Bucket=DATA_BUCKET, Key=key, Body=b"")
    empty = f"s3://{DATA_BUCKET}/{key}"
    task = fine_tuning_task("empty", "minilm", e2e_data, [1e-4])
    task["spec"]["dataset"]["train"] = [empty]
    task["spec"]["trainer"]["backoffLimit"] = 2
    apply(kubectl, tenant, tuned_model("minilm", e2e_data.base_model), task)

    status = wait_phase(kubectl, tenant, "empty", {"Succeeded", "Failed"}, timeout=300)["status"]
    assert status["phase"] == "Failed", status
    (trial,) = status["trials"]
    assert trial["exitCode"] == 2, trial
    assert trial["message"] == f"BadInput: {empty}: empty file", trial
    failed = next(c for c in status["conditions"] if c["type"] == "Failed")
    assert failed["reason"] == "NoSuccessfulTrial"
    assert failed["message"] == f"all 1 trials failed; empty-t0: BadInput: {empty}: empty file"
    # Bad input is final: one Pod, although the Job would have allowed three.
    pods = successful_creates(Path(devcluster.state_dir), "pods", tenant)
    assert sum(pods.values()) == 1, pods
