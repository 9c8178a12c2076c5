"""Unit tests of the demo's progress and summary tables."""

from __future__ import annotations

from devcluster.demo.progress import progress_lines, summary_lines

TASK = {
    "metadata": {"name": "quick"},
    "status": {
        "phase": "Running",
        "iteration": 1,
        "trialsSummary": "1/2",
        "bestTrial": {"name": "quick-t0"},
        "trials": [
            {
                "name": "quick-t0",
                "parameters": {"learningRate": 3e-05},
                "phase": "Succeeded",
                "baseline": 0.9224,
                "metric": 0.9312,
                "startedAt": "2026-01-01T00:00:00Z",
                "finishedAt": "2026-01-01T00:01:05Z",
            },
            {"name": "quick-t1", "parameters": {"learningRate": 0.0001}, "phase": "Running"},
        ],
    },
}


def test_progress_shows_step_speed_and_metric_of_running_trials() -> None:
    progress = {
        "quick-t1": {
            "phase": "training",
            "step": 3,
            "total_steps": 4,
            "samples_per_second": 12.3,
            "baseline_metrics": {"ndcg@10": 0.9224},
            "metrics": {"ndcg@10": 0.93},
        }
    }
    lines = progress_lines(TASK, progress, "ndcg@10")
    assert lines[0] == "quick: Running  iteration 1  trials 1/2"
    assert lines[1].split() == [
        "TRIAL",
        "PARAMETERS",
        "PHASE",
        "STEP",
        "SPEED",
        "ndcg@10",
        "(base",
        "→",
        "now)",
    ]
    assert lines[2].split() == [
        "quick-t0",
        "learningRate=3e-05",
        "Succeeded",
        "0.9224",
        "→",
        "0.9312",
    ]
    assert lines[3].split() == [
        "quick-t1",
        "learningRate=0.0001",
        "Running",
        "3/4",
        "12/s",
        "0.9224",
        "→",
        "0.9300",
    ]


def test_summary_marks_the_winner_and_reports_time() -> None:
    lines = summary_lines(TASK, "ndcg@10")
    assert lines[1].split() == ["*quick-t0", "learningRate=3e-05", "0.9224", "→", "0.9312", "65s"]
    assert lines[2].split()[:3] == ["quick-t1", "learningRate=0.0001", "Running:"]
