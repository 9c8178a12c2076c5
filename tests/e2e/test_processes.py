"""A trial on several processes, through the operator's Job: the container reports for all
of them as one (on a GPU node, one process per GPU; here CPU processes, gloo)."""

from __future__ import annotations

from devcluster.state import ClusterInfo
from tests.conftest import Kubectl
from tests.e2e.fixtures import E2eData, apply, fine_tuning_task, trial_log, tuned_model, wait_phase


def test_a_trial_on_two_processes_succeeds_or_fails_as_one_container(
    kubectl: Kubectl, tenant: str, e2e_data: E2eData, devcluster: ClusterInfo
) -> None:
    task = fine_tuning_task("two-processes", "minilm", e2e_data, [1e-4])
    hyperparameters = task["spec"]["hyperparameters"]
    # fp16 on a CPU is bad input to every process of the second trial
    hyperparameters["searchSpace"].append(
        {"name": "precision", "categorical": {"values": ["fp32", "fp16"]}}
    )
    hyperparameters["maxFailedTrials"] = 1
    task["spec"]["trainer"] = {
        "resources": {"requests": {"cpu": "2"}},
        "env": [{"name": "KUBETUNE_PROCESSES", "value": "2"}],
    }
    apply(kubectl, tenant, tuned_model("minilm", e2e_data.base_model), task)
    status = wait_phase(kubectl, tenant, "two-processes", {"Succeeded", "Failed"})["status"]
    assert status["phase"] == "Succeeded", status
    succeeded, failed = sorted(status["trials"], key=lambda t: t["phase"], reverse=True)
    assert succeeded["phase"] == "Succeeded" and failed["phase"] == "Failed", status["trials"]
    assert succeeded["metric"] > 0
    assert "launching 2 processes" in trial_log(devcluster, tenant, succeeded["name"])
    # the launcher passes on the first failed rank's exit code and message: bad input, not
    # a retryable crash
    assert failed["exitCode"] == 2
    assert "fp16 needs a CUDA device" in failed["message"]
