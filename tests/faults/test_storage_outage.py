"""S3 unavailable for 30 s in the middle of a promotion: the task still Succeeds once
storage is back, each Job exists once, and the lineage points at a sealed iteration.

The operator is frozen (SIGSTOP) the moment a promotion step is recorded, storage is
taken away behind it, and only then is the operator let go: so the outage always covers
a promotion step, however fast or slow the machine is. Two kinds of outage:

- `frozen`: versitygw is SIGSTOPped; connections are accepted and never answered;
- `killed`: versitygw is SIGKILLed and later restarted with the same arguments;
  connections are refused, so the operator's failure path (ActionFailed, backoff) runs.
"""

from __future__ import annotations

import os
import signal
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from kubernetes import client

from devcluster.processes import is_alive, spawn
from devcluster.state import ClusterInfo
from tests.conftest import Kubectl
from tests.e2e.fixtures import E2eData, OperatorProcess, apply, fine_tuning_task, tuned_model
from tests.faults.checks import assert_recovered
from tests.support import wait_for

OUTAGE_SECONDS = 30


def _promotion_step(custom: client.CustomObjectsApi, namespace: str, name: str) -> str | None:
    task = custom.get_namespaced_custom_object(
        "kubetune.dev", "v1alpha1", namespace, "finetuningtasks", name
    )
    step = ((task.get("status") or {}).get("promotion") or {}).get("step")
    return step if step and step != "Done" else None


def _answers(s3: Any) -> bool:
    try:
        s3.list_buckets()
    except Exception:  # noqa: BLE001 - any failure means "not yet"
        return False
    return True


def _kill_storage(devcluster: ClusterInfo) -> tuple[list[str], dict[str, str]]:
    """SIGKILL versitygw; return its argv and environment, to start it again as it was."""
    pid = devcluster.processes["versitygw"]
    argv = Path(f"/proc/{pid}/cmdline").read_bytes().decode().rstrip("\0").split("\0")
    pairs = Path(f"/proc/{pid}/environ").read_bytes().decode().rstrip("\0").split("\0")
    env = dict(pair.split("=", 1) for pair in pairs if "=" in pair)
    os.killpg(pid, signal.SIGKILL)
    wait_for(lambda: not is_alive(pid), "versitygw gone", 30)
    return argv, env


def _restart_storage(devcluster: ClusterInfo, argv: list[str], env: dict[str, str]) -> None:
    process = spawn("versitygw", argv, Path(devcluster.state_dir) / "logs", env=env)
    devcluster.processes["versitygw"] = process.pid
    devcluster.save()  # so that `down` stops the new process, not the dead one


def _outage_during_promotion(
    outage: str,
    kubectl: Kubectl,
    tenant: str,
    e2e_data: E2eData,
    operator: OperatorProcess,
    devcluster: ClusterInfo,
    kube_api: client.ApiClient,
    s3: Any,
) -> None:
    task = fine_tuning_task("outage", "minilm", e2e_data, [5e-5, 1e-4])
    task["spec"]["hyperparameters"]["fixed"].update({"maxSteps": 8, "evalEverySteps": 8})
    apply(kubectl, tenant, tuned_model("minilm", e2e_data.base_model), task)

    custom = client.CustomObjectsApi(kube_api)
    assert operator.process is not None
    step = wait_for(lambda: _promotion_step(custom, tenant, "outage"), "a promotion step", 900, 0.1)
    os.killpg(operator.process.pid, signal.SIGSTOP)
    try:
        if outage == "frozen":
            storage = devcluster.processes["versitygw"]
            os.killpg(storage, signal.SIGSTOP)
            try:
                os.killpg(operator.process.pid, signal.SIGCONT)
                time.sleep(OUTAGE_SECONDS)
            finally:
                os.killpg(storage, signal.SIGCONT)
        else:
            argv, env = _kill_storage(devcluster)
            os.killpg(operator.process.pid, signal.SIGCONT)
            time.sleep(OUTAGE_SECONDS)
            _restart_storage(devcluster, argv, env)
            wait_for(lambda: _answers(s3), "versitygw answering again", 60)
    finally:
        os.killpg(operator.process.pid, signal.SIGCONT)
    restored = time.time()

    final = assert_recovered(kubectl, s3, devcluster, tenant, "outage", "minilm")
    # Promotion needed storage after the step we froze it at, so it ended after the outage.
    succeeded = next(c for c in final["status"]["conditions"] if c["type"] == "Succeeded")
    ended = datetime.fromisoformat(succeeded["lastTransitionTime"]).timestamp()
    assert ended >= restored - 2, (step, succeeded)
    if outage == "killed":
        events = kubectl("get", "events", "-n", tenant, "-o", "jsonpath={.items[*].reason}")
        assert "ActionFailed" in events.stdout.split(), "the outage was never noticed"


def test_storage_frozen_during_promotion(
    kubectl: Kubectl,
    tenant: str,
    e2e_data: E2eData,
    operator: OperatorProcess,
    devcluster: ClusterInfo,
    kube_api: client.ApiClient,
    s3: Any,
) -> None:
    _outage_during_promotion(
        "frozen", kubectl, tenant, e2e_data, operator, devcluster, kube_api, s3
    )


def test_storage_killed_during_promotion(
    kubectl: Kubectl,
    tenant: str,
    e2e_data: E2eData,
    operator: OperatorProcess,
    devcluster: ClusterInfo,
    kube_api: client.ApiClient,
    s3: Any,
) -> None:
    _outage_during_promotion(
        "killed", kubectl, tenant, e2e_data, operator, devcluster, kube_api, s3
    )
