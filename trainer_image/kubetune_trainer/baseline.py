"""The starting model's evaluation, shared by the trials of one iteration.

Every trial of an iteration starts from the same model and evaluates it on the same
held-out set, so one evaluation serves them all: the first trial to finish it writes it to
`output.baseline_uri`, and a trial that starts later reads it instead of encoding the set
again. A document is used only when its key matches, a digest of everything the numbers
depend on (starting model, evaluation texts and judgements, truncation, precision, device
type); a trial with other settings evaluates for itself. Sharing saves time and never
decides a result, so a storage problem here is logged and the trial evaluates.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import torch

from kubetune_trainer.errors import TrialError
from kubetune_trainer.evaluation import RetrievalSet
from kubetune_trainer.storage import Storage

log = logging.getLogger(__name__)


def baseline_key(
    starting_model: str,
    retrieval: RetrievalSet,
    max_length: int,
    amp_dtype: torch.dtype | None,
    device: torch.device,
) -> str:
    """A digest of the inputs that decide the starting model's metrics."""
    inputs = {
        "starting_model": starting_model,
        "queries": retrieval.queries,
        "corpus": retrieval.corpus,
        "relevant": [sorted(hits) for hits in retrieval.relevant],
        "max_length": max_length,
        "precision": str(amp_dtype),
        "device": device.type,
    }
    return hashlib.sha256(json.dumps(inputs, sort_keys=True).encode("utf-8")).hexdigest()


class SharedBaseline:
    """The baseline document at `uri`, for trials whose evaluation has key `key`."""

    def __init__(self, storage: Storage, uri: str, key: str, work_dir: Path) -> None:
        self.storage = storage
        self.uri = uri
        self.key = key
        self.work_dir = work_dir

    def load(self) -> dict[str, float] | None:
        """The shared metrics, or None when there are none for this key."""
        try:
            if not self.storage.exists(self.uri):
                return None
            document = json.loads(self.storage.local_file(self.uri, self.work_dir).read_text())
        except (TrialError, OSError, ValueError) as error:
            log.warning("evaluating the baseline: %s is unreadable (%s)", self.uri, error)
            return None
        if not isinstance(document, dict) or document.get("key") != self.key:
            log.info("evaluating the baseline: %s was computed under other settings", self.uri)
            return None
        metrics = document.get("metrics")
        if not isinstance(metrics, dict) or not all(
            isinstance(v, int | float) for v in metrics.values()
        ):
            log.warning("evaluating the baseline: %s holds no metrics", self.uri)
            return None
        log.info("baseline read from %s (evaluated by %s)", self.uri, document.get("trial"))
        return {str(k): float(v) for k, v in metrics.items()}

    def save(self, metrics: dict[str, float], trial: str) -> None:
        try:
            self.storage.put_json(self.uri, {"key": self.key, "metrics": metrics, "trial": trial})
        except TrialError as error:
            log.warning("the baseline is not shared: %s", error)
