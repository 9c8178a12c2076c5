"""A trainer process killed mid-training (as the OOM killer or a node would): the Job
retries the trial in a new Pod, which resumes from the last resumable save instead of
starting over, and the task Succeeds with each Job created once.

SIGKILL (exit 137) is not one of the trainer's non-retryable exit codes, so the Job's
podFailurePolicy leaves it to `backoffLimit`; the default is 0, so the task asks for one
retry.
"""

from __future__ import annotations

import os
import re
import signal
from pathlib import Path
from typing import Any

from kubernetes import client

from devcluster.nodeagent.pods import pods_root
from devcluster.state import ClusterInfo
from tests.conftest import Kubectl
from tests.e2e.fixtures import E2eData, apply, fine_tuning_task, tuned_model
from tests.faults.checks import assert_recovered
from tests.support import wait_for

SAVED = re.compile(r"saved resumable state at step (\d+)")
RESUMED = re.compile(r"resuming from step (\d+)")


def _logs(devcluster: ClusterInfo, namespace: str) -> dict[Path, str]:
    """Every pod incarnation's container log in the namespace (pods are not reused)."""
    root = pods_root(Path(devcluster.state_dir))
    return {p: p.read_text(errors="replace") for p in root.glob(f"{namespace}_*/container.log")}


def _saved_and_running(core: client.CoreV1Api, devcluster: ClusterInfo, namespace: str) -> int:
    """The pid of the running trainer once it has saved resumable state, else 0."""
    if not any(SAVED.search(log) for log in _logs(devcluster, namespace).values()):
        return 0
    for pod in core.list_namespaced_pod(namespace).items:
        statuses = pod.status.container_statuses or []
        if pod.status.phase == "Running" and statuses and statuses[0].container_id:
            return int(statuses[0].container_id.removeprefix("devcluster://"))
    return 0


def test_killed_trainer_resumes_from_its_last_save(
    kubectl: Kubectl,
    tenant: str,
    e2e_data: E2eData,
    devcluster: ClusterInfo,
    core: client.CoreV1Api,
    s3: Any,
) -> None:
    task = fine_tuning_task("killed", "minilm", e2e_data, [5e-5])
    fixed = task["spec"]["hyperparameters"]["fixed"]
    fixed.update({"maxSteps": 12, "checkpointEverySteps": 2, "evalEverySteps": 12})
    task["spec"]["trainer"]["backoffLimit"] = 1
    apply(kubectl, tenant, tuned_model("minilm", e2e_data.base_model), task)

    pid = wait_for(
        lambda: _saved_and_running(core, devcluster, tenant), "a resumable save", 900, 0.1
    )
    os.killpg(pid, signal.SIGKILL)

    assert_recovered(kubectl, s3, devcluster, tenant, "killed", "minilm")
    logs = _logs(devcluster, tenant)
    assert len(logs) == 2, sorted(logs)
    resumed = [int(m.group(1)) for log in logs.values() for m in RESUMED.finditer(log)]
    saved = [int(m.group(1)) for log in logs.values() for m in SAVED.finditer(log)]
    assert len(resumed) == 1 and resumed[0] >= 2, logs
    # It resumed from a step the first Pod saved: the save was not lost.
    assert resumed[0] in saved, (resumed, saved)
