"""The trial chart renders a PNG for any set of histories, empty ones included."""

from __future__ import annotations

from kubetune.charts import trial_metric_chart

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def test_chart_is_a_png_with_the_winner_highlighted() -> None:
    png = trial_metric_chart(
        "team/tune: ndcg@10 per trial",
        "ndcg@10",
        {"tune-t0": [(0, 0.82), (10, 0.90)], "tune-t1": [(0, 0.82), (10, 0.93)], "tune-t2": []},
        "tune-t1",
    )
    assert png.startswith(PNG_SIGNATURE)
    assert len(png) > 10_000


def test_chart_without_any_history_still_renders() -> None:
    assert trial_metric_chart("empty", "mrr@10", {}, None).startswith(PNG_SIGNATURE)
