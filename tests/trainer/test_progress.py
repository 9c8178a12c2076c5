"""The progress file keeps every evaluation, so the operator can stop hopeless trials by
comparing trials at the same step (`decide.study.prune_decision`); the log's progress lines
carry their figures."""

from __future__ import annotations

import io
import json
import logging
from pathlib import Path

from kubetune.contract import TrialProgress
from kubetune.logs import JsonLines
from kubetune_trainer.storage import Storage
from kubetune_trainer.tracking import LogObserver, LogPoint, ProgressObserver


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


def test_progress_lines_carry_their_figures_as_json_fields() -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonLines())
    logger = logging.getLogger("kubetune_trainer.tracking")
    logger.addHandler(handler)
    level = logger.level
    logger.setLevel(logging.INFO)
    try:
        observer = LogObserver()
        observer.on_log(LogPoint(4, 8, 0.5, 1.25, 2e-5, 300.0, 26_000.0, 12.4))
        observer.on_eval(8, {"ndcg@10": 0.91})
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
    progress, evaluation = (json.loads(line) for line in stream.getvalue().splitlines())
    assert progress["message"].startswith("step 4/8 (50%) epoch 0.50 loss 1.2500")
    assert (progress["step"], progress["total_steps"], progress["loss"]) == (4, 8, 1.25)
    assert progress["eta_seconds"] == 12.4
    assert evaluation["metrics"] == {"ndcg@10": 0.91} and evaluation["step"] == 8
