"""Reading a profiler trace: where the GPU waits."""

from __future__ import annotations

from trace_timeline import idle_sites


def _event(name: str, start: float, duration: float) -> dict[str, object]:
    return {"name": name, "ts": start, "dur": duration}


def test_idle_sites_sum_the_gaps_between_the_named_neighbours_per_step() -> None:
    # two steps of: forward, a gap of 300 us, loss, an overlapped copy, a gap of 100 us, step
    work = []
    for step in range(2):
        t = step * 10_000.0
        work += [
            _event("forward", t, 1_000),
            _event("loss", t + 1_300, 500),
            _event("copy", t + 1_400, 100),  # inside the loss: no gap
            _event("optimizer", t + 1_900, 200),
        ]
    sites = idle_sites(work, steps=2)
    assert sites[0] == (7.9 / 2, 0.5, "optimizer -> forward")  # one gap of 7.9 ms in two steps
    assert sites[1:] == [(0.3, 1.0, "forward -> loss"), (0.1, 1.0, "loss -> optimizer")]
