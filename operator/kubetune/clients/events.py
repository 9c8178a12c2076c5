"""Kubernetes Events, posted in the background: a reconcile hands an Event over and goes
on, as client-go's event broadcaster lets controllers do. Events are for people (`kubectl
describe`); the status already holds what they say, so one that cannot be posted is logged
and dropped, never retried at the cost of a reconcile."""

from __future__ import annotations

import logging
import queue
import threading
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from kubernetes.client.exceptions import ApiException

from kubetune.clients.kube import Kube
from kubetune.logs import about_body

log = logging.getLogger("kubetune")
BACKLOG_LIMIT = 10_000
"""Events waiting to be posted; past this (an apiserver refusing them for minutes), new
ones are dropped with a warning instead of growing the operator's memory."""


@dataclass(frozen=True)
class _Pending:
    body: dict[str, Any]
    type: str
    reason: str
    message: str
    at: datetime


class EventRecorder:
    """Posts Events from one background thread, oldest first, each stamped with the time it
    was recorded, not posted."""

    def __init__(self, kube: Kube) -> None:
        self.kube = kube
        self._pending: queue.Queue[_Pending | None] = queue.Queue(BACKLOG_LIMIT)
        self._thread = threading.Thread(target=self._post_all, name="events", daemon=True)
        self._thread.start()

    def record(self, body: dict[str, Any], type_: str, reason: str, message: str) -> None:
        try:
            self._pending.put_nowait(_Pending(body, type_, reason, message, datetime.now(UTC)))
        except queue.Full:
            log.warning(
                "Event %s dropped: %d waiting", reason, BACKLOG_LIMIT, extra=about_body(body)
            )

    def close(self, timeout: float) -> None:
        """Post what is waiting (for at most `timeout` seconds), then stop."""
        try:
            self._pending.put(None, timeout=timeout)
        except queue.Full:
            return
        self._thread.join(timeout)

    def _post_all(self) -> None:
        while (event := self._pending.get()) is not None:
            try:
                self.kube.post_event(event.body, event.type, event.reason, event.message, event.at)
            except (ApiException, OSError) as error:
                where = about_body(event.body)
                log.warning("Event %s not recorded: %s", event.reason, error, extra=where)
