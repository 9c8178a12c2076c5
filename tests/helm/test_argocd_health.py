"""docs/argocd-health.lua, run with Lua (lupa) as Argo CD runs it: on the objects real
tasks went through under the chart's operator, and on the corner cases a run does not
reach (a stale observedGeneration, a suspended running task, an invalid spec)."""

from __future__ import annotations

from typing import Any

import lupa
import pytest

from tests.helm.conftest import REPO, ChartRun

SCRIPT = (REPO / "docs" / "argocd-health.lua").read_text()


def health(obj: dict[str, Any]) -> tuple[str, str]:
    """(status, message) as Argo CD would show them."""
    lua = lupa.LuaRuntime(unpack_returned_tuples=True)
    lua.globals().obj = lua.table_from(obj, recursive=True)
    result = lua.execute(SCRIPT)
    return str(result["status"]), str(result["message"])


def _obj(kind: str, generation: int, status: dict[str, Any] | None, **spec: Any) -> dict:
    body: dict[str, Any] = {
        "apiVersion": "kubetune.dev/v1alpha1",
        "kind": kind,
        "metadata": {"name": "x", "generation": generation},
        "spec": spec,
    }
    if status is not None:
        body["status"] = status
    return body


def _cond(type_: str, status: str, reason: str, message: str = "") -> dict[str, str]:
    return {"type": type_, "status": status, "reason": reason, "message": message}


@pytest.mark.parametrize(
    ("obj", "expected"),
    [
        (_obj("FineTuningTask", 1, None), "Progressing"),
        (
            _obj("FineTuningTask", 2, {"observedGeneration": 1, "conditions": [
                _cond("Succeeded", "True", "Promoted")]}),
            "Progressing",
        ),
        (
            _obj("FineTuningTask", 2, {"observedGeneration": 2, "conditions": [
                _cond("Running", "True", "TrialsRunning")]}, suspend=True),
            "Suspended",
        ),
        (
            _obj("FineTuningTask", 1, {"observedGeneration": 1, "conditions": [
                _cond("InputsReady", "False", "InvalidSpec", "bad grid")]}),
            "Degraded",
        ),
        (
            _obj("FineTuningTask", 1, {"observedGeneration": 1, "conditions": [
                _cond("InputsReady", "False", "StorageNotConfigured")]}),
            "Degraded",
        ),
        (
            _obj("FineTuningTask", 3, {"observedGeneration": 3, "conditions": [
                _cond("Canceled", "True", "Suspended"), _cond("Running", "False", "Suspended")]}),
            "Suspended",
        ),
        (_obj("TunedModel", 1, {"observedGeneration": 1}), "Progressing"),
        (
            _obj("TunedModel", 1, {"observedGeneration": 1, "conditions": [
                _cond("Ready", "False", "SomethingBroke", "broken")]}),
            "Degraded",
        ),
    ],
)  # fmt: skip
def test_corner_cases(obj: dict[str, Any], expected: str) -> None:
    assert health(obj)[0] == expected


EXPECTED_TASKS = {
    "minilm-first": "Healthy",
    "support-search-lr-sweep": "Healthy",
    "ci-docs-search-weekly": "Healthy",
    "health-failed": "Degraded",
    "health-bad-secret": "Degraded",
    "health-suspended": "Suspended",
    "health-no-model": "Progressing",
    "health-waiting": "Progressing",
    "health-no-image": "Progressing",
    "health-deadline": "Degraded",
}
"""How each task of the chart run ends, in Argo CD's words."""


def _history(run: ChartRun, kind: str) -> dict[str, list[tuple[str, str]]]:
    """Per object: its health (status, message) at each version seen, repeats dropped."""
    history: dict[str, list[tuple[str, str]]] = {}
    ordered = sorted(run.snapshots, key=lambda s: int(s["metadata"]["resourceVersion"]))
    for snapshot in ordered:
        if snapshot["kind"] != kind:
            continue
        states = history.setdefault(snapshot["metadata"]["name"], [])
        state = health(snapshot)
        if not states or states[-1] != state:
            states.append(state)
    return history


def test_real_tasks_progress_then_settle(chart_run: ChartRun) -> None:
    history = _history(chart_run, "FineTuningTask")
    assert history.keys() == EXPECTED_TASKS.keys()
    for name, final in EXPECTED_TASKS.items():
        statuses = [s for s, _ in history[name]]
        assert statuses[-1] == final, (name, history[name])
        assert set(statuses[:-1]) <= {"Progressing"}, (name, history[name])
    assert "Progressing" in [s for s, _ in history["support-search-lr-sweep"]]
    failed_message = history["health-failed"][-1][1]
    assert failed_message, history["health-failed"]
    assert "absent" in history["health-bad-secret"][-1][1]
    assert "waiting, health-waiting-t0: FailedCreate" in history["health-waiting"][-1][1]
    assert "waiting, health-no-image-t0: ErrImageNeverPull" in history["health-no-image"][-1][1]


def test_real_models_are_healthy_with_or_without_an_iteration(chart_run: ChartRun) -> None:
    history = _history(chart_run, "TunedModel")
    for name in ("minilm", "support-search", "ci-docs-search"):
        assert history[name][-1][0] == "Healthy"
        assert history[name][-1][1].startswith("iteration 1:"), history[name]
    for name in ("health", "health-bad-secret"):
        assert history[name][-1] == (
            "Healthy",
            "no iteration promoted yet; tasks start from the base model",
        )
