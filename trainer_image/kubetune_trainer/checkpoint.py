"""Resumable training state, so a restarted pod continues from its last saved step.

The state is one `state.pt` under the trial's `output.resume_uri` (local or S3): trainable
weights, optimizer, scheduler, loss scaler and random-generator states, the step, plus what
the trial needs to pick up where it stopped (baseline metrics, MLflow run id). It carries a
fingerprint of the settings that shape training; state written under different settings, or
state that cannot be read, is ignored with a warning rather than mixed in. Each save replaces
the previous one, and the state is deleted once the trial has succeeded.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any

import torch

from kubetune.contract import TrialConfig
from kubetune_trainer.storage import Storage, join_uri

log = logging.getLogger(__name__)

STATE_FILE = "state.pt"


def fingerprint(config: TrialConfig) -> str:
    """A digest of the settings a resumed run must share with the interrupted one."""
    shaping = config.model_dump(
        mode="json",
        include={
            "base_model",
            "data",
            "method",
            "lora",
            "loss",
            "gradient_cache",
            "hyperparameters",
        },
    )
    return hashlib.sha256(json.dumps(shaping, sort_keys=True).encode("utf-8")).hexdigest()


class ResumeStore:
    """Saves and loads the training state of one trial."""

    def __init__(self, storage: Storage, uri: str, work_dir: Path, config_fingerprint: str) -> None:
        self.storage = storage
        self.uri = join_uri(uri, STATE_FILE)
        self.work_dir = work_dir
        self.fingerprint = config_fingerprint
        work_dir.mkdir(parents=True, exist_ok=True)

    def load(self, device: torch.device) -> dict[str, Any] | None:
        """The saved state, or None if there is none (or it belongs to other settings)."""
        if not self.storage.exists(self.uri):
            return None
        path = self.storage.local_file(self.uri, self.work_dir / "download")
        try:
            state = torch.load(path, map_location=device, weights_only=True)
        except Exception as error:  # noqa: BLE001 - a damaged file can raise almost anything
            log.warning("ignoring %s: unreadable (%s); starting from step 0", self.uri, error)
            return None
        if state.get("fingerprint") != self.fingerprint:
            log.warning("ignoring %s: it was saved under different training settings", self.uri)
            return None
        log.info("resuming from step %d (%s)", state["step"], self.uri)
        return state

    def save(self, state: dict[str, Any]) -> None:
        path = self.work_dir / STATE_FILE
        torch.save(state | {"fingerprint": self.fingerprint}, path)
        self.storage.upload_file(path, self.uri)
        log.info("saved resumable state at step %d to %s", state["step"], self.uri)

    def delete(self) -> None:
        self.storage.delete(self.uri)
