"""`python -m kubetune_trainer` on bad input: exit code 2 and a termination message that says
what to fix."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from kubetune.contract import EXIT_BAD_INPUT, LOG_FORMAT_ENV, TRIAL_CONFIG_ENV
from tests.trainer.conftest import config_document


def run_cli(tmp_path: Path, *args: str, **env: str) -> tuple[int, str, str]:
    """Run the trainer's command; return (exit code, termination message, stderr)."""
    message_file = tmp_path / "termination-log"
    environ = {key: value for key, value in os.environ.items() if key != TRIAL_CONFIG_ENV} | {
        "PYTHONPATH": os.pathsep.join(sys.path),
        "KUBETUNE_TERMINATION_MESSAGE_PATH": str(message_file),
    }
    process = subprocess.run(
        [sys.executable, "-m", "kubetune_trainer", *args],
        env=environ | env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    message = message_file.read_text() if message_file.exists() else ""
    return process.returncode, message, process.stderr


def test_an_invalid_config_exits_2_naming_the_field(tmp_path: Path, model_dir: Path) -> None:
    document = config_document(model_dir, tmp_path)
    document["hyperparameters"]["batch_size"] = 1
    code, message, stderr = run_cli(tmp_path, **{TRIAL_CONFIG_ENV: json.dumps(document)})
    assert code == EXIT_BAD_INPUT
    assert message.startswith(
        "BadInput: invalid trial config in KUBETUNE_TRIAL_CONFIG: hyperparameters.batch_size: "
        "Input should be greater than or equal to 2 (got 1)"
    )
    assert message.count("\n") == 1
    assert "hyperparameters.batch_size" in stderr


def test_json_logging_writes_only_json_lines(tmp_path: Path, model_dir: Path) -> None:
    document = config_document(model_dir, tmp_path)
    document["hyperparameters"]["batch_size"] = 1
    code, message, stderr = run_cli(
        tmp_path, **{TRIAL_CONFIG_ENV: json.dumps(document), LOG_FORMAT_ENV: "json"}
    )
    assert code == EXIT_BAD_INPUT
    entries = [json.loads(line) for line in stderr.splitlines()]
    (error,) = [e for e in entries if e["level"] == "ERROR"]
    assert error["message"] == message.strip()
    assert error["logger"] == "kubetune_trainer"


def test_an_unknown_log_format_exits_2_naming_the_variable(tmp_path: Path) -> None:
    code, message, _ = run_cli(tmp_path, **{LOG_FORMAT_ENV: "yaml"})
    assert code == EXIT_BAD_INPUT
    assert message.startswith("BadInput: KUBETUNE_LOG_FORMAT must be text or json")


def test_no_config_exits_2(tmp_path: Path) -> None:
    code, message, _ = run_cli(tmp_path)
    assert code == EXIT_BAD_INPUT
    assert "set KUBETUNE_TRIAL_CONFIG or pass --config PATH" in message


def test_a_config_file_that_is_not_json_exits_2(tmp_path: Path) -> None:
    path = tmp_path / "trial.json"
    path.write_text("trial: yaml?")
    code, message, _ = run_cli(tmp_path, "--config", str(path))
    assert code == EXIT_BAD_INPUT
    assert f"invalid trial config in {path}: not JSON" in message


def test_bad_data_exits_2_naming_file_and_line(tmp_path: Path, model_dir: Path) -> None:
    data = tmp_path / "train.jsonl"
    data.write_text('{"anchor": "q", "positive": "p"}\n{"anchor": "q2"}\n')
    document = config_document(model_dir, tmp_path, data={"train": [str(data)]})
    config = tmp_path / "trial.json"
    config.write_text(json.dumps(document))
    code, message, _ = run_cli(tmp_path, "--config", str(config))
    assert code == EXIT_BAD_INPUT
    assert f"BadInput: {data}:2: missing column 'positive'" in message
    progress = json.loads((tmp_path / "progress.json").read_text())
    assert progress["phase"] == "starting"


def test_a_missing_base_model_exits_2(tmp_path: Path, model_dir: Path) -> None:
    document = config_document(model_dir, tmp_path, base_model=str(tmp_path / "nowhere"))
    config = tmp_path / "trial.json"
    config.write_text(json.dumps(document))
    code, message, _ = run_cli(tmp_path, "--config", str(config))
    assert code == EXIT_BAD_INPUT
    assert f"{tmp_path / 'nowhere'}: not a directory" in message


def test_the_trainer_imports_nothing_outside_its_extra() -> None:
    """The trainer image installs the `trainer` extra only: not the operator's kopf and
    Kubernetes client, nor the test-only sentence-transformers."""
    others = ["kopf", "kubernetes", "sentence_transformers", "optuna", "matplotlib", "lupa"]
    code = (
        "import sys, kubetune_trainer.cli, kubetune_trainer.trial, kubetune_trainer.launch\n"
        f"print(sorted(m for m in {others!r} if m in sys.modules))"
    )
    process = subprocess.run(
        [sys.executable, "-c", code],
        env=os.environ | {"PYTHONPATH": os.pathsep.join(sys.path)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert process.returncode == 0, process.stderr[-3000:]
    assert process.stdout.strip() == "[]"
