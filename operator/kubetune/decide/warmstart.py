"""Warm start: a new iteration first re-runs the best parameter sets of the last one.

The sets travel through `TunedModel.status` (`PromotedIteration.topTrials`, written when a
promotion points the lineage), not through the old FineTuningTask, which may be deleted
by then. A new attempt picks the sets that still fit its search space and records them in
its own status, so later changes to the lineage cannot change its plan. Their re-run
results reach the sampler like any other trial's: the metrics of another starting model
are not comparable, a fresh measurement is.
"""

from __future__ import annotations

from collections.abc import Sequence

from kubetune.api import (
    MAX_WARM_START,
    FineTuningTaskSpec,
    ObjectiveSpec,
    ParamValue,
    RankedTrial,
    TrialStatus,
    TunedModelStatus,
    WarmStartStatus,
)
from kubetune.decide.study import fits


def _key(parameters: dict[str, ParamValue]) -> tuple[tuple[str, ParamValue], ...]:
    return tuple(sorted(parameters.items()))


def ranked(trials: Sequence[TrialStatus], objective: ObjectiveSpec) -> list[TrialStatus]:
    """Succeeded trials, best first by the objective; ties go to the lower index."""
    scored = [t for t in trials if t.phase == "Succeeded" and t.metric is not None]
    sign = -1.0 if objective.direction == "maximize" else 1.0
    return sorted(scored, key=lambda t: (sign * (t.metric or 0.0), t.index))


def top_trials(trials: Sequence[TrialStatus], objective: ObjectiveSpec) -> list[RankedTrial]:
    """What a promoted iteration keeps for the next one: its best distinct parameter sets."""
    seen: set[tuple[tuple[str, ParamValue], ...]] = set()
    top: list[RankedTrial] = []
    for trial in ranked(trials, objective):
        key = _key(trial.parameters)
        if key in seen or trial.metric is None:
            continue
        seen.add(key)
        top.append(RankedTrial(parameters=dict(trial.parameters), value=trial.metric))
    return top[:MAX_WARM_START]


def plan(spec: FineTuningTaskSpec, lineage: TunedModelStatus) -> WarmStartStatus | None:
    """The sets a new attempt re-runs first; None when there is nothing to start from (no
    promoted iteration, warm start off, grid search, or no set fits the space)."""
    hyper = spec.hyperparameters
    current = lineage.current_iteration
    if current is None or hyper.algorithm == "grid" or hyper.warm_start.top_k == 0:
        return None
    if not hyper.search_space:
        return None
    seen: set[tuple[tuple[str, ParamValue], ...]] = set()
    chosen: list[dict[str, ParamValue]] = []
    for entry in current.top_trials:
        key = _key(entry.parameters)
        if key in seen or not fits(entry.parameters, hyper.search_space):
            continue
        seen.add(key)
        chosen.append(dict(entry.parameters))
    chosen = chosen[: hyper.warm_start.top_k]
    return WarmStartStatus(iteration=current.iteration, parameters=chosen) if chosen else None
