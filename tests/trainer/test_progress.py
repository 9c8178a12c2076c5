"""The progress file keeps every evaluation, so the operator can stop hopeless trials by
comparing trials at the same step (`decide.study.prune_decision`)."""

from __future__ import annotations

import json
from pathlib import Path

from kubetune.contract import TrialProgress
from kubetune_trainer.storage import Storage
from kubetune_trainer.tracking import ProgressObserver


def test_progress_lists_every_evaluation_in_step_order(tmp_path: Path) -> None:
    uri = str(tmp_path / "progress.json")
    observer = ProgressObserver(Storage(), uri, "tune-t0", min_interval=0.0)
    observer.on_phase("training", 6)
    for step, value in ((2, 0.81), (4, 0.84), (6, 0.86)):
        observer.on_eval(step, {"ndcg@10": value, "mrr@10": value - 0.05})
        progress = TrialProgress.model_validate(json.loads(Path(uri).read_text()))
        assert progress.step == step and progress.metrics["ndcg@10"] == value
    assert [(e.step, e.metrics["ndcg@10"]) for e in progress.evaluations] == [
        (2, 0.81),
        (4, 0.84),
        (6, 0.86),
    ]
