"""One process per device: the trainer's command launches its ranks and reports for them as
one container (exit code, termination message, result). On CPU the ranks use gloo."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kubetune.contract import EXIT_BAD_INPUT, EXIT_OK, PROCESSES_ENV, TrialResult
from kubetune_trainer.errors import InputError
from kubetune_trainer.launch import (
    WORKER_MESSAGES_ENV,
    is_worker,
    process_count,
    worker_message_path,
)
from tests.trainer.conftest import config_document
from tests.trainer.test_cli import run_cli


def test_the_process_count_is_the_setting_else_one_per_visible_device() -> None:
    assert process_count({PROCESSES_ENV: "4"}) == 4
    assert process_count({}) == 1  # no CUDA device here


@pytest.mark.parametrize("value", ["0", "-1", "two", ""])
def test_a_bad_process_count_is_bad_input(value: str) -> None:
    with pytest.raises(InputError, match=f"{PROCESSES_ENV}='{value}'"):
        process_count({PROCESSES_ENV: value})


def test_a_launched_rank_writes_its_own_termination_message_and_launches_nothing() -> None:
    environ = {"RANK": "1", WORKER_MESSAGES_ENV: "/scratch"}
    assert is_worker(environ)
    assert worker_message_path(environ) == Path("/scratch/rank-1")
    assert not is_worker({})
    assert worker_message_path({}) is None


def test_two_processes_run_one_trial_and_report_it_once(tmp_path: Path, model_dir: Path) -> None:
    config = tmp_path / "trial.json"
    config.write_text(json.dumps(config_document(model_dir, tmp_path)))
    code, message, stderr = run_cli(
        tmp_path, "--config", str(config), **{PROCESSES_ENV: "2", "OMP_NUM_THREADS": "2"}
    )
    assert code == EXIT_OK, stderr[-3000:]
    assert "launching 2 processes" in stderr
    result = TrialResult.model_validate_json((tmp_path / "result.json").read_text())
    assert result.device == "2 x cpu"
    assert result.value > result.baseline_value
    assert message.startswith("ok ndcg@10=") and message.count("\n") == 1


def test_bad_data_on_two_processes_exits_2_with_the_ranks_message(
    tmp_path: Path, model_dir: Path
) -> None:
    data = tmp_path / "train.jsonl"
    data.write_text('{"anchor": "apt pinning"}\n')
    config = tmp_path / "trial.json"
    config.write_text(json.dumps(config_document(model_dir, tmp_path, data={"train": [str(data)]})))
    code, message, _ = run_cli(tmp_path, "--config", str(config), **{PROCESSES_ENV: "2"})
    assert code == EXIT_BAD_INPUT
    assert message == (f"BadInput: {data}:1: missing column 'positive'; columns present: anchor\n")


def test_gradient_caching_on_several_processes_is_refused_before_any_starts(
    tmp_path: Path, model_dir: Path
) -> None:
    document = config_document(
        model_dir, tmp_path, gradient_cache={"enabled": True, "mini_batch_size": 8}
    )
    config = tmp_path / "trial.json"
    config.write_text(json.dumps(document))
    code, message, stderr = run_cli(tmp_path, "--config", str(config), **{PROCESSES_ENV: "2"})
    assert code == EXIT_BAD_INPUT
    assert "gradient_cache runs in one process, and this trial has 2 devices" in message
    assert "launching" not in stderr
