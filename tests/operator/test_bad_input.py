"""Bad input the apiserver lets through, caught by the operator before any Job exists: a
searched value the trainer or the API's own limits reject, a categorical value that is not
a scalar, a task name that would make an invalid Job name, and a Job the apiserver
refuses (its message must reach the condition)."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from kubernetes.client.exceptions import ApiException
from pydantic import ValidationError

from kubetune.api import FineTuningTaskSpec
from kubetune.api import conditions as c
from kubetune.api.base import DNS_SUBDOMAIN_PATTERN
from kubetune.decide import CreateJob, decide_task
from kubetune.decide.trialconfig import search_space_problems
from kubetune.effects import _api_message
from kubetune.manifests import job_name
from tests.operator.builders import DEFAULTS, NOW, model, task, task_spec


def _search(*parameters: dict[str, Any]) -> FineTuningTaskSpec:
    return task_spec(hyperparameters={"searchSpace": list(parameters), "parallelTrials": 1})


SEARCH_CASES = [
    (
        "boolean learning rate",
        {"name": "learningRate", "categorical": {"values": [True]}},
        "searchSpace learningRate: True: must be a number",
    ),
    (
        "batch size as text",
        {"name": "batchSize", "categorical": {"values": ["32"]}},
        "searchSpace batchSize: '32': must be an integer",
    ),
    (
        "learning rate above the fixed limit",
        {"name": "learningRate", "categorical": {"values": [1e-4, 50.0]}},
        "searchSpace learningRate: 50.0: Input should be less than or equal to 1",
    ),
    (
        "float range beyond the limit",
        {"name": "warmupRatio", "float": {"min": 0.1, "max": 5.0}},
        "searchSpace warmupRatio: 5.0: Input should be less than or equal to 1",
    ),
    (
        "int range below the limit",
        {"name": "batchSize", "int": {"min": 1, "max": 64}},
        "searchSpace batchSize: 1: Input should be greater than or equal to 2",
    ),
    (
        "huge lora rank",
        {"name": "lora.r", "categorical": {"values": [10**12]}},
        "searchSpace lora.r: 1000000000000: Input should be less than or equal to 1024",
    ),
    (
        "injection as precision",
        {"name": "precision", "categorical": {"values": ["$(rm -rf /)"]}},
        "searchSpace precision: '$(rm -rf /)': Input should be 'auto', 'fp32', 'bf16' or 'fp16'",
    ),
]


@pytest.mark.parametrize(
    ("parameter", "problem"), [c[1:] for c in SEARCH_CASES], ids=[c[0] for c in SEARCH_CASES]
)
def test_searched_values_are_checked_against_every_limit(
    parameter: dict[str, Any], problem: str
) -> None:
    spec = (
        task_spec(
            method={"type": "lora"},
            hyperparameters={"searchSpace": [parameter], "parallelTrials": 1},
        )
        if parameter["name"].startswith("lora.")
        else _search(parameter)
    )
    assert search_space_problems(spec) == [problem]
    # Found before the attempt starts: no iteration reserved, no Job created.
    decision = decide_task(task(spec), model(), [], DEFAULTS, NOW)
    assert decision.actions == ()
    condition = c.get_condition(decision.status.conditions, c.INPUTS_READY)
    assert condition is not None and condition.reason == c.REASON_INVALID_SPEC
    assert condition.message == problem


def test_values_within_every_limit_pass() -> None:
    spec = _search(
        {"name": "learningRate", "float": {"min": 1e-6, "max": 1.0, "log": True}},
        {"name": "batchSize", "int": {"min": 2, "max": 512}},
        {"name": "precision", "categorical": {"values": ["fp32", "bf16"]}},
    )
    assert search_space_problems(spec) == []


@pytest.mark.parametrize("value", [{"rm": "-rf"}, [1, 2], None], ids=["object", "list", "null"])
def test_a_categorical_value_that_is_not_a_scalar_is_named(value: object) -> None:
    with pytest.raises(ValidationError) as error:
        _search({"name": "batchSize", "categorical": {"values": [32, value]}})
    first = error.value.errors()[0]
    assert first["loc"] == ("hyperparameters", "searchSpace", 0, "categorical", "values", 1)
    assert first["msg"].endswith(f"must be a number, string or boolean, not {type(value).__name__}")


DNS_SUBDOMAIN = re.compile(DNS_SUBDOMAIN_PATTERN)
# A subdomain of labels: the shapes that stress the cut are dots and hyphens near it.
LABEL = st.from_regex(r"\A[a-z0-9]([-a-z0-9]{0,20}[a-z0-9])?\Z")
TASK_NAMES = (
    st.lists(LABEL, min_size=1, max_size=8).map(".".join).filter(lambda name: len(name) <= 63)
)


@settings(derandomize=True, max_examples=300, database=None)
@given(name=TASK_NAMES, attempt=st.integers(1, 1000), index=st.integers(0, 255))
def test_every_task_name_gives_a_valid_job_name(name: str, attempt: int, index: int) -> None:
    job = job_name(name, attempt, index)
    assert len(job) <= 63 and DNS_SUBDOMAIN.match(job), job


def test_a_name_cut_at_a_dot_gives_a_valid_job_name() -> None:
    """The case the property found: the cut ended in '.', then came '-<digest>'."""
    name = "a" * 50 + "." + "b" * 12
    job = job_name(name, 1, 0)
    assert DNS_SUBDOMAIN.match(job), job
    assert job.startswith("a" * 50 + "-")


def test_invalid_task_job_is_never_created() -> None:
    """With a bad searched value the decision creates nothing, whatever the round."""
    spec = _search({"name": "maxSteps", "categorical": {"values": [0]}})
    decision = decide_task(task(spec), model(), [], DEFAULTS, NOW)
    assert not any(isinstance(a, CreateJob) for a in decision.actions)


def test_a_refused_job_reports_the_apiservers_message() -> None:
    error = ApiException(status=422, reason="Unprocessable Entity")
    error.body = json.dumps(
        {
            "kind": "Status",
            "message": 'Job.batch "t-t0" is invalid: spec.template.spec.containers[0]'
            '.resources.requests: Invalid value: "2": must be less than or equal to cpu limit',
        }
    )
    assert "resources.requests: Invalid value" in _api_message(error)
    bare = ApiException(status=503, reason="Service Unavailable")
    bare.body = "<html>upstream down</html>"
    assert _api_message(bare) == "Service Unavailable"
