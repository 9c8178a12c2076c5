"""Prometheus metrics of the operator, served on `KUBETUNE_METRICS_PORT`.

Task counts by phase are recomputed from what the operator last saw of each task, so
they are right again after a restart as soon as the initial listing is through.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from kubetune.api.conditions import PHASES


def operator_version() -> str:
    try:
        return version("kubetune")
    except PackageNotFoundError:  # run from a source tree that is not installed
        return "unknown"


@dataclass
class OperatorMetrics:
    registry: CollectorRegistry = field(default_factory=CollectorRegistry)

    def __post_init__(self) -> None:
        r = self.registry
        self.tasks = Gauge("kubetune_tasks", "FineTuningTasks by phase", ["phase"], registry=r)
        self.trials_started = Counter("kubetune_trials_started", "Trial Jobs created", registry=r)
        self.trials_finished = Counter(
            "kubetune_trials_finished", "Trials that ended, by outcome", ["outcome"], registry=r
        )
        self.trial_seconds = Histogram(
            "kubetune_trial_duration_seconds",
            "From a trial's start to its end (its Job's), by outcome",
            ["outcome"],
            buckets=(60, 300, 600, 1200, 1800, 3600, 7200, 14400, 28800, 86400),
            registry=r,
        )
        self.build_info = Gauge(
            "kubetune_build_info",
            "1, labelled with the operator's version",
            ["version"],
            registry=r,
        )
        self.build_info.labels(operator_version()).set(1)
        self.reconcile_seconds = Histogram(
            "kubetune_reconcile_duration_seconds", "Time of one reconcile", ["kind"], registry=r
        )
        self.promotion_seconds = Histogram(
            "kubetune_promotion_duration_seconds",
            "From the start of a promotion to the task's success",
            buckets=(0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600),
            registry=r,
        )
        self.reconcile_errors = Counter(
            "kubetune_reconcile_errors",
            "Reconciles that failed and were retried",
            ["kind"],
            registry=r,
        )
        self.leader = Gauge(
            "kubetune_leader", "1 while this replica holds the leader Lease", registry=r
        )
        self.trials_waiting = Gauge(
            "kubetune_trials_waiting",
            "Pending trials whose Pod does not run, by reason (FailedCreate, Suspended, ...)",
            ["reason"],
            registry=r,
        )
        self._phases: dict[tuple[str, str], str] = {}
        self._waiting: dict[tuple[str, str], tuple[str, ...]] = {}
        self._reasons: set[str] = set()
        self._lock = threading.Lock()

    def task_state(
        self, namespace: str, name: str, phase: str | None, waiting: tuple[str, ...] = ()
    ) -> None:
        """The task's phase and the waiting reasons of its Pending trials (None: the task is
        gone)."""
        key = (namespace, name)
        with self._lock:
            if phase is None:
                self._phases.pop(key, None)
                self._waiting.pop(key, None)
            else:
                self._phases[key] = phase
                self._waiting[key] = waiting
            counts: dict[str, int] = dict.fromkeys(PHASES, 0)
            for value in self._phases.values():
                counts[value] = counts.get(value, 0) + 1
            reasons = [reason for reasons in self._waiting.values() for reason in reasons]
            self._reasons.update(reasons)
            waiting_counts = {reason: reasons.count(reason) for reason in self._reasons}
        for phase_name, count in counts.items():
            self.tasks.labels(phase_name).set(count)
        for reason, count in waiting_counts.items():
            self.trials_waiting.labels(reason).set(count)

    def trial_finished(self, outcome: str, seconds: float | None) -> None:
        """A trial ended; `seconds` from its start, when both ends are known."""
        self.trials_finished.labels(outcome).inc()
        if seconds is not None:
            self.trial_seconds.labels(outcome).observe(seconds)

    def serve(self, port: int) -> None:
        start_http_server(port, registry=self.registry)


METRICS = OperatorMetrics()
