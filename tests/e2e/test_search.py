"""Search that learns, end to end with the real trainer: a second iteration warm-started
from the first one's best parameter sets through the TunedModel, a hopeless learning rate
stopped by the median rule before it finishes, and the new spec rules at `kubectl apply`."""

from __future__ import annotations

from typing import Any

import pytest
import yaml
from kubernetes import client

from devcluster.state import ClusterInfo
from tests.conftest import Kubectl
from tests.e2e.fixtures import (
    E2eData,
    apply,
    fine_tuning_task,
    get,
    trial_log,
    tuned_model,
    wait_phase,
)

TIMEOUT = 1500  # the trainer runs on two shared CPU cores


def test_second_iteration_first_reruns_the_previous_top_k(
    kubectl: Kubectl, tenant: str, e2e_data: E2eData
) -> None:
    rates = [2e-5, 1e-4, 3e-4]
    first = fine_tuning_task(
        "first",
        "minilm",
        e2e_data,
        rates,
        hyperparameters={"algorithm": "random", "maxTrials": 3, "seed": 1},
    )
    apply(kubectl, tenant, tuned_model("minilm", e2e_data.base_model, retention=1), first)
    status = wait_phase(kubectl, tenant, "first", {"Succeeded", "Failed"}, TIMEOUT)["status"]
    assert status["phase"] == "Succeeded", status
    assert {t["origin"] for t in status["trials"]} == {"random"}
    ranked = sorted(status["trials"], key=lambda t: -t["metric"])
    top = get(kubectl, tenant, "tunedmodel", "minilm")["status"]["currentIteration"]["topTrials"]
    assert [t["parameters"] for t in top] == [t["parameters"] for t in ranked]
    assert [t["value"] for t in top] == [t["metric"] for t in ranked]

    second = fine_tuning_task(
        "second",
        "minilm",
        e2e_data,
        [*rates, 5e-5],
        hyperparameters={
            "algorithm": "tpe",
            "maxTrials": 3,
            "seed": 1,
            "warmStart": {"topK": 2},
            "tpe": {"startupTrials": 2},
        },
    )
    apply(kubectl, tenant, second)
    status = wait_phase(kubectl, tenant, "second", {"Succeeded", "Failed"}, TIMEOUT)["status"]
    assert status["phase"] == "Succeeded", status
    assert status["warmStart"] == {
        "iteration": 1,
        "parameters": [t["parameters"] for t in ranked[:2]],
    }
    trials = status["trials"]
    assert [t["origin"] for t in trials[:2]] == ["warm-start", "warm-start"]
    assert [t["parameters"] for t in trials[:2]] == [t["parameters"] for t in ranked[:2]]
    assert all(t["phase"] == "Succeeded" for t in trials)
    assert trials[2]["origin"] in ("tpe", "random")  # tpe once both re-runs had finished


def test_a_bad_learning_rate_is_pruned_before_it_finishes(
    kubectl: Kubectl,
    tenant: str,
    e2e_data: E2eData,
    batch: client.BatchV1Api,
    devcluster: ClusterInfo,
) -> None:
    max_steps = 8
    task = fine_tuning_task(
        "pruning",
        "minilm",
        e2e_data,
        [2e-5, 2e-2, 3e-5],  # grid order: a good rate, a destructive one, a good one
        hyperparameters={
            "fixed": {
                "batchSize": 16,
                "maxSteps": max_steps,
                "maxSeqLength": 48,
                "evalEverySteps": 2,
            },
            "parallelTrials": 1,
            "maxFailedTrials": 0,
            "earlyStopping": {"startupTrials": 1},
        },
    )
    apply(kubectl, tenant, tuned_model("minilm", e2e_data.base_model), task)
    status = wait_phase(kubectl, tenant, "pruning", {"Succeeded", "Failed"}, TIMEOUT)["status"]
    assert status["phase"] == "Succeeded", status
    good, bad, last = status["trials"]
    assert [e["step"] for e in good["evaluations"]] == [2, 4, 6, max_steps]
    assert bad["phase"] == "Pruned", bad
    assert bad["reason"] == "EarlyStopped"
    pruned = bad["pruned"]
    assert pruned["step"] < max_steps
    assert pruned["value"] < pruned["median"]
    assert "metric" not in bad  # it never finished
    assert status["counts"].get("failed", 0) == 0 and status["counts"]["pruned"] >= 1
    assert bad["name"] not in {j.metadata.name for j in batch.list_namespaced_job(tenant).items}
    # Its slot went to the next trial (parallelTrials 1), which could start only then.
    assert last["startedAt"] >= bad["finishedAt"]
    assert last["phase"] in ("Succeeded", "Pruned")  # a good rate, judged against one trial
    # One trial at a time: the first evaluated the starting model, the others read its result.
    shared = [
        "baseline read from" in trial_log(devcluster, tenant, t["name"]) for t in (good, bad, last)
    ]
    assert shared == [False, True, True]


def _task_with(hyperparameters: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": "kubetune.dev/v1alpha1",
        "kind": "FineTuningTask",
        "metadata": {"name": "bad"},
        "spec": {
            "modelRef": {"name": "minilm"},
            "dataset": {"train": ["s3://data/train.jsonl"]},
            "hyperparameters": {
                "searchSpace": [{"name": "learningRate", "float": {"min": 1e-5, "max": 1e-3}}],
                **hyperparameters,
            },
        },
    }


BAD_SEARCHES = [
    ("tpe-without-max-trials", {"algorithm": "tpe"}, "tpe search needs maxTrials"),
    (
        "tpe-settings-on-grid-search",
        {"tpe": {"multivariate": True}},
        "tpe settings apply only to algorithm 'tpe'",
    ),
    (
        "early-stopping-without-evaluations",
        {"algorithm": "random", "maxTrials": 4, "earlyStopping": {}},
        "earlyStopping needs fixed.evalEverySteps",
    ),
    (
        "warm-start-above-its-limit",
        {"algorithm": "random", "maxTrials": 4, "warmStart": {"topK": 11}},
        "spec.hyperparameters.warmStart.topK",
    ),
]


@pytest.mark.parametrize(
    ("case", "hyperparameters", "message"), BAD_SEARCHES, ids=[c[0] for c in BAD_SEARCHES]
)
def test_bad_search_settings_are_rejected_with_a_message(
    kubectl: Kubectl,
    crds: None,
    namespace: str,
    case: str,
    hyperparameters: dict[str, Any],
    message: str,
) -> None:
    manifest = yaml.safe_dump(_task_with(hyperparameters))
    result = kubectl("apply", "-n", namespace, "-f", "-", input=manifest, check=False)
    assert result.returncode != 0, f"{case}: accepted"
    assert message in result.stderr, result.stderr
