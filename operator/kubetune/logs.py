"""Kubetune's log lines: text for people, or one JSON object a line for log pipelines
(Loki, Elasticsearch, Cloud Logging), chosen by `--log-format` / `KUBETUNE_LOG_FORMAT`. The
operator's `__main__` sets them up, and the trainer through `kubetune_trainer.logs` (this
module needs nothing beyond the standard library, so the trainer image has all it needs).

kopf's lines about one object carry a reference to it (`k8s_ref`), as do the operator's own
through `about`; both formats show it, so every line about a task names the task."""

from __future__ import annotations

import copy
import json
import logging
import sys
import threading
from collections.abc import Mapping
from datetime import UTC, datetime
from types import TracebackType
from typing import Any

LOG_FORMATS = ("text", "json")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def about(kind: str, namespace: str, name: str) -> dict[str, object]:
    """`extra` for a log call about one object: both formats then name it, as on kopf's
    own lines (which carry the same `k8s_ref`)."""
    return {"k8s_ref": {"kind": kind, "namespace": namespace, "name": name}}


def about_body(body: Mapping[str, Any]) -> dict[str, object]:
    meta = body["metadata"]
    return about(body.get("kind") or "", meta.get("namespace") or "", meta["name"])


def object_ref(record: logging.LogRecord) -> dict[str, str] | None:
    """The object a kopf log line is about: kind, namespace (if any) and name."""
    ref = getattr(record, "k8s_ref", None)
    if not isinstance(ref, dict) or not ref.get("name"):
        return None
    return {key: str(ref[key]) for key in ("kind", "namespace", "name") if ref.get(key)}


class TextLines(logging.Formatter):
    def __init__(self) -> None:
        super().__init__(TEXT_FORMAT)

    def format(self, record: logging.LogRecord) -> str:
        ref = object_ref(record)
        if ref is not None:
            where = "/".join(filter(None, (ref.get("namespace"), ref["name"])))
            record = copy.copy(record)  # other handlers see the record unchanged
            record.msg, record.args = f"[{where}] {record.getMessage()}", None
        return super().format(record)


class JsonLines(logging.Formatter):
    """time (UTC, RFC 3339), level, logger, message, and where present the object, the
    figures the call passed as `extra={"fields": {...}}`, and the exception's traceback: one
    line each, whatever the message holds."""

    def format(self, record: logging.LogRecord) -> str:
        time = datetime.fromtimestamp(record.created, UTC)
        entry: dict[str, object] = {
            "time": time.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        ref = object_ref(record)
        if ref is not None:
            entry["object"] = ref
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            entry |= {key: value for key, value in fields.items() if key not in entry}
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        elif record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        return json.dumps(entry, ensure_ascii=False, default=str)


def log_uncaught(
    kind: type[BaseException], error: BaseException, trace: TracebackType | None
) -> None:
    logging.getLogger("kubetune").critical("uncaught exception", exc_info=(kind, error, trace))


def log_uncaught_in_thread(args: threading.ExceptHookArgs) -> None:
    if args.exc_value is None:
        return
    thread = args.thread.name if args.thread is not None else "?"
    logging.getLogger("kubetune").error(
        "uncaught exception in thread %s",
        thread,
        exc_info=(args.exc_type, args.exc_value, args.exc_traceback),
    )


def configure_logging(level: str, log_format: str) -> None:
    """One handler on the root logger, writing to stderr in the chosen format. Python's
    warnings and uncaught exceptions go through it too, so a JSON log holds nothing but
    JSON lines."""
    if log_format not in LOG_FORMATS:
        choices = " or ".join(LOG_FORMATS)
        raise ValueError(f"KUBETUNE_LOG_FORMAT must be {choices}, got {log_format!r}")
    numeric = logging.getLevelName(level.upper())
    if not isinstance(numeric, int):
        levels = "DEBUG, INFO, WARNING or ERROR"
        raise ValueError(f"KUBETUNE_LOG_LEVEL must be {levels}, got {level!r}")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonLines() if log_format == "json" else TextLines())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(numeric)
    logging.captureWarnings(True)
    sys.excepthook = log_uncaught
    threading.excepthook = log_uncaught_in_thread
    if numeric >= logging.INFO:
        # kopf logs "Handler ... succeeded" for every watch event (thousands a minute on a
        # busy cluster); its warnings and errors still show.
        logging.getLogger("kopf.objects").setLevel(logging.WARNING)
