"""The operator's Prometheus gauges, recomputed from what it last saw of each task."""

from __future__ import annotations

from importlib.metadata import version

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


def test_a_finished_trial_is_counted_and_timed_by_outcome() -> None:
    metrics = OperatorMetrics()
    metrics.trial_finished("succeeded", 1500.0)
    metrics.trial_finished("failed", None)  # never started: counted, not timed
    sample = metrics.registry.get_sample_value
    assert sample("kubetune_trials_finished_total", {"outcome": "succeeded"}) == 1
    assert sample("kubetune_trials_finished_total", {"outcome": "failed"}) == 1
    assert sample("kubetune_trial_duration_seconds_count", {"outcome": "succeeded"}) == 1
    assert (
        sample("kubetune_trial_duration_seconds_bucket", {"outcome": "succeeded", "le": "1800.0"})
        == 1
    )
    assert (
        sample("kubetune_trial_duration_seconds_bucket", {"outcome": "succeeded", "le": "1200.0"})
        == 0
    )
    assert sample("kubetune_trial_duration_seconds_count", {"outcome": "failed"}) is None


def test_the_build_info_names_the_installed_version() -> None:
    metrics = OperatorMetrics()
    installed = {"version": version("kubetune")}
    assert metrics.registry.get_sample_value("kubetune_build_info", installed) == 1
