from __future__ import annotations

import threading
from datetime import datetime
from typing import Any

from kubernetes.client.exceptions import ApiException

from kubetune.clients.events import EventRecorder
from kubetune.logs import object_ref


class RecordingKube:
    """Stands in for the apiserver's Event endpoint: records posts, refuses one reason, and
    can hold every post until released."""

    def __init__(self) -> None:
        self.posted: list[tuple[str, str, datetime]] = []
        self.released = threading.Event()
        self.released.set()

    def post_event(
        self, body: dict[str, Any], type_: str, reason: str, message: str, at: datetime
    ) -> None:
        self.released.wait()
        if reason == "Refused":
            raise ApiException(status=403, reason="Forbidden")
        self.posted.append((body["metadata"]["name"], reason, at))


TASK = {"metadata": {"name": "t", "namespace": "ns"}}


def test_events_are_posted_in_order_with_the_time_they_were_recorded() -> None:
    kube = RecordingKube()
    kube.released.clear()
    recorder = EventRecorder(kube)  # type: ignore[arg-type]
    before = datetime.now().astimezone()
    recorder.record(TASK, "Normal", "Started", "attempt 1")
    recorder.record(TASK, "Normal", "TrialSucceeded", "t-t0")
    recorded = datetime.now().astimezone()
    kube.released.set()
    recorder.close(timeout=5)
    assert [reason for _, reason, _ in kube.posted] == ["Started", "TrialSucceeded"]
    assert all(before <= at <= recorded for _, _, at in kube.posted)


def test_a_refused_event_is_dropped_and_later_ones_still_posted(caplog: Any) -> None:
    kube = RecordingKube()
    recorder = EventRecorder(kube)  # type: ignore[arg-type]
    recorder.record(TASK, "Warning", "Refused", "no rights")
    recorder.record(TASK, "Normal", "Promoted", "iteration 1")
    recorder.close(timeout=5)
    assert [reason for _, reason, _ in kube.posted] == ["Promoted"]
    (record,) = [r for r in caplog.records if "not recorded" in r.getMessage()]
    assert record.getMessage().startswith("Event Refused not recorded")
    assert object_ref(record) == {"namespace": "ns", "name": "t"}


def test_recording_does_not_wait_for_the_apiserver() -> None:
    kube = RecordingKube()
    kube.released.clear()
    recorder = EventRecorder(kube)  # type: ignore[arg-type]
    for index in range(100):
        recorder.record(TASK, "Normal", "TrialSucceeded", f"t-t{index}")
    assert kube.posted == []
    kube.released.set()
    recorder.close(timeout=5)
    assert len(kube.posted) == 100
