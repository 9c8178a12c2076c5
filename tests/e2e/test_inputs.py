"""What only the operator can check: a missing TunedModel or credentials Secret becomes a
condition with a reason, a message and an Event, and the task proceeds once it is fixed."""

from __future__ import annotations

import json

from kubernetes import client

from devcluster.state import ClusterInfo
from tests.conftest import Kubectl
from tests.e2e.fixtures import (
    CREDENTIALS_SECRET,
    E2eData,
    OperatorProcess,
    apply,
    credentials_secret,
    fine_tuning_task,
    get,
    tuned_model,
    wait_phase,
)
from tests.support import wait_for


def _inputs_ready(kubectl: Kubectl, namespace: str, name: str) -> dict | None:  # type: ignore[type-arg]
    status = get(kubectl, namespace, "finetuningtask", name).get("status") or {}
    return next((c for c in status.get("conditions", []) if c["type"] == "InputsReady"), None)


def _warnings(kubectl: Kubectl, namespace: str) -> list[str]:
    events = json.loads(kubectl("get", "events", "-n", namespace, "-o", "json").stdout)
    return [f"{e['reason']}: {e['message']}" for e in events["items"] if e["type"] == "Warning"]


def test_missing_model_and_secret_are_reported_then_resolved(
    kubectl: Kubectl,
    namespace: str,
    operator: OperatorProcess,
    e2e_data: E2eData,
    core: client.CoreV1Api,
    devcluster: ClusterInfo,
) -> None:
    apply(kubectl, namespace, fine_tuning_task("early", "minilm", e2e_data, [1e-4]))
    condition = wait_for(
        lambda: (c := _inputs_ready(kubectl, namespace, "early")) and c["status"] == "False" and c,
        "InputsReady=False",
    )
    assert condition["reason"] == "ModelNotFound"
    assert "minilm" in condition["message"]

    apply(kubectl, namespace, tuned_model("minilm", e2e_data.base_model))
    condition = wait_for(
        lambda: (
            (c := _inputs_ready(kubectl, namespace, "early"))
            and c["reason"] == "ActionFailed"
            and c
        ),
        "the missing Secret reported",
        timeout=120,
    )
    assert f'Secret "{CREDENTIALS_SECRET}" not found' in condition["message"]
    # Events are posted in the background, just after the status.
    wait_for(
        lambda: any(CREDENTIALS_SECRET in w for w in _warnings(kubectl, namespace)),
        "a Warning Event naming the Secret",
        timeout=30,
    )

    core.create_namespaced_secret(namespace, credentials_secret(devcluster, namespace))
    status = wait_phase(kubectl, namespace, "early", {"Succeeded", "Failed"})["status"]
    assert status["phase"] == "Succeeded", status
    ready = next(c for c in status["conditions"] if c["type"] == "InputsReady")
    assert ready["status"] == "True"
