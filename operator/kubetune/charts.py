"""A task's trials as one picture: the objective metric over training steps, one line per
trial, the promoted trial drawn bold. The operator logs it to the task's MLflow experiment
when the task succeeds, so the MLflow UI shows the iteration at a glance.
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence

import matplotlib

matplotlib.use("Agg")  # no display: render straight to PNG
import matplotlib.pyplot as plt


def trial_metric_chart(
    title: str,
    metric: str,
    histories: Mapping[str, Sequence[tuple[int, float]]],
    winner: str | None,
) -> bytes:
    """PNG bytes: `histories` maps trial name -> (step, value) points."""
    figure, axes = plt.subplots(figsize=(8, 4.5), dpi=110)
    try:
        for name, points in sorted(histories.items()):
            if not points:
                continue
            steps, values = zip(*sorted(points), strict=True)
            best = name == winner
            axes.plot(
                steps,
                values,
                marker="o",
                linewidth=2.8 if best else 1.2,
                alpha=1.0 if best else 0.65,
                label=f"{name} (promoted)" if best else name,
                zorder=3 if best else 2,
            )
        axes.set_title(title)
        axes.set_xlabel("training step")
        axes.set_ylabel(metric)
        axes.grid(True, alpha=0.3)
        if axes.get_lines():
            axes.legend(fontsize="small", loc="best")
        figure.tight_layout()
        buffer = io.BytesIO()
        figure.savefig(buffer, format="png")
        return buffer.getvalue()
    finally:
        plt.close(figure)
