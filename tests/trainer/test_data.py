"""Reading the four data formats from JSONL, JSONL.gz and Parquet, and rejecting bad data
with the file and line."""

from __future__ import annotations

import gzip
import json
import logging
import re
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from kubetune.contract import DataSpec
from kubetune_trainer.data import Example, load_data, read_examples
from kubetune_trainer.errors import InputError
from kubetune_trainer.storage import Storage
from tests.trainer.conftest import DEV, TRAIN


def write_jsonl(path: Path, rows: list[Any]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def read(path: Path, tmp_path: Path, **spec: Any) -> list[Example]:
    data_spec = DataSpec.model_validate({"train": [str(path)]} | spec)
    return read_examples(Storage(), data_spec.train, data_spec, tmp_path / "cache")


def test_pairs_from_the_gzipped_slice(tmp_path: Path) -> None:
    examples = read(TRAIN, tmp_path)
    assert len(examples) == 600
    with gzip.open(TRAIN, "rt") as handle:
        first = json.loads(handle.readline())
    assert examples[0] == Example(first["anchor"].strip(), first["positive"].strip())


def test_pairs_with_mapped_columns_from_parquet(tmp_path: Path) -> None:
    path = tmp_path / "pairs.parquet"
    table = pa.table({"question": ["q1", "q2"], "answer": ["a1", "a2"], "extra": [1, 2]})
    pq.write_table(table, path)
    examples = read(path, tmp_path, columns={"anchor": "question", "positive": "answer"})
    assert examples == [Example("q1", "a1"), Example("q2", "a2")]


def test_triplets(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "t.jsonl", [{"anchor": "q", "positive": "p", "negative": "n"}])
    assert read(path, tmp_path, format="triplets") == [Example("q", "p", "n")]


def test_scored_pairs_weights_are_scaled_to_the_largest_score(tmp_path: Path) -> None:
    rows = [
        {"anchor": "q1", "positive": "a", "score": 4},
        {"anchor": "q2", "positive": "b", "score": 2},
        {"anchor": "q3", "positive": "c", "score": 0},
    ]
    path = write_jsonl(tmp_path / "s.jsonl", rows)
    spec = DataSpec.model_validate(
        {"train": [str(path)], "validation": [str(path)], "format": "scored"}
    )
    data = load_data(spec, Storage(), tmp_path)
    assert [example.weight for example in data.train] == [1.0, 0.5, 0.0]


def test_scored_pairs_from_weighted_outcomes(tmp_path: Path) -> None:
    rows = [{"anchor": "q", "positive": "a", "clicks": 2, "purchases": 1}]
    path = write_jsonl(tmp_path / "s.jsonl", rows)
    weights = {"clicks": 1.0, "purchases": 5.0}
    examples = read(path, tmp_path, format="scored", score_weights=weights)
    assert examples == [Example("q", "a", None, 7.0)]


def test_sessions_become_clicked_positives_with_unclicked_hard_negatives(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    rows = [
        {"query": "q1", "shown": ["d1", "d2", "d3", "d4"], "clicked": ["d3", "d1"]},
        {"query": "q2", "shown": ["d5"], "clicked": ["d5"]},
        {"query": "q3", "shown": ["d6"], "clicked": []},
    ]
    path = write_jsonl(tmp_path / "sessions.jsonl", rows)
    with caplog.at_level(logging.WARNING):
        examples = read(path, tmp_path, format="sessions")
    assert examples == [
        Example("q1", "d3", "d2"),
        Example("q1", "d1", "d4"),
        Example("q2", "d5", None),
    ]
    assert "skipped 1 of 3 rows: 1 sessions without a click" in caplog.text


def test_empty_texts_are_skipped_and_counted(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    rows = [
        {"anchor": "q1", "positive": "a"},
        {"anchor": "  ", "positive": "b"},
        {"anchor": "q3", "positive": None},
    ]
    path = write_jsonl(tmp_path / "p.jsonl", rows)
    with caplog.at_level(logging.WARNING):
        assert read(path, tmp_path) == [Example("q1", "a")]
    assert "skipped 2 of 3 rows: 2 rows with an empty text" in caplog.text


def test_a_directory_reads_every_file_in_order(tmp_path: Path) -> None:
    folder = tmp_path / "parts"
    folder.mkdir()
    write_jsonl(folder / "b.jsonl", [{"anchor": "q2", "positive": "b"}])
    write_jsonl(folder / "a.jsonl", [{"anchor": "q1", "positive": "a"}])
    assert read(folder, tmp_path) == [Example("q1", "a"), Example("q2", "b")]


@pytest.mark.parametrize(
    ("content", "fmt", "message"),
    [
        ('{"anchor": "q", "positive": "p"}\n{"anchor": \n', "pairs", "bad.jsonl:2: not valid JSON"),
        (
            '{"anchor": "q", "positive": "p"}\n["q", "p"]\n',
            "pairs",
            "bad.jsonl:2: expected a JSON object",
        ),
        (
            '{"anchor": "q", "positive": "p"}\n{"anchor": "q"}\n',
            "pairs",
            "bad.jsonl:2: missing column 'positive'",
        ),
        (
            '{"anchor": "q", "positive": 5}\n',
            "pairs",
            "bad.jsonl:1: column 'positive' must be text",
        ),
        (
            '{"anchor": "q", "positive": "p", "score": -1}\n',
            "scored",
            "bad.jsonl:1: score must be >= 0",
        ),
        (
            '{"anchor": "q", "positive": "p", "score": "high"}\n',
            "scored",
            "bad.jsonl:1: column 'score' must be a finite number",
        ),
        (
            '{"query": "q", "shown": "d1", "clicked": []}\n',
            "sessions",
            "bad.jsonl:1: column 'shown' must be a list of texts",
        ),
        ("\n\n", "pairs", "bad.jsonl: empty file"),
    ],
)
def test_bad_data_names_file_and_line(tmp_path: Path, content: str, fmt: str, message: str) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text(content)
    with pytest.raises(InputError) as caught:
        read(path, tmp_path, format=fmt)
    assert message in str(caught.value)


def test_a_missing_mapped_column_says_which_mapping(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "p.jsonl", [{"anchor": "q", "positive": "p"}])
    with pytest.raises(
        InputError, match=r"p.jsonl:1: missing column 'doc' \(mapped from 'positive'\)"
    ):
        read(path, tmp_path, columns={"positive": "doc"})


def test_undecodable_bytes_name_the_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_bytes(b'{"anchor": "q", "positive": "p"}\n{"anchor": "\xff"}\n')
    with pytest.raises(InputError, match=re.escape("bad.jsonl:2: not UTF-8")):
        read(path, tmp_path)


def test_unreadable_parquet_and_unknown_types_are_bad_input(tmp_path: Path) -> None:
    broken = tmp_path / "broken.parquet"
    broken.write_bytes(b"not parquet")
    with pytest.raises(InputError, match=re.escape("broken.parquet: not a readable Parquet file")):
        read(broken, tmp_path)
    csv = tmp_path / "data.csv"
    csv.write_text("anchor,positive\n")
    with pytest.raises(InputError, match=re.escape("data.csv: unknown file type")):
        read(csv, tmp_path)
    with pytest.raises(InputError, match=re.escape("missing.jsonl: not found")):
        read(tmp_path / "missing.jsonl", tmp_path)


def test_held_out_split_is_deterministic_and_disjoint_by_anchor(tmp_path: Path) -> None:
    spec = DataSpec.model_validate({"train": [str(TRAIN)], "eval_fraction": 0.2})
    first = load_data(spec, Storage(), tmp_path)
    second = load_data(spec, Storage(), tmp_path)
    assert first == second
    assert 80 <= len(first.eval) <= 160
    assert len(first.train) + len(first.eval) == 600
    assert not {e.anchor for e in first.train} & {e.anchor for e in first.eval}


def test_sample_limits_keep_the_first_examples(tmp_path: Path) -> None:
    spec = DataSpec.model_validate(
        {
            "train": [str(TRAIN)],
            "validation": [str(DEV)],
            "max_train_samples": 50,
            "max_eval_samples": 20,
        }
    )
    data = load_data(spec, Storage(), tmp_path)
    assert (len(data.train), len(data.eval)) == (50, 20)
    assert data.train == read(TRAIN, tmp_path)[:50]


def test_the_triplet_loss_drops_examples_without_a_negative_counted(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    rows = [
        {"query": "q1", "shown": ["a", "b"], "clicked": ["a"]},
        {"query": "q2", "shown": ["c"], "clicked": ["c"]},
        {"query": "q3", "shown": ["d", "e"], "clicked": ["d"]},
    ]
    path = write_jsonl(tmp_path / "s.jsonl", rows)
    spec = DataSpec.model_validate(
        {"train": [str(path)], "validation": [str(path)], "format": "sessions"}
    )
    with caplog.at_level(logging.WARNING):
        data = load_data(spec, Storage(), tmp_path, require_negative=True)
    assert [example.anchor for example in data.train] == ["q1", "q3"]
    assert "skipped 1 of 3 training examples without a hard negative" in caplog.text
