"""Reading training and evaluation data into one example type, whatever its format.

Files are JSONL (optionally `.gz`) or Parquet, local or on S3. Each of the four formats in
`kubetune.contract.DataSpec` becomes a list of `Example`s: (anchor, positive, optional hard
negative, weight). Malformed data stops the trial with an `InputError` naming the file and
line (or Parquet row); rows that are well-formed but unusable (an empty text, a session
without clicks) are skipped, counted, and the counts logged: nothing disappears silently.

When no validation data is given, a deterministic share of distinct anchors is held out by
a hash of the anchor text, so the split is identical on every run and no query is in both.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import logging
import math
import sys
import zlib
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from kubetune.contract import DataSpec
from kubetune_trainer.errors import InputError
from kubetune_trainer.memory import MIB, MemoryBudget, MemoryLimit, detect_memory_limit
from kubetune_trainer.storage import Storage

log = logging.getLogger(__name__)

JSONL_SUFFIXES = (".jsonl", ".ndjson", ".json", ".jsonl.gz", ".ndjson.gz", ".json.gz")
PARQUET_SUFFIXES = (".parquet", ".pq")


@dataclass(frozen=True)
class Example:
    """One training or evaluation example.

    `weight` is 1 except for scored data, where it is the score divided by the largest
    score in the training data (0 = not relevant).
    """

    anchor: str
    positive: str
    negative: str | None = None
    weight: float = 1.0


@dataclass
class Skipped:
    """Counts of rows skipped, by reason, for the log."""

    reasons: Counter[str] = field(default_factory=Counter)

    def add(self, reason: str) -> None:
        self.reasons[reason] += 1

    @property
    def total(self) -> int:
        return sum(self.reasons.values())

    def describe(self) -> str:
        return ", ".join(f"{count} {reason}" for reason, count in sorted(self.reasons.items()))


@dataclass(frozen=True)
class TrainEvalData:
    train: list[Example]
    eval: list[Example]


class _RowError(Exception):
    """A problem with one row; the reader adds the file and line."""


MAX_LINE_BYTES = 64 * MIB
"""No example needs more; a longer line is a file without newlines (a JSON array, a
binary file), and reading it whole could take more memory than the container has."""
_UTF16_BOMS = (b"\xff\xfe", b"\xfe\xff")


def _decode(raw: bytes, display: str, line_number: int, offset: int) -> str:
    """The line as text; UTF-16, Latin-1 and binary data fail naming the byte."""
    if line_number == 1 and raw.startswith(_UTF16_BOMS):
        raise InputError(f"{display}:1: UTF-16 text (byte-order mark at byte 0); save it as UTF-8")
    nul = raw.find(b"\x00")
    if nul >= 0:
        raise InputError(
            f"{display}:{line_number}: NUL byte at byte {offset + nul}: UTF-16 or binary "
            "data, not UTF-8 text"
        )
    try:
        # utf-8-sig: a byte-order mark some editors write at the start is not data.
        return raw.decode("utf-8-sig" if line_number == 1 else "utf-8")
    except UnicodeDecodeError as error:
        raise InputError(
            f"{display}:{line_number}: not UTF-8 text at byte {offset + error.start} "
            f"({error.reason}); Latin-1 or another encoding? save it as UTF-8"
        ) from None


def _read_jsonl(path: Path, display: str) -> Iterator[tuple[str, dict[str, Any]]]:
    opener = gzip.open if path.name.endswith(".gz") else open
    line_number = 0
    offset = 0  # in the uncompressed text, for messages about one byte
    try:
        with opener(path, "rb") as handle:
            while raw := handle.readline(MAX_LINE_BYTES + 1):
                line_number += 1
                if len(raw) > MAX_LINE_BYTES:
                    raise InputError(
                        f"{display}:{line_number}: line longer than {MAX_LINE_BYTES} bytes; "
                        "JSONL needs one JSON object per line"
                    )
                line = _decode(raw, display, line_number, offset)
                offset += len(raw)
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as error:
                    cut = "" if raw.endswith(b"\n") else " (the last line ends early: truncated?)"
                    raise InputError(
                        f"{display}:{line_number}: not valid JSON: {error}{cut}"
                    ) from None
                if not isinstance(row, dict):
                    raise InputError(
                        f"{display}:{line_number}: expected a JSON object, got {type(row).__name__}"
                    )
                yield f"{display}:{line_number}", row
    except EOFError:
        raise InputError(
            f"{display}: truncated: the compressed data ends after line {line_number}, "
            "before the end of the gzip stream"
        ) from None
    except (OSError, zlib.error) as error:  # BadGzipFile is an OSError; corrupt data is not
        raise InputError(f"{display}:{line_number + 1}: cannot read: {error}") from None


def _read_parquet(path: Path, display: str) -> Iterator[tuple[str, dict[str, Any]]]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        parquet = pq.ParquetFile(path)
        row_number = 0
        for batch in parquet.iter_batches(batch_size=8192):
            for row in batch.to_pylist():
                row_number += 1
                yield f"{display}: row {row_number}", row
    except (pa.ArrowException, OSError) as error:
        raise InputError(f"{display}: not a readable Parquet file: {error}") from None


def read_rows(path: Path, display: str) -> Iterator[tuple[str, dict[str, Any]]]:
    """(location, row) for every row of a data file; location is `file:line` or `file: row N`."""
    name = path.name.lower()
    if name.endswith(PARQUET_SUFFIXES):
        rows = _read_parquet(path, display)
    elif name.endswith(JSONL_SUFFIXES):
        rows = _read_jsonl(path, display)
    else:
        raise InputError(
            f"{display}: unknown file type; use one of "
            f"{', '.join(JSONL_SUFFIXES + PARQUET_SUFFIXES)}"
        )
    empty = True
    for item in rows:
        empty = False
        yield item
    if empty:
        raise InputError(f"{display}: empty file")


def _column(row: dict[str, Any], column: str, logical: str) -> Any:
    if column not in row:
        mapped = f" (mapped from {logical!r})" if column != logical else ""
        present = ", ".join(sorted(row)) or "none"
        raise _RowError(f"missing column {column!r}{mapped}; columns present: {present}")
    return row[column]


def _text(row: dict[str, Any], column: str, logical: str) -> str | None:
    """The stripped text in `column`, None if null or blank (the row is then skipped)."""
    value = _column(row, column, logical)
    if value is None:
        return None
    if not isinstance(value, str):
        raise _RowError(f"column {column!r} must be text, got {type(value).__name__}")
    return value.strip() or None


def _number(row: dict[str, Any], column: str, logical: str) -> float:
    value = _column(row, column, logical)
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise _RowError(f"column {column!r} must be a finite number, got {value!r}")
    return float(value)


def _texts(row: dict[str, Any], column: str, logical: str) -> list[str]:
    value = _column(row, column, logical)
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise _RowError(f"column {column!r} must be a list of texts")
    return [item.strip() for item in value if item.strip()]


def _examples_from_row(row: dict[str, Any], spec: DataSpec, skipped: Skipped) -> list[Example]:
    columns = spec.columns
    if spec.format == "sessions":
        query = _text(row, columns.query, "query")
        shown = _texts(row, columns.shown, "shown")
        clicked = list(dict.fromkeys(_texts(row, columns.clicked, "clicked")))
        if query is None:
            skipped.add("sessions with an empty query")
            return []
        if not clicked:
            skipped.add("sessions without a click")
            return []
        clicked_set = set(clicked)
        negatives = [text for text in dict.fromkeys(shown) if text not in clicked_set]
        return [
            Example(query, positive, negatives[i % len(negatives)] if negatives else None)
            for i, positive in enumerate(clicked)
        ]
    anchor = _text(row, columns.anchor, "anchor")
    positive = _text(row, columns.positive, "positive")
    negative = _text(row, columns.negative, "negative") if spec.format == "triplets" else None
    score = 1.0
    if spec.format == "scored":
        if spec.score_weights is None:
            score = _number(row, columns.score, "score")
        else:
            score = sum(
                weight * _number(row, column, column)
                for column, weight in spec.score_weights.items()
            )
        if score < 0:
            raise _RowError(f"score must be >= 0, got {score}")
    if anchor is None or positive is None or (spec.format == "triplets" and negative is None):
        skipped.add("rows with an empty text")
        return []
    return [Example(anchor, positive, negative, score)]


_EXAMPLE_OVERHEAD = sys.getsizeof(Example("", "")) + sys.getsizeof(vars(Example("", ""))) + 8
"""An example object, its attribute dict and its pointer in the list."""


def _example_size(example: Example) -> int:
    """Bytes the example keeps alive: its texts, itself and its slot in the list."""
    texts = sum(
        sys.getsizeof(text)
        for text in (example.anchor, example.positive, example.negative)
        if text is not None
    )
    return texts + _EXAMPLE_OVERHEAD


def read_examples(
    storage: Storage,
    uris: list[str],
    spec: DataSpec,
    cache_dir: Path,
    budget: MemoryBudget | None = None,
) -> list[Example]:
    """All examples in the files behind `uris`, in file order; skipped rows are logged.
    Each example kept is counted against `budget`, which stops the read with an
    `InputError` once the data would not fit in memory."""
    budget = budget or MemoryBudget(None)
    examples: list[Example] = []
    for uri in uris:
        for file_uri in storage.list_files(uri):
            path = storage.local_file(file_uri, cache_dir)
            skipped = Skipped()
            rows = 0
            for location, row in read_rows(path, file_uri):
                rows += 1
                try:
                    found = _examples_from_row(row, spec, skipped)
                except _RowError as error:
                    raise InputError(f"{location}: {error}") from None
                for example in found:
                    budget.add(_example_size(example), location)
                examples.extend(found)
            if skipped.total:
                log.warning(
                    "%s: skipped %d of %d rows: %s",
                    file_uri,
                    skipped.total,
                    rows,
                    skipped.describe(),
                )
            log.info("%s: %d rows", file_uri, rows)
    return examples


def _held_out(anchor: str, fraction: float) -> bool:
    digest = hashlib.sha256(anchor.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < fraction


def _normalise_weights(
    train: list[Example], held_out: list[Example]
) -> tuple[list[Example], list[Example]]:
    top = max((example.weight for example in train), default=0.0)
    if top <= 0:
        raise InputError("scored data: every training score is 0, nothing to learn from")
    return (
        [replace(example, weight=example.weight / top) for example in train],
        [replace(example, weight=example.weight / top) for example in held_out],
    )


def load_data(
    spec: DataSpec,
    storage: Storage,
    cache_dir: Path,
    require_negative: bool = False,
    memory: MemoryLimit | None = None,
) -> TrainEvalData:
    """Training and evaluation examples for a trial.

    `require_negative` (the triplet loss) drops examples without a hard negative, counted.
    `max_train_samples` / `max_eval_samples` keep the first N examples in file order.
    Training and evaluation examples together may take a share of `memory` (default: the
    container's limit, `memory.detect_memory_limit`); more is an `InputError`.
    """
    budget = MemoryBudget(memory or detect_memory_limit())
    examples = read_examples(storage, spec.train, spec, cache_dir, budget)
    if spec.validation is not None:
        train = examples
        held_out = read_examples(storage, spec.validation, spec, cache_dir, budget)
    else:
        flags = [_held_out(example.anchor, spec.eval_fraction) for example in examples]
        train = [example for example, out in zip(examples, flags, strict=True) if not out]
        held_out = [example for example, out in zip(examples, flags, strict=True) if out]
        log.info(
            "held out %d of %d examples (eval_fraction %.3f, by anchor hash) for evaluation",
            len(held_out),
            len(examples),
            spec.eval_fraction,
        )
    if require_negative:
        kept = [example for example in train if example.negative is not None]
        if len(kept) < len(train):
            log.warning(
                "skipped %d of %d training examples without a hard negative (the triplet loss "
                "needs one)",
                len(train) - len(kept),
                len(train),
            )
        train = kept
    if spec.format == "scored":
        train, held_out = _normalise_weights(train, held_out)
    if spec.max_train_samples is not None and len(train) > spec.max_train_samples:
        log.info("using the first %d of %d training examples", spec.max_train_samples, len(train))
        train = train[: spec.max_train_samples]
    if spec.max_eval_samples is not None and len(held_out) > spec.max_eval_samples:
        log.info(
            "using the first %d of %d evaluation examples", spec.max_eval_samples, len(held_out)
        )
        held_out = held_out[: spec.max_eval_samples]
    if len(train) < 2:
        raise InputError(f"only {len(train)} usable training examples; need at least 2")
    if not any(example.weight > 0 for example in held_out):
        raise InputError(
            "no evaluation examples with a relevant document: give validation data "
            "or raise eval_fraction"
        )
    return TrainEvalData(train=train, eval=held_out)
