"""Resumable state: saved and loaded under the same settings, ignored under others."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from kubetune_trainer.checkpoint import ResumeStore, fingerprint
from kubetune_trainer.storage import Storage
from tests.trainer.conftest import ConfigFactory

CPU = torch.device("cpu")


def test_state_round_trips_under_the_same_settings(
    make_config: ConfigFactory, tmp_path: Path
) -> None:
    store = ResumeStore(
        Storage(), str(tmp_path / "resume"), tmp_path / "work", fingerprint(make_config())
    )
    assert store.load(CPU) is None
    store.save({"step": 4, "weights": torch.ones(2)})
    state = store.load(CPU)
    assert state is not None and state["step"] == 4
    assert torch.equal(state["weights"], torch.ones(2))
    store.delete()
    assert store.load(CPU) is None


def test_state_from_other_settings_or_unreadable_is_ignored(
    make_config: ConfigFactory, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    uri = str(tmp_path / "resume")
    ResumeStore(Storage(), uri, tmp_path / "a", fingerprint(make_config())).save({"step": 4})
    other = make_config(hyperparameters={"learning_rate": 3e-5})
    assert fingerprint(other) != fingerprint(make_config())
    assert ResumeStore(Storage(), uri, tmp_path / "b", fingerprint(other)).load(CPU) is None
    assert "saved under different training settings" in caplog.text
    (tmp_path / "resume" / "state.pt").write_bytes(b"truncated")
    assert ResumeStore(Storage(), uri, tmp_path / "c", fingerprint(make_config())).load(CPU) is None
    assert "unreadable" in caplog.text
