"""The operator's log formats: text, or one JSON object a line that names the object a line
is about."""

from __future__ import annotations

import io
import json
import logging
import sys
import threading
import warnings
from collections.abc import Iterator

import kopf
import pytest

from kubetune.logs import JsonLines, TextLines, about, configure_logging

TASK = {
    "apiVersion": "kubetune.dev/v1alpha1",
    "kind": "FineTuningTask",
    "metadata": {"name": "lr-sweep", "namespace": "search", "uid": "u-1"},
}


@pytest.fixture
def restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    hooks = sys.excepthook, threading.excepthook
    yield
    root.handlers[:], root.level = handlers, level
    sys.excepthook, threading.excepthook = hooks
    logging.captureWarnings(False)


def emit(
    formatter: logging.Formatter,
    log: logging.Logger | logging.LoggerAdapter[logging.Logger],
    *args: object,
    **kwargs: object,
) -> str:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(formatter)
    logger = log.logger if isinstance(log, logging.LoggerAdapter) else log
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    try:
        log.info(*args, **kwargs)  # type: ignore[arg-type]
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
    return stream.getvalue()


def object_logger() -> kopf.ObjectLogger:
    return kopf.LocalObjectLogger(body=kopf.Body(TASK), settings=kopf.OperatorSettings())


def test_a_json_line_names_the_object_kopf_logs_about() -> None:
    line = emit(JsonLines(), object_logger(), "Handler %r succeeded.", "reconcile")
    entry = json.loads(line)
    assert entry["message"] == "Handler 'reconcile' succeeded."
    assert entry["object"] == {"kind": "FineTuningTask", "namespace": "search", "name": "lr-sweep"}
    assert (entry["level"], entry["logger"]) == ("INFO", "kopf.objects")
    assert entry["time"].endswith("Z")


def test_a_multi_line_message_and_its_traceback_stay_one_json_line() -> None:
    try:
        raise RuntimeError("storage unreachable")
    except RuntimeError:
        line = emit(JsonLines(), logging.getLogger("kubetune.test"), "two\nlines", exc_info=True)
    assert line.count("\n") == 1
    entry = json.loads(line)
    assert entry["message"] == "two\nlines"
    assert "RuntimeError: storage unreachable" in entry["exception"]
    assert "object" not in entry


def test_the_operators_own_lines_about_an_object_name_it() -> None:
    log = logging.getLogger("kubetune.test")
    where = about("FineTuningTask", "search", "lr-sweep")
    entry = json.loads(emit(JsonLines(), log, "reading %s failed", "s3://b/k", extra=where))
    assert entry["object"] == {"kind": "FineTuningTask", "namespace": "search", "name": "lr-sweep"}
    text = emit(TextLines(), log, "reading %s failed", "s3://b/k", extra=where)
    assert text.rstrip().endswith("kubetune.test: [search/lr-sweep] reading s3://b/k failed")


def test_a_text_line_is_prefixed_with_the_object() -> None:
    line = emit(TextLines(), object_logger(), "Handler %r succeeded.", "reconcile")
    assert line.rstrip().endswith(
        "INFO kopf.objects: [search/lr-sweep] Handler 'reconcile' succeeded."
    )


@pytest.mark.usefixtures("restore_logging")
def test_warnings_and_thread_errors_become_json_lines(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging("INFO", "json")
    warnings.warn("deprecated setting", UserWarning, stacklevel=1)
    thread = threading.Thread(target=lambda: 1 / 0, name="worker-1")
    thread.start()
    thread.join()
    lines = capsys.readouterr().err.splitlines()
    entries = [json.loads(line) for line in lines]
    assert any("deprecated setting" in e["message"] for e in entries), entries
    crash = next(e for e in entries if e["message"] == "uncaught exception in thread worker-1")
    assert "ZeroDivisionError" in crash["exception"]


@pytest.mark.parametrize(
    ("level", "log_format", "message"),
    [
        ("INFO", "yaml", "KUBETUNE_LOG_FORMAT must be text or json, got 'yaml'"),
        ("LOUD", "json", "KUBETUNE_LOG_LEVEL must be DEBUG, INFO, WARNING or ERROR"),
    ],
)
@pytest.mark.usefixtures("restore_logging")
def test_a_bad_format_or_level_is_refused_by_name(
    level: str, log_format: str, message: str
) -> None:
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        configure_logging(level, log_format)
