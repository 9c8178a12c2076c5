"""The starting model's evaluation, shared through a file by the trials of an iteration."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from kubetune_trainer.baseline import SharedBaseline, baseline_key
from kubetune_trainer.evaluation import RetrievalSet
from kubetune_trainer.storage import Storage

RETRIEVAL = RetrievalSet(["q1", "q2"], ["d1", "d2"], [frozenset({0}), frozenset({1})])
CPU = torch.device("cpu")
METRICS = {"ndcg@10": 0.75, "recall@1": 0.5}


def key(**changes) -> str:
    inputs = {
        "starting_model": "s3://models/base/",
        "retrieval": RETRIEVAL,
        "max_length": 256,
        "amp_dtype": None,
        "device": CPU,
    } | changes
    return baseline_key(**inputs)


def shared(tmp_path: Path, key_: str) -> SharedBaseline:
    return SharedBaseline(Storage(), str(tmp_path / "baseline.json"), key_, tmp_path / "work")


def test_a_later_trial_reads_what_the_first_one_saved(tmp_path: Path) -> None:
    first = shared(tmp_path, key())
    assert first.load() is None
    first.save(METRICS, "task-t0")
    assert shared(tmp_path, key()).load() == METRICS


def test_every_input_of_the_numbers_is_in_the_key(tmp_path: Path) -> None:
    other_set = RetrievalSet(["q1", "q2"], ["d1", "d2"], [frozenset({0}), frozenset({0})])
    variants = [
        key(starting_model="s3://models/iterations/1/model/"),
        key(retrieval=other_set),
        key(max_length=128),
        key(amp_dtype=torch.bfloat16),
        key(device=torch.device("cuda", 0)),
    ]
    assert len({key(), *variants}) == len(variants) + 1
    shared(tmp_path, key()).save(METRICS, "task-t0")
    assert all(shared(tmp_path, variant).load() is None for variant in variants)


def test_a_damaged_document_is_ignored(tmp_path: Path) -> None:
    wrong_metrics = json.dumps({"key": key(), "metrics": {"ndcg@10": "high"}})
    for text in ("{not json", wrong_metrics, "[]"):
        (tmp_path / "baseline.json").write_text(text)
        assert shared(tmp_path, key()).load() is None


def test_an_unwritable_location_only_stops_the_sharing(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    blocked = SharedBaseline(Storage(), str(tmp_path / "file" / "b.json"), key(), tmp_path)
    blocked.save(METRICS, "task-t0")
    assert blocked.load() is None
