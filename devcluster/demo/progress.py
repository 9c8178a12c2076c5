"""Pure rendering of a FineTuningTask's progress and final summary as text tables.

The demo polls the task's status and each running trial's progress file; these functions
turn what it read into lines, so the display is tested without a cluster.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any


def _seconds(trial: Mapping[str, Any]) -> str:
    start, end = trial.get("startedAt"), trial.get("finishedAt")
    if not start or not end:
        return ""
    elapsed = datetime.fromisoformat(end.replace("Z", "+00:00")) - datetime.fromisoformat(
        start.replace("Z", "+00:00")
    )
    return f"{elapsed.total_seconds():.0f}s"


def _parameters(trial: Mapping[str, Any]) -> str:
    return " ".join(
        f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}"
        for k, v in sorted((trial.get("parameters") or {}).items())
    )


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    widths = [max(len(str(c)) for c in column) for column in zip(header, *rows, strict=False)]
    return [
        "  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=False)).rstrip()
        for row in [header, *rows]
    ]


def _metric_change(before: float | None, after: float | None) -> str:
    if before is None and after is None:
        return ""
    left = f"{before:.4f}" if before is not None else "?"
    right = f"{after:.4f}" if after is not None else "…"
    return f"{left} → {right}"


def progress_lines(
    task: Mapping[str, Any], progress: Mapping[str, Mapping[str, Any]], metric: str
) -> list[str]:
    """The live view: one line for the task, one per trial with step/total and metric."""
    status = task.get("status") or {}
    name = task["metadata"]["name"]
    head = (
        f"{name}: {status.get('phase', 'Pending')}"
        f"  iteration {status.get('iteration', '-')}"
        f"  trials {status.get('trialsSummary', '0/?')}"
    )
    rows = []
    for trial in status.get("trials") or []:
        live = progress.get(trial["name"]) or {}
        step, total = live.get("step"), live.get("total_steps")
        steps = f"{step}/{total}" if step is not None and total else ""
        if trial["phase"] == "Running" and live.get("phase") and live["phase"] != "training":
            steps = live["phase"]
        before = trial.get("baseline", (live.get("baseline_metrics") or {}).get(metric))
        after = trial.get("metric", (live.get("metrics") or {}).get(metric))
        rate = live.get("samples_per_second")
        speed = f"{rate:.0f}/s" if rate and trial["phase"] == "Running" else ""
        rows.append(
            [
                trial["name"],
                _parameters(trial),
                trial["phase"],
                steps,
                speed,
                _metric_change(before, after),
            ]
        )
    header = ["TRIAL", "PARAMETERS", "PHASE", "STEP", "SPEED", f"{metric} (base → now)"]
    return [head, *_table(header, rows)] if rows else [head]


def summary_lines(task: Mapping[str, Any], metric: str) -> list[str]:
    """The final table: trial, parameters, metric before → after, time; the winner marked."""
    status = task.get("status") or {}
    best = (status.get("bestTrial") or {}).get("name")
    rows = []
    for trial in status.get("trials") or []:
        mark = "*" if trial["name"] == best else ""
        outcome = _metric_change(trial.get("baseline"), trial.get("metric"))
        if trial["phase"] != "Succeeded":
            outcome = f"{trial['phase']}: {(trial.get('message') or '')[:60]}"
        rows.append([mark + trial["name"], _parameters(trial), outcome, _seconds(trial)])
    return _table(["TRIAL", "PARAMETERS", f"{metric} BEFORE → AFTER", "TIME"], rows)
