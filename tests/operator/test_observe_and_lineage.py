"""Reading Jobs into observations, and the TunedModel's own decisions."""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta

import pytest

from kubetune.api import FineTuningTaskStatus, PromotedIteration, TrialStatus, TunedModelStatus
from kubetune.api import conditions as c
from kubetune.decide import (
    DeleteStorage,
    DropIterations,
    ReserveIteration,
    UpdateLineage,
    apply_to_model,
    decide_model,
    deletion_actions,
    events_needed,
    observe_job,
    pods_needed,
)
from tests.operator.builders import DEFAULTS, NOW, model


def job(conditions=(), **status) -> dict:
    return {
        "metadata": {
            "name": "tune-t2",
            "labels": {"kubetune.dev/trial": "2", "kubetune.dev/attempt": "1"},
        },
        "status": {"conditions": list(conditions), "startTime": "2025-01-01T12:00:00Z", **status},
    }


def pod(exit_code: int, message: str) -> dict:
    terminated = {"exitCode": exit_code, "message": message}
    return {
        "status": {
            "phase": "Failed",
            "startTime": "2025-01-01T12:00:01Z",
            "containerStatuses": [{"name": "trainer", "state": {"terminated": terminated}}],
        }
    }


@pytest.mark.parametrize(
    ("the_job", "pods", "phase", "exit_code", "reason"),
    [
        (job(), [], "Pending", None, None),
        (job(ready=1), [], "Running", None, None),
        (
            job([{"type": "Complete", "status": "True"}], completionTime="2025-01-01T13:00:00Z"),
            [],
            "Succeeded",
            None,
            None,
        ),
        (
            job([{"type": "Failed", "status": "True", "reason": "PodFailurePolicy"}]),
            [pod(2, "BadInput: no column 'anchor'\n")],
            "Failed",
            2,
            "PodFailurePolicy",
        ),
    ],
    ids=["pending", "running", "complete", "failed"],
)
def test_observe_job(the_job, pods, phase, exit_code, reason):
    observed = observe_job(the_job, pods)
    assert (observed.name, observed.trial_index, observed.attempt) == ("tune-t2", 2, 1)
    assert (observed.phase, observed.exit_code, observed.reason) == (phase, exit_code, reason)
    assert observed.started_at == NOW
    if exit_code:
        assert observed.termination_message == "BadInput: no column 'anchor'"


def pending_pod(created: str, **status) -> dict:
    return {"metadata": {"creationTimestamp": created}, "status": {"phase": "Pending", **status}}


def waiting(reason: str, message: str = "") -> dict:
    state = {"waiting": {"reason": reason, "message": message}}
    return {"containerStatuses": [{"name": "trainer", "state": state}]}


def unscheduled(message: str) -> dict:
    condition = {"type": "PodScheduled", "status": "False", "reason": "Unschedulable"}
    return {"conditions": [condition | {"message": message}]}


def failed_create(at: str, message: str) -> dict:
    return {"reason": "FailedCreate", "lastTimestamp": at, "message": message}


@pytest.mark.parametrize(
    ("pods", "events", "expected"),
    [
        ([], [], (None, None)),
        (
            [],
            [
                failed_create("2025-01-01T12:00:02Z", "exceeded quota: gpus"),
                failed_create(
                    "2025-01-01T12:00:09Z", "(combined from similar events): violates PodSecurity"
                ),
            ],
            ("FailedCreate", "violates PodSecurity"),
        ),
        (
            [pending_pod("2025-01-01T12:00:01Z", **unscheduled("0/1 nodes: Insufficient gpu"))],
            [],
            ("Unschedulable", "0/1 nodes: Insufficient gpu"),
        ),
        (
            [
                pending_pod("2025-01-01T12:00:01Z", **waiting("ErrImagePull", "not found")),
                pending_pod("2025-01-01T12:00:05Z", **waiting("ImagePullBackOff", "back-off")),
            ],
            [],
            ("ImagePullBackOff", "back-off"),
        ),
        ([pending_pod("2025-01-01T12:00:01Z", **waiting("ContainerCreating"))], [], (None, None)),
    ],
    ids=["nothing-yet", "refused", "unschedulable", "image", "starting"],
)
def test_a_pending_job_says_why_its_pod_does_not_run(pods, events, expected):
    observed = observe_job(job(), pods, events)
    assert (observed.waiting_reason, observed.waiting_message) == expected
    running = observe_job(job(ready=1), pods, events)
    assert running.waiting_reason is None


@pytest.mark.parametrize(
    ("the_job", "trial_phase", "needed"),
    [
        (job(), "Pending", True),
        (job(ready=1), "Running", False),
        (job([{"type": "Complete", "status": "True"}]), "Running", False),
        (job([{"type": "Failed", "status": "True"}]), "Running", True),
        (job([{"type": "Failed", "status": "True"}]), "Failed", False),
    ],
)
def test_pods_are_read_for_a_trial_that_waits_or_has_just_failed(the_job, trial_phase, needed):
    trial = TrialStatus(
        index=2, name="tune-t2", phase=trial_phase, checkpoint_uri="s3://bucket/it/trials/2/ckpt/"
    )
    status = FineTuningTaskStatus(trials=[trial])
    assert pods_needed(status, [observe_job(the_job)], NOW) is needed


def suspended_job(queue: str | None) -> dict:
    body = job() | {"spec": {"suspend": True}}
    if queue:
        body["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] = queue
    return body


def test_a_suspended_job_waits_for_its_queue():
    queued = observe_job(suspended_job("gpus"))
    assert (queued.phase, queued.waiting_reason) == ("Pending", "Suspended")
    assert queued.waiting_message == "the Job is suspended: it waits for admission by queue gpus"
    unqueued = observe_job(suspended_job(None))
    assert unqueued.waiting_message == (
        "the Job is suspended: it waits for whoever suspended it to resume it"
    )
    assert events_needed([queued], {}, NOW) == []


def test_events_are_read_only_for_a_pending_job_without_pods():
    pending, running = observe_job(job()), observe_job(job(ready=1))
    assert events_needed([pending], {}, NOW) == ["tune-t2"]
    assert events_needed([pending], {"tune-t2": [pending_pod("2025-01-01T12:00:01Z")]}, NOW) == []
    assert events_needed([running], {}, NOW) == []


def test_a_job_just_created_is_given_time_before_its_pods_and_events_are_read():
    body = job()
    body["metadata"]["creationTimestamp"] = "2025-01-01T12:00:00Z"
    fresh = observe_job(body)
    trial = TrialStatus(
        index=2, name="tune-t2", phase="Pending", checkpoint_uri="s3://bucket/it/trials/2/ckpt/"
    )
    status = FineTuningTaskStatus(trials=[trial])
    soon, later = NOW + timedelta(seconds=9), NOW + timedelta(seconds=10)
    assert not pods_needed(status, [fresh], soon) and pods_needed(status, [fresh], later)
    assert events_needed([fresh], {}, soon) == [] and events_needed([fresh], {}, later) == [
        "tune-t2"
    ]


def entry(iteration: int) -> PromotedIteration:
    return PromotedIteration(
        iteration=iteration,
        uri=f"s3://models/kubetune/team/minilm/iterations/{iteration}/model/",
        metric="ndcg@10",
        value=0.9,
        source_task="t",
        source_trial="t-t0",
        promoted_at=NOW + timedelta(hours=iteration),
    )


def test_model_actions_are_idempotent():
    status = TunedModelStatus()
    for action in (
        ReserveIteration("minilm", 1, "1"),
        UpdateLineage("minilm", entry(1)),
        ReserveIteration("minilm", 2, "2"),
        UpdateLineage("minilm", entry(2)),
    ):
        once = apply_to_model(status, action)
        assert apply_to_model(once, action) == once
        status = once
    assert status.last_iteration == 2 and status.current_iteration == entry(2)
    assert [e.iteration for e in status.history] == [2, 1]
    dropped = apply_to_model(status, DropIterations("minilm", (1,)))
    assert [e.iteration for e in dropped.history] == [2]


@pytest.mark.parametrize(
    ("retention", "history", "deleted"),
    [(1, [3, 2, 1], [2, 1]), (2, [3, 2, 1], [1]), (3, [3, 2, 1], []), (1, [], [])],
)
def test_decide_model_retention_and_ready(retention, history, deleted):
    entries = [entry(i) for i in history]
    status = TunedModelStatus(
        current_iteration=entries[0] if entries else None, history=entries, last_iteration=3
    )
    decision = decide_model(model(status, retention=retention), DEFAULTS, NOW)
    uris = [a.uri for a in decision.actions if isinstance(a, DeleteStorage)]
    assert uris == [f"s3://models/kubetune/team/minilm/iterations/{i}/" for i in deleted]
    assert [e.iteration for e in decision.status.history] == history[: len(history) - len(deleted)]
    ready = c.get_condition(decision.status.conditions, c.READY)
    assert ready is not None and ready.status == ("True" if history else "False")
    assert decision.status.observed_generation == 1


def test_never_deletes_current_even_if_history_is_odd():
    current = entry(3)
    status = TunedModelStatus(current_iteration=current, history=[entry(4), current])
    decision = decide_model(model(status), DEFAULTS, NOW)
    assert decision.actions == ()


def test_deletion_removes_storage_only_when_asked():
    kept = model()
    assert deletion_actions(kept, DEFAULTS) == ()
    deleting = replace(kept, spec=kept.spec.model_copy(update={"delete_storage_on_delete": True}))
    (action,) = deletion_actions(deleting, DEFAULTS)
    assert isinstance(action, DeleteStorage)
    assert action.uri == "s3://models/kubetune/team/minilm/"
