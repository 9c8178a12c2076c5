"""Operator-wide settings: a bad one stops `python -m kubetune` at once, naming it, before
kopf starts (kopf would retry a failing startup every minute, reconciling nothing)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from kubetune.config import OperatorConfig

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("KUBETUNE_WORKERS", "many", "KUBETUNE_WORKERS must be a whole number, got 'many'"),
        ("KUBETUNE_RESYNC_SECONDS", "soon", "KUBETUNE_RESYNC_SECONDS must be a number, got 'soon'"),
        ("KUBETUNE_WORKERS", "0", "KUBETUNE_WORKERS must be at least 1, got '0'"),
        ("KUBETUNE_RESYNC_SECONDS", "0.5", "KUBETUNE_RESYNC_SECONDS must be at least 1.0"),
        ("KUBETUNE_METRICS_PORT", "70000", "KUBETUNE_METRICS_PORT must be from 0 to 65535"),
    ],
)
def test_a_bad_number_is_refused_by_name(name: str, value: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        OperatorConfig.from_env({name: value})


def test_unset_numbers_take_their_defaults() -> None:
    config = OperatorConfig.from_env({"KUBETUNE_METRICS_PORT": ""})
    assert (config.workers, config.resync_seconds, config.metrics_port) == (16, 30.0, None)


def run_operator(**env: str) -> subprocess.CompletedProcess[str]:
    path = os.pathsep.join([str(REPO / "operator"), str(REPO)])
    return subprocess.run(
        [sys.executable, "-m", "kubetune"],
        env={**os.environ, "PYTHONPATH": path, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_the_operator_exits_on_a_bad_setting() -> None:
    result = run_operator(KUBETUNE_WORKERS="many")
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().endswith(
        "kubetune: invalid setting: KUBETUNE_WORKERS must be a whole number, got 'many'"
    )


def test_the_operator_exits_when_its_metrics_port_is_taken() -> None:
    with socket.socket() as taken:
        taken.bind(("0.0.0.0", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run_operator(KUBETUNE_METRICS_PORT=str(port))
    assert result.returncode == 1, result.stderr
    assert f"kubetune: cannot serve metrics on port {port}: " in result.stderr
    assert "Address already in use" in result.stderr
