"""The operator's Prometheus gauges, recomputed from what it last saw of each task."""

from __future__ import annotations

from kubetune.metrics import OperatorMetrics


def test_waiting_trials_are_counted_by_reason_and_drop_to_zero() -> None:
    metrics = OperatorMetrics()

    def waiting(reason: str) -> float | None:
        return metrics.registry.get_sample_value("kubetune_trials_waiting", {"reason": reason})

    metrics.task_state("team", "a", "Running", ("FailedCreate", "FailedCreate"))
    metrics.task_state("team", "b", "Running", ("Suspended",))
    assert (waiting("FailedCreate"), waiting("Suspended")) == (2, 1)
    assert metrics.registry.get_sample_value("kubetune_tasks", {"phase": "Running"}) == 2
    metrics.task_state("team", "a", "Running", ())
    metrics.task_state("team", "b", None)
    assert (waiting("FailedCreate"), waiting("Suspended")) == (0, 0)
    assert metrics.registry.get_sample_value("kubetune_tasks", {"phase": "Running"}) == 1
