"""One process per device: the trainer's command launches its ranks and reports for them as
one container (exit code, termination message, result). On CPU the ranks use gloo."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest
import torch
from safetensors.torch import load_file

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
    assert process_count({PROCESSES_ENV: "4"}) == 4  # no CUDA device here: CPU processes
    assert process_count({}) == 1
    assert process_count({}, gpus=8) == 8
    assert process_count({PROCESSES_ENV: "2"}, gpus=8) == 2


def test_more_processes_than_gpus_is_bad_input() -> None:
    with pytest.raises(InputError, match=f"{PROCESSES_ENV}=4, but the trainer sees 2 GPUs"):
        process_count({PROCESSES_ENV: "4"}, gpus=2)


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


TWO = {PROCESSES_ENV: "2", "OMP_NUM_THREADS": "2"}


@dataclass(frozen=True)
class TwoProcessRun:
    out: Path
    code: int
    message: str
    stderr: str


@pytest.fixture(scope="module")
def two_process_run(model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> TwoProcessRun:
    """A short trial on two processes, uninterrupted."""
    out = tmp_path_factory.mktemp("two")
    config = out / "trial.json"
    config.write_text(json.dumps(config_document(model_dir, out)))
    code, message, stderr = run_cli(out, "--config", str(config), **TWO)
    return TwoProcessRun(out, code, message, stderr)


def test_two_processes_run_one_trial_and_report_it_once(two_process_run: TwoProcessRun) -> None:
    assert two_process_run.code == EXIT_OK, two_process_run.stderr[-3000:]
    assert "launching 2 processes" in two_process_run.stderr
    result = TrialResult.model_validate_json((two_process_run.out / "result.json").read_text())
    assert result.device == "2 x cpu"
    assert result.value > result.baseline_value
    assert two_process_run.message.startswith("ok ndcg@10=")
    assert two_process_run.message.count("\n") == 1


def test_a_killed_two_process_trial_resumes_and_ends_where_an_uninterrupted_one_does(
    two_process_run: TwoProcessRun, tmp_path: Path, model_dir: Path
) -> None:
    """Each process resumes its own random state (its own dropout masks), so the resumed
    trial's model is the uninterrupted one's."""
    document = config_document(model_dir, tmp_path)
    document["hyperparameters"]["checkpoint_every_steps"] = 4
    config = tmp_path / "trial.json"
    config.write_text(json.dumps(document))
    log = tmp_path / "killed.log"
    with log.open("w") as stderr:
        killed = subprocess.Popen(
            [sys.executable, "-m", "kubetune_trainer", "--config", str(config)],
            env=os.environ | {"PYTHONPATH": os.pathsep.join(sys.path)} | TWO,
            stderr=stderr,
            start_new_session=True,
        )
        deadline = time.monotonic() + 240
        while "saved resumable state at step 4" not in log.read_text():
            assert killed.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.1)
        # the Pod is gone, every process with it (the launcher's ranks run in sessions of
        # their own, so this takes them one by one, as a container's end would)
        launcher = psutil.Process(killed.pid)
        processes = [launcher, *launcher.children(recursive=True)]
        for process in processes:
            process.kill()
        psutil.wait_procs(processes, timeout=30)
        killed.wait()
    code, _, stderr = run_cli(tmp_path, "--config", str(config), **TWO)
    assert code == EXIT_OK, stderr[-3000:]
    result = TrialResult.model_validate_json((tmp_path / "result.json").read_text())
    assert result.resumed_from_step in (4, 8)  # 8 only if the test stalled for four steps
    resumed = load_file(tmp_path / "model" / "model.safetensors")
    straight = load_file(two_process_run.out / "model" / "model.safetensors")
    for name, tensor in straight.items():
        torch.testing.assert_close(resumed[name], tensor, atol=1e-6, rtol=1e-5, msg=name)


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
