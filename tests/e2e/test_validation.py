"""Bad manifests are rejected by the real apiserver at `kubectl apply`, each with a
message that says what is wrong (OpenAPI constraints and CEL rules from the CRDs)."""

from __future__ import annotations

import copy
from typing import Any

import pytest
import yaml

from tests.conftest import Kubectl

VALID_TASK: dict[str, Any] = {
    "apiVersion": "kubetune.dev/v1alpha1",
    "kind": "FineTuningTask",
    "metadata": {"name": "valid"},
    "spec": {
        "modelRef": {"name": "minilm"},
        "dataset": {"train": ["s3://data/train.jsonl"]},
        "hyperparameters": {
            "searchSpace": [{"name": "learningRate", "float": {"min": 1e-5, "max": 1e-3}}],
            "algorithm": "random",
            "maxTrials": 4,
            "parallelTrials": 2,
        },
    },
}


def _task(path: str, value: Any) -> dict[str, Any]:
    """The valid task with the value at a dotted path replaced (None deletes it)."""
    task = copy.deepcopy(VALID_TASK)
    *parents, last = path.split(".")
    node = task
    for part in parents:
        node = node[int(part)] if part.isdigit() else node[part]
    if value is None:
        del node[last]
    elif last.isdigit():
        node[int(last)] = value
    else:
        node[last] = value
    return task


BAD_TASKS = [
    ("missing modelRef", _task("spec.modelRef", None), "spec.modelRef: Required value"),
    ("empty train list", _task("spec.dataset.train", []), "spec.dataset.train"),
    ("unknown format", _task("spec.dataset.format", "csv"), 'Unsupported value: "csv"'),
    ("parallel above max", _task("spec.hyperparameters.parallelTrials", 8), "parallelTrials"),
    (
        "inverted range",
        _task("spec.hyperparameters.searchSpace.0.float", {"min": 1e-3, "max": 1e-5}),
        "min must be less than max",
    ),
    (
        "log range from zero",
        _task("spec.hyperparameters.searchSpace.0.float", {"min": 0.0, "max": 1e-3, "log": True}),
        "a log-scale range needs min > 0",
    ),
    (
        "two kinds in one parameter",
        _task("spec.hyperparameters.searchSpace.0.int", {"min": 1, "max": 2}),
        "set exactly one of float, int or categorical",
    ),
    (
        "random without maxTrials",
        _task("spec.hyperparameters.maxTrials", None),
        "random search needs maxTrials",
    ),
    (
        "wrong type",
        _task("spec.hyperparameters.parallelTrials", "two"),
        "spec.hyperparameters.parallelTrials: Invalid value",
    ),
    (
        "unknown objective metric",
        _task("spec.objective", {"metric": "accuracy"}),
        'Unsupported value: "accuracy"',
    ),
    (
        "negative learning rate",
        _task("spec.hyperparameters.fixed", {"learningRate": -1}),
        "learningRate",
    ),
    (
        "operator-owned env var",
        _task("spec.trainer", {"env": [{"name": "KUBETUNE_TRIAL_CONFIG", "value": "{}"}]}),
        "this variable is set by the operator",
    ),
    (
        "lora settings on full fine-tuning",
        _task("spec.method", {"type": "full", "lora": {"r": 8}}),
        "lora settings apply only to method type 'lora'",
    ),
    (
        "loss that cannot train on pairs",
        _task("spec.loss", {"name": "weighted"}),
        "this loss cannot train on this dataset format",
    ),
    (
        "gradient caching on two GPUs",
        {
            **VALID_TASK,
            "spec": {
                **VALID_TASK["spec"],
                "gradientCache": {"enabled": True},
                "trainer": {"resources": {"limits": {"nvidia.com/gpu": 2}}},
            },
        },
        "gradient caching runs in one process: give the trainer one GPU",
    ),
    (
        "gradient caching on four requested GPUs",
        {
            **VALID_TASK,
            "spec": {
                **VALID_TASK["spec"],
                "gradientCache": {"enabled": True},
                "trainer": {"resources": {"requests": {"amd.com/gpu": "4"}}},
            },
        },
        "gradient caching runs in one process: give the trainer one GPU",
    ),
    ("unknown field", _task("spec.learningRate", 0.1), 'unknown field "spec.learningRate"'),
]


@pytest.mark.parametrize(("case", "manifest", "message"), BAD_TASKS, ids=[c[0] for c in BAD_TASKS])
def test_bad_task_is_rejected_with_a_readable_message(
    kubectl: Kubectl,
    crds: None,
    namespace: str,
    case: str,
    manifest: dict[str, Any],
    message: str,
) -> None:
    result = kubectl(
        "apply", "-n", namespace, "-f", "-", input=yaml.safe_dump(manifest), check=False
    )
    assert result.returncode != 0, f"{case}: accepted"
    assert message in result.stderr, result.stderr


@pytest.mark.parametrize(
    ("gradient_cache", "gpus"), [(True, 1), (True, "1"), (False, 2), (True, None)]
)
def test_gradient_caching_is_accepted_with_one_gpu_and_several_gpus_without_it(
    kubectl: Kubectl, crds: None, namespace: str, gradient_cache: bool, gpus: int | str | None
) -> None:
    task = copy.deepcopy(VALID_TASK)
    task["spec"]["gradientCache"] = {"enabled": gradient_cache}
    if gpus is not None:
        task["spec"]["trainer"] = {
            "resources": {"limits": {"nvidia.com/gpu": gpus}, "requests": {"cpu": "2"}}
        }
    kubectl("apply", "-n", namespace, "-f", "-", input=yaml.safe_dump(task))


def test_the_valid_task_is_accepted_and_immutable_fields_stay(
    kubectl: Kubectl, crds: None, namespace: str
) -> None:
    kubectl("apply", "-n", namespace, "-f", "-", input=yaml.safe_dump(VALID_TASK))
    changed = _task("spec.modelRef", {"name": "other"})
    result = kubectl(
        "apply", "-n", namespace, "-f", "-", input=yaml.safe_dump(changed), check=False
    )
    assert result.returncode != 0
    assert "modelRef is immutable" in result.stderr
    lowered = _task("spec.restartGeneration", 0)
    kubectl(
        "apply",
        "-n",
        namespace,
        "-f",
        "-",
        input=yaml.safe_dump(_task("spec.restartGeneration", 2)),
    )
    result = kubectl(
        "apply", "-n", namespace, "-f", "-", input=yaml.safe_dump(lowered), check=False
    )
    assert "restartGeneration can only increase" in result.stderr


def test_bad_tuned_model_is_rejected(kubectl: Kubectl, crds: None, namespace: str) -> None:
    model = {
        "apiVersion": "kubetune.dev/v1alpha1",
        "kind": "TunedModel",
        "metadata": {"name": "m"},
        "spec": {"baseModel": "s3://models/base/", "retention": 0},
    }
    result = kubectl("apply", "-n", namespace, "-f", "-", input=yaml.safe_dump(model), check=False)
    assert result.returncode != 0
    assert "spec.retention" in result.stderr
