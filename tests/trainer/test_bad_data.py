"""Data files that are empty, truncated, wrongly encoded or too large for memory: each
stops the trial with an `InputError` (exit code 2, not retried) that names the file and,
where there is one, the line and byte; none hangs and none is read past the point where
it fails."""

from __future__ import annotations

import gzip
import json
import re
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from kubetune.contract import EXIT_BAD_INPUT, DataSpec
from kubetune_trainer import data as data_module
from kubetune_trainer.data import Example, load_data, read_examples
from kubetune_trainer.errors import InputError
from kubetune_trainer.memory import MemoryBudget, MemoryLimit, detect_memory_limit
from kubetune_trainer.storage import Storage
from tests.trainer.conftest import config_document
from tests.trainer.test_cli import run_cli

ROWS = [{"anchor": f"query {i}", "positive": f"document {i} " + "text " * 10} for i in range(200)]
JSONL = "".join(json.dumps(row) + "\n" for row in ROWS).encode()


def _read(path: Path, tmp_path: Path, budget: MemoryBudget | None = None) -> list[Example]:
    spec = DataSpec.model_validate({"train": [str(path)]})
    return read_examples(Storage(), spec.train, spec, tmp_path / "cache", budget)


def _error(path: Path, tmp_path: Path, budget: MemoryBudget | None = None) -> str:
    with pytest.raises(InputError) as caught:
        _read(path, tmp_path, budget)
    assert caught.value.exit_code == EXIT_BAD_INPUT
    return str(caught.value)


def _write(tmp_path: Path, name: str, content: bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(content)
    return path


# -- empty -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "content"),
    [
        ("empty.jsonl", b""),
        ("blank.jsonl", b"\n  \n\n"),
        ("empty.jsonl.gz", gzip.compress(b"")),
    ],
    ids=["empty", "blank-lines", "empty-gzip"],  # stable across pytest-xdist workers
)
def test_an_empty_file_is_named(tmp_path: Path, name: str, content: bytes) -> None:
    path = _write(tmp_path, name, content)
    assert _error(path, tmp_path) == f"{path}: empty file"


def test_a_parquet_file_without_rows_is_empty(tmp_path: Path) -> None:
    path = tmp_path / "empty.parquet"
    schema = pa.schema([("anchor", pa.string()), ("positive", pa.string())])
    pq.write_table(pa.Table.from_pylist([], schema=schema), path)
    assert _error(path, tmp_path) == f"{path}: empty file"


def test_a_zero_byte_parquet_file_is_unreadable(tmp_path: Path) -> None:
    path = _write(tmp_path, "zero.parquet", b"")
    assert _error(path, tmp_path).startswith(f"{path}: not a readable Parquet file")


# -- truncated and corrupt ---------------------------------------------------------------


def test_a_gzip_file_cut_in_the_middle_is_truncated(tmp_path: Path) -> None:
    whole = gzip.compress(JSONL)
    path = _write(tmp_path, "cut.jsonl.gz", whole[: len(whole) // 2])
    message = _error(path, tmp_path)
    assert message.startswith(f"{path}"), message
    assert "truncated" in message, message


def test_a_corrupt_gzip_stream_is_bad_input_not_a_crash(tmp_path: Path) -> None:
    whole = bytearray(gzip.compress(JSONL))
    middle = len(whole) // 2
    whole[middle : middle + 16] = bytes(16)  # zlib.error, which is not an OSError
    path = _write(tmp_path, "corrupt.jsonl.gz", bytes(whole))
    assert re.match(rf"{re.escape(str(path))}:\d+: cannot read: ", _error(path, tmp_path))


def test_a_json_line_cut_off_at_the_end_names_the_line(tmp_path: Path) -> None:
    lines = JSONL.splitlines(keepends=True)
    path = _write(tmp_path, "cut.jsonl", b"".join(lines[:3]) + lines[3][:20])
    message = _error(path, tmp_path)
    assert message.startswith(f"{path}:4: not valid JSON: "), message
    assert message.endswith("(the last line ends early: truncated?)"), message


def test_a_file_without_newlines_stops_at_the_line_limit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A JSON array instead of JSONL is one huge line: it is not read whole."""
    monkeypatch.setattr(data_module, "MAX_LINE_BYTES", 1000)
    path = _write(tmp_path, "array.jsonl", json.dumps(ROWS).encode())
    assert _error(path, tmp_path) == (
        f"{path}:1: line longer than 1000 bytes; JSONL needs one JSON object per line"
    )


# -- encodings ---------------------------------------------------------------------------


def test_latin1_names_line_and_byte(tmp_path: Path) -> None:
    first = b'{"anchor": "q", "positive": "p"}\n'
    second = '{"anchor": "café", "positive": "p"}\n'.encode("latin-1")
    path = _write(tmp_path, "latin1.jsonl", first + second)
    byte = len(first) + second.index(b"\xe9")
    assert _error(path, tmp_path) == (
        f"{path}:2: not UTF-8 text at byte {byte} (invalid continuation byte); "
        "Latin-1 or another encoding? save it as UTF-8"
    )


def test_utf16_with_a_byte_order_mark(tmp_path: Path) -> None:
    path = _write(tmp_path, "utf16.jsonl", JSONL.decode().encode("utf-16"))
    assert _error(path, tmp_path) == (
        f"{path}:1: UTF-16 text (byte-order mark at byte 0); save it as UTF-8"
    )


def test_utf16_without_a_byte_order_mark(tmp_path: Path) -> None:
    """Without the check, UTF-16 LE decodes as UTF-8 (NUL is valid) and fails as bad JSON."""
    path = _write(tmp_path, "utf16le.jsonl", JSONL.decode().encode("utf-16-le"))
    assert _error(path, tmp_path) == (
        f"{path}:1: NUL byte at byte 1: UTF-16 or binary data, not UTF-8 text"
    )


def test_a_utf8_byte_order_mark_is_not_data(tmp_path: Path) -> None:
    path = _write(tmp_path, "bom.jsonl", b"\xef\xbb\xbf" + JSONL)
    examples = _read(path, tmp_path)
    assert len(examples) == len(ROWS)
    assert examples[0].anchor == "query 0"


# -- keys that are paths elsewhere ------------------------------------------------------


def test_an_s3_key_with_dot_dots_cannot_write_outside_the_download_directory(
    tmp_path: Path,
) -> None:
    """`s3://bucket/../../x` passes the CRD's URI pattern (S3 keys may hold `..`); the
    download must not land outside the cache. Refused before any request is made."""
    uri = "s3://bucket/../../outside.jsonl"
    with pytest.raises(InputError) as caught:
        Storage().local_file(uri, tmp_path / "cache")
    assert str(caught.value) == f"{uri}: the key leaves the download directory ('..' in the key)"
    assert not (tmp_path / "outside.jsonl").exists()


# -- larger than memory ------------------------------------------------------------------


def test_data_ten_times_the_budget_stops_early_with_the_limit(tmp_path: Path) -> None:
    path = _write(tmp_path, "big.jsonl", JSONL)
    held = sum(data_module._example_size(e) for e in _read(path, tmp_path))
    limit = MemoryLimit(held // 5, "a test limit")  # data may take half: a tenth of `held`
    message = _error(path, tmp_path, MemoryBudget(limit))
    match = re.match(rf"{re.escape(str(path))}:(\d+): the data read so far takes about ", message)
    assert match, message
    # It stopped about a tenth of the way in, instead of reading everything first.
    assert int(match.group(1)) <= len(ROWS) // 10 + 1, message
    assert "a test limit" in message
    assert "spec.trainer.resources.limits.memory" in message


def test_data_within_the_budget_loads(tmp_path: Path) -> None:
    path = _write(tmp_path, "small.jsonl", JSONL)
    spec = DataSpec.model_validate({"train": [str(path)], "validation": [str(path)]})
    loaded = load_data(spec, Storage(), tmp_path, memory=MemoryLimit(1 << 30, "1 GiB"))
    assert len(loaded.train) == len(loaded.eval) == len(ROWS)


def test_validation_data_counts_against_the_same_budget(tmp_path: Path) -> None:
    path = _write(tmp_path, "half.jsonl", JSONL)
    held = sum(data_module._example_size(e) for e in _read(path, tmp_path))
    # Room for the training file once (half of the limit), not for it and the validation.
    limit = MemoryLimit(int(held * 2.5), "a test limit")
    spec = DataSpec.model_validate({"train": [str(path)], "validation": [str(path)]})
    with pytest.raises(InputError, match="a test limit"):
        load_data(spec, Storage(), tmp_path, memory=limit)


def _cgroup(tmp_path: Path, files: dict[str, str]) -> Path:
    for relative, content in files.items():
        (tmp_path / relative).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / relative).write_text(content)
    return tmp_path


@pytest.mark.parametrize(
    ("files", "expected"),
    [
        ({"memory.max": "2147483648\n"}, 2147483648),
        ({"memory/memory.limit_in_bytes": "1073741824\n"}, 1073741824),
    ],
    ids=["cgroup-v2", "cgroup-v1"],
)
def test_the_container_limit_comes_from_the_cgroup(
    tmp_path: Path, files: dict[str, str], expected: int
) -> None:
    limit = detect_memory_limit(_cgroup(tmp_path, files))
    assert limit is not None and limit.bytes == expected
    assert next(iter(files)) in limit.source


@pytest.mark.parametrize(
    "files",
    [
        {"memory.max": "max\n"},
        {"memory/memory.limit_in_bytes": "9223372036854771712\n"},
        {},
    ],
    ids=["v2-unlimited", "v1-unlimited", "no-cgroup"],
)
def test_without_a_container_limit_physical_memory_applies(
    tmp_path: Path, files: dict[str, str]
) -> None:
    limit = detect_memory_limit(_cgroup(tmp_path, files))
    assert limit is not None and limit.source == "the machine's physical memory"
    assert limit.bytes > 0


# -- through the command the Job runs ------------------------------------------------------


def test_truncated_training_data_exits_2_with_the_file_in_the_message(
    tmp_path: Path, model_dir: Path
) -> None:
    whole = gzip.compress(JSONL)
    path = _write(tmp_path, "train.jsonl.gz", whole[: len(whole) // 2])
    document: dict[str, Any] = config_document(model_dir, tmp_path, data={"train": [str(path)]})
    config = tmp_path / "trial.json"
    config.write_text(json.dumps(document))
    code, message, _ = run_cli(tmp_path, "--config", str(config))
    assert code == EXIT_BAD_INPUT
    assert message.startswith(f"BadInput: {path}") and "truncated" in message, message
