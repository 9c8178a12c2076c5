"""The operator/trainer contract: defaults, validation, derived URIs, messages."""

from __future__ import annotations

import os
import subprocess
import sys
from typing import Any

import pytest
from pydantic import ValidationError

from kubetune.contract import (
    EXIT_BAD_INPUT,
    EXIT_INTERNAL_ERROR,
    EXIT_OK,
    EXIT_REASONS,
    EXIT_STORAGE_FAILED,
    EXIT_TRAINING_FAILED,
    TERMINATION_MESSAGE_MAX_BYTES,
    ObjectiveSpec,
    TrialConfig,
    TrialIdentity,
    TrialResult,
    failure_message,
    sibling_uri,
    termination_summary,
)

IDENTITY = {
    "namespace": "ml",
    "task": "debian",
    "lineage": "minilm-debian",
    "iteration": 0,
    "index": 3,
    "name": "debian-0-3",
}


def config(**changes: Any) -> dict[str, Any]:
    document: dict[str, Any] = {
        "trial": IDENTITY,
        "base_model": "s3://models/minilm/",
        "data": {"train": "s3://data/debian-train.jsonl.gz"},
        "output": {"checkpoint_uri": "s3://runs/ml/debian/debian-0-3/model/"},
    }
    return document | changes


def test_minimal_config_resolves_defaults() -> None:
    trial = TrialConfig.model_validate(config())
    assert trial.data.train == ["s3://data/debian-train.jsonl.gz"]
    assert trial.loss.name == "mnrl"
    assert trial.learning_rate == 5e-5
    assert trial.hyperparameters.batch_size == 256
    assert trial.hyperparameters.max_seq_length is None  # the model's own
    assert trial.loss.scale == 20.0
    assert trial.output.result_uri == "s3://runs/ml/debian/debian-0-3/result.json"
    assert trial.output.resume_uri == "s3://runs/ml/debian/debian-0-3/resume"
    assert trial.output.progress_uri is None
    assert trial.experiment_name == "ml/debian"


@pytest.mark.parametrize(
    ("changes", "learning_rate", "loss"),
    [
        ({"method": "lora"}, 5e-4, "mnrl"),
        ({"hyperparameters": {"learning_rate": 1e-3}}, 1e-3, "mnrl"),
        ({"data": {"train": ["a.jsonl"], "format": "scored"}}, 5e-5, "weighted"),
        (
            {"data": {"train": ["a.jsonl"], "format": "triplets"}, "loss": {"name": "triplet"}},
            5e-5,
            "triplet",
        ),
    ],
)
def test_defaults_depend_on_method_and_format(
    changes: dict[str, Any], learning_rate: float, loss: str
) -> None:
    trial = TrialConfig.model_validate(config(**changes))
    assert trial.learning_rate == learning_rate
    assert trial.loss_name == loss


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"hyperparameter": {}}, "hyperparameter\n  Extra inputs are not permitted"),
        ({"hyperparameters": {"batch_size": 1}}, "hyperparameters.batch_size"),
        ({"data": {"train": []}}, "data.train"),
        ({"data": {"train": ["gs://bucket/x.jsonl"]}}, "only s3:// URIs and local paths"),
        ({"data": {"train": ["a.jsonl"], "format": "csv"}}, "data.format"),
        (
            {"data": {"train": ["a.jsonl"], "format": "pairs"}, "loss": {"name": "triplet"}},
            "cannot train on format 'pairs'",
        ),
        (
            {"data": {"train": ["a.jsonl"], "format": "scored"}, "loss": {"name": "mnrl"}},
            "cannot train on format 'scored'",
        ),
        (
            {"data": {"train": ["a.jsonl"], "score_weights": {"clicks": 1.0}}},
            "score_weights only applies",
        ),
        ({"output": {"checkpoint_uri": "s3://runs/"}}, "needs a prefix"),
        ({"objective": {"metric": "ndcg@5"}}, "objective.metric"),
        ({"trial": IDENTITY | {"iteration": -1}}, "trial.iteration"),
    ],
)
def test_invalid_configs_name_the_field(changes: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError) as caught:
        TrialConfig.model_validate(config(**changes))
    assert message in str(caught.value)


def test_config_round_trips_through_json() -> None:
    trial = TrialConfig.model_validate(config(method="lora"))
    assert TrialConfig.model_validate_json(trial.model_dump_json()) == trial


@pytest.mark.parametrize(
    ("uri", "expected"),
    [
        ("s3://b/tasks/t/trial-3/model/", "s3://b/tasks/t/trial-3/result.json"),
        ("s3://b/model", "s3://b/result.json"),
        ("/tmp/out/model", "/tmp/out/result.json"),
        ("out/model/", "out/result.json"),
        ("model", "./result.json"),
    ],
)
def test_sibling_uri(uri: str, expected: str) -> None:
    assert sibling_uri(uri, "result.json") == expected


def result(**changes: Any) -> TrialResult:
    document: dict[str, Any] = {
        "trial": TrialIdentity.model_validate(IDENTITY),
        "objective": ObjectiveSpec(),
        "value": 0.93,
        "baseline_value": 0.82,
        "metrics": {"ndcg@10": 0.93},
        "baseline_metrics": {"ndcg@10": 0.82},
        "parameters": {"method": "full"},
        "steps": 174,
        "epochs": 1.0,
        "train_samples": 44389,
        "eval_queries": 5575,
        "eval_corpus": 5575,
        "samples_per_second": 9000.0,
        "train_seconds": 5.0,
        "wall_seconds": 60.0,
        "checkpoint_uri": "s3://runs/ml/debian/debian-0-3/model/",
        "base_model": "s3://models/minilm/",
        "train_data": ["s3://data/debian-train.jsonl.gz"],
        "validation_data": None,
        "eval_max_seq_length": 256,
        "device": "NVIDIA H100",
        "trainer_version": "0.1.0",
    }
    return TrialResult.model_validate(document | changes)


def test_termination_summary_is_one_short_line() -> None:
    summary = termination_summary(result())
    assert summary.startswith("ok ndcg@10=0.9300 (base 0.8200, +0.1100) steps=174")
    assert "\n" not in summary
    long = termination_summary(result(checkpoint_uri="s3://b/" + "é" * 5000))
    assert len(long.encode("utf-8")) < TERMINATION_MESSAGE_MAX_BYTES


def test_improvement_follows_the_direction() -> None:
    assert result().improvement == pytest.approx(0.11)
    minimize = ObjectiveSpec(metric="ndcg@10", direction="minimize")
    assert result(objective=minimize).improvement == pytest.approx(-0.11)


def test_failure_message_names_the_reason_on_one_line() -> None:
    message = failure_message(EXIT_BAD_INPUT, "data.jsonl:3: not valid JSON\nmore")
    assert message == "BadInput: data.jsonl:3: not valid JSON more"
    assert len(failure_message(EXIT_TRAINING_FAILED, "x" * 10_000).encode()) < 4096


def test_every_exit_code_has_a_reason() -> None:
    codes = {
        EXIT_OK,
        EXIT_INTERNAL_ERROR,
        EXIT_BAD_INPUT,
        EXIT_TRAINING_FAILED,
        EXIT_STORAGE_FAILED,
    }
    assert set(EXIT_REASONS) == codes
    assert len(set(EXIT_REASONS.values())) == len(codes)


def test_contract_imports_no_torch() -> None:
    code = "import sys, kubetune.contract; sys.exit('torch' in sys.modules)"
    env = os.environ | {"PYTHONPATH": os.pathsep.join(sys.path)}
    subprocess.run([sys.executable, "-c", code], check=True, env=env)
