"""Turn a trial Job (and its Pods) as read from the apiserver into an `ObservedJob`.

Pure parsing, so the handlers stay thin and the rules (which condition means done, where
the exit code and the termination message are) are tested here.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any, cast

from kubetune.api import FineTuningTaskSpec, FineTuningTaskStatus
from kubetune.contract import PROGRESS_FILENAME, RESULT_FILENAME, sibling_uri
from kubetune.decide.inputs import JobPhase, ObservedJob
from kubetune.manifests import CONTAINER, LABEL_ATTEMPT, LABEL_KUEUE_QUEUE, LABEL_TRIAL


def _time(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value.replace("Z", "+00:00")) if value else None


def _condition(job: Mapping[str, Any], type_: str) -> Mapping[str, Any] | None:
    for condition in (job.get("status") or {}).get("conditions") or []:
        if condition.get("type") == type_ and condition.get("status") == "True":
            return cast(Mapping[str, Any], condition)
    return None


def _terminated(pods: Sequence[Mapping[str, Any]]) -> Mapping[str, Any] | None:
    """The trainer container's termination state in the most recently started Pod."""
    ordered = sorted(pods, key=lambda p: (p.get("status") or {}).get("startTime") or "")
    for pod in reversed(ordered):
        for status in (pod.get("status") or {}).get("containerStatuses") or []:
            if status.get("name") == CONTAINER:
                terminated = (status.get("state") or {}).get("terminated")
                if terminated:
                    return cast(Mapping[str, Any], terminated)
    return None


def _pod_running(pods: Sequence[Mapping[str, Any]]) -> bool:
    return any((p.get("status") or {}).get("phase") == "Running" for p in pods)


FAILED_CREATE = "FailedCreate"
"""The Job controller's event reason when the apiserver refused it a Pod."""
SUSPENDED = "Suspended"
"""The waiting reason of a trial whose Job is suspended (queued in Kueue)."""
AGGREGATED = "(combined from similar events): "
"""What the event recorder puts before a message once it has combined repeated events."""
STARTING_REASONS = frozenset({"ContainerCreating", "PodInitializing"})
"""Container waiting reasons of a Pod on its way to run: nothing to report."""


def _pod_waiting(pod: Mapping[str, Any]) -> tuple[str, str] | None:
    """Why a Pending Pod does not run: not scheduled (no node fits, a quota on nodes), or its
    trainer container waits (an image that cannot be pulled, a missing Secret)."""
    status = pod.get("status") or {}
    for condition in status.get("conditions") or []:
        if condition.get("type") == "PodScheduled" and condition.get("status") == "False":
            return condition.get("reason") or "Unschedulable", condition.get("message") or ""
    for container in status.get("containerStatuses") or []:
        waiting = (container.get("state") or {}).get("waiting") or {}
        reason = waiting.get("reason")
        if container.get("name") == CONTAINER and reason and reason not in STARTING_REASONS:
            return reason, waiting.get("message") or ""
    return None


def _creation_failure(events: Sequence[Mapping[str, Any]]) -> tuple[str, str] | None:
    """The Job controller's latest refusal to create a Pod (admission: a quota, Pod
    Security), which leaves no Pod to look at."""
    failures = [e for e in events if e.get("reason") == FAILED_CREATE]
    if not failures:
        return None
    latest = max(failures, key=lambda e: e.get("lastTimestamp") or e.get("eventTime") or "")
    return FAILED_CREATE, (latest.get("message") or "").removeprefix(AGGREGATED)


def _suspended(job: Mapping[str, Any]) -> tuple[str, str] | None:
    """A suspended Job creates no Pod: Kueue holds a queued trial's Job so until it admits
    it (`trainer.queueName`)."""
    if not (job.get("spec") or {}).get("suspend"):
        return None
    queue = (job["metadata"].get("labels") or {}).get(LABEL_KUEUE_QUEUE)
    waits_for = f"admission by queue {queue}" if queue else "whoever suspended it to resume it"
    return SUSPENDED, f"the Job is suspended: it waits for {waits_for}"


def _waiting(
    job: Mapping[str, Any], pods: Sequence[Mapping[str, Any]], events: Sequence[Mapping[str, Any]]
) -> tuple[str, str] | None:
    suspended = _suspended(job)
    if suspended is not None:
        return suspended
    if not pods:
        return _creation_failure(events)
    latest = max(pods, key=lambda p: p["metadata"].get("creationTimestamp") or "")
    return _pod_waiting(latest)


def observe_job(
    job: Mapping[str, Any],
    pods: Sequence[Mapping[str, Any]] = (),
    events: Sequence[Mapping[str, Any]] = (),
) -> ObservedJob:
    """The trial Job's state; `pods` are the Job's Pods (for exit code and message, and why a
    Pending Job's Pod does not run), `events` its Job controller's events (why it has none)."""
    meta = job["metadata"]
    status = job.get("status") or {}
    labels = meta.get("labels") or {}
    complete = _condition(job, "Complete")
    failed = _condition(job, "Failed")
    phase: JobPhase
    if complete is not None:
        phase = "Succeeded"
    elif failed is not None:
        phase = "Failed"
    elif status.get("ready") or _pod_running(pods):
        phase = "Running"
    else:
        phase = "Pending"
    terminated = _terminated(pods)
    ended = complete or failed
    waiting = _waiting(job, pods, events) if phase == "Pending" else None
    return ObservedJob(
        name=meta["name"],
        trial_index=int(labels.get(LABEL_TRIAL, -1)),
        attempt=int(labels.get(LABEL_ATTEMPT, 1)),
        phase=phase,
        created_at=_time(meta.get("creationTimestamp")),
        started_at=_time(status.get("startTime")),
        finished_at=_time(status.get("completionTime") or (ended or {}).get("lastTransitionTime")),
        exit_code=terminated.get("exitCode") if terminated else None,
        reason=failed.get("reason") if failed else None,
        termination_message=(terminated.get("message") or "").strip() or None
        if terminated
        else None,
        deleting=bool(meta.get("deletionTimestamp")),
        waiting_reason=waiting[0] if waiting else None,
        waiting_message=(waiting[1].strip() or None) if waiting else None,
    )


WAIT_GRACE = timedelta(seconds=10)
"""How long a Job may be Pending before the operator looks for why: a Pod normally starts
or is refused within it, and reading Pods and Events for every Job just created would
cost requests at every reconcile of a busy cluster."""


def _waited(job: ObservedJob, now: datetime) -> bool:
    return (
        job.phase == "Pending"
        and not job.deleting
        and (job.created_at is None or now - job.created_at >= WAIT_GRACE)
    )


def pods_needed(status: FineTuningTaskStatus, jobs: Sequence[ObservedJob], now: datetime) -> bool:
    """Whether to read the task's Pods: only for what a Job does not say itself, the exit
    code and termination message of a trial that has just failed, and why a trial's Pod
    has not run for `WAIT_GRACE` (a Job reports running Pods in `status.ready`)."""
    unfinished = {t.name for t in status.trials if t.phase in ("Pending", "Running")}
    return any(
        job.name in unfinished and (job.phase == "Failed" or _waited(job, now)) for job in jobs
    )


def events_needed(
    jobs: Sequence[ObservedJob], pods: Mapping[str, Sequence[Any]], now: datetime
) -> list[str]:
    """The Jobs Pending for `WAIT_GRACE` without a Pod, given each Job's Pods by Job name:
    their events say why the Job controller could not create one (a suspended Job creates
    none)."""
    return [
        job.name
        for job in jobs
        if _waited(job, now) and not pods.get(job.name) and job.waiting_reason != SUSPENDED
    ]


def results_to_read(
    status: FineTuningTaskStatus, jobs: Sequence[ObservedJob]
) -> list[tuple[str, str]]:
    """(Job name, result.json URI) of succeeded Jobs whose trial has no result recorded:
    the handler reads these and passes them as `ObservedJob.result`."""
    unfinished = {t.name: t for t in status.trials if t.phase in ("Pending", "Running")}
    return [
        (job.name, sibling_uri(unfinished[job.name].checkpoint_uri, RESULT_FILENAME))
        for job in jobs
        if job.phase == "Succeeded" and job.name in unfinished
    ]


def progress_to_read(
    spec: FineTuningTaskSpec, status: FineTuningTaskStatus, jobs: Sequence[ObservedJob]
) -> list[tuple[str, str]]:
    """(Job name, progress.json URI) of the unfinished trials whose Job runs or just
    succeeded, when the task stops trials early: the handler passes what it reads as
    `ObservedJob.progress` (for a finished trial, its last evaluations)."""
    if spec.hyperparameters.early_stopping is None:
        return []
    unfinished = {t.name: t for t in status.trials if t.phase in ("Pending", "Running")}
    return [
        (job.name, sibling_uri(unfinished[job.name].checkpoint_uri, PROGRESS_FILENAME))
        for job in jobs
        if job.phase in ("Running", "Succeeded") and job.name in unfinished and not job.deleting
    ]
