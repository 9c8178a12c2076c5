"""Per-step figures of a PyTorch profiler trace (Chrome format): wall time, GPU busy time,
NCCL time exposed and not, and where the GPU waited (idle sites).

Why: `bench/trainer_speed.py --profile` prints these for the trace it writes; this reads any
such trace again, e.g. one kept from an earlier GPU session:

    python bench/trace_timeline.py traces/trace-bert-base-1gpu.json.gz --steps 5
"""

from __future__ import annotations

import argparse
import gzip
import json
from pathlib import Path
from typing import Any


def _union(intervals: list[tuple[float, float]]) -> float:
    """Total length of the union of [start, end) intervals."""
    total, reach = 0.0, float("-inf")
    for start, end in sorted(intervals):
        if end > reach:
            total += end - max(start, reach)
            reach = end
    return total


GAP_SITES = 8
"""How many of the largest idle sites `_timeline` names."""


def idle_sites(work: list[dict[str, Any]], steps: int) -> list[tuple[float, float, str]]:
    """Where the GPU waits: the time between the end of a kernel (or copy) and the start of
    the next when nothing runs between them, summed by the pair of names around it, in
    milliseconds per step, with how many such gaps a step has, largest first."""
    by_start = sorted(work, key=lambda event: event["ts"])
    sites: dict[str, list[float]] = {}
    reach = by_start[0]["ts"] + by_start[0]["dur"]
    last = by_start[0]["name"]
    for event in by_start[1:]:
        if event["ts"] > reach:
            site = f"{last[:60]} -> {event['name'][:60]}"
            sites.setdefault(site, []).append(event["ts"] - reach)
        if event["ts"] + event["dur"] >= reach:
            reach, last = event["ts"] + event["dur"], event["name"]
    ranked = sorted(sites.items(), key=lambda item: -sum(item[1]))
    return [(sum(gaps) / (1e3 * steps), len(gaps) / steps, site) for site, gaps in ranked]


def timeline(trace: Path, steps: int) -> dict[str, Any]:
    """Per-step milliseconds from a Chrome trace: wall (first to last kernel), some kernel
    running, NCCL running, NCCL running while no compute kernel does (exposed), and the
    largest idle sites (`idle_sites`)."""
    opener = gzip.open if trace.suffix == ".gz" else open
    with opener(trace, "rt") as text:
        events = json.load(text)["traceEvents"]
    device_work = [
        e for e in events if e.get("cat") in ("kernel", "gpu_memcpy", "gpu_memset") and "dur" in e
    ]
    kernels = [e for e in device_work if e["cat"] == "kernel"]
    spans = [(e["ts"], e["ts"] + e["dur"]) for e in kernels]
    nccl = [(e["ts"], e["ts"] + e["dur"]) for e in kernels if "nccl" in e["name"].lower()]
    compute = [(e["ts"], e["ts"] + e["dur"]) for e in kernels if "nccl" not in e["name"].lower()]
    wall = max(end for _, end in spans) - min(start for start, _ in spans)
    exposed = _union(spans) - _union(compute)
    per_step = 1e3 * steps  # trace times are microseconds
    return {
        "wall_ms": wall / per_step,
        "gpu_busy_ms": _union(spans) / per_step,
        "compute_busy_ms": _union(compute) / per_step,
        "nccl_ms": _union(nccl) / per_step,
        "nccl_exposed_ms": exposed / per_step,
        "kernels_per_step": len(compute) / steps,
        "idle_sites": [
            [round(ms, 3), round(count, 1), site]
            for ms, count, site in idle_sites(device_work, steps)[:GAP_SITES]
        ],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("trace", type=Path, help="a Chrome trace, .json or .json.gz")
    parser.add_argument("--steps", type=int, required=True, help="training steps it holds")
    args = parser.parse_args()
    print(json.dumps(timeline(args.trace, args.steps), indent=1))


if __name__ == "__main__":
    main()
