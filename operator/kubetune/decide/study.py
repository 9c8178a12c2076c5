"""Optuna inside a pure decision: TPE suggestions and median stopping, rebuilt from status.

The operator keeps no study: every call builds a throw-away in-memory Optuna study from the
trials recorded in the task's status (succeeded ones as COMPLETE, pruned ones as PRUNED
with their intermediate values, unfinished ones as RUNNING so parallel suggestions spread
out), then asks it once (`TpeSampler`) or lets Optuna's `MedianPruner` judge a running
trial (`prune_decision`). The sampler's seed is derived from the task's seed and the
trial's index, so a suggestion is a function of (spec, recorded trials) only: a restarted
operator, or a second reconcile of the same status, asks the same question and gets the
same answer.
"""

from __future__ import annotations

import hashlib
import math
import statistics
from collections.abc import Mapping, Sequence
from typing import Literal

import optuna
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)
from optuna.trial import FrozenTrial, TrialState, create_trial

from kubetune.api import (
    EarlyStoppingSpec,
    ParamValue,
    PrunedAt,
    SearchParameter,
    SuggestionOrigin,
    TrialStatus,
)
from kubetune.decide.context import ACTIVE_TRIAL_PHASES

Direction = Literal["maximize", "minimize"]
Parameters = dict[str, ParamValue]

# A fresh study per decision would otherwise log "A new study created in memory" each time.
optuna.logging.set_verbosity(optuna.logging.WARNING)


def round_value(value: float) -> float:
    """Six significant digits: readable in status, identical on every platform."""
    return float(f"{value:.6g}")


def distribution(parameter: SearchParameter) -> BaseDistribution:
    """The Optuna distribution of one searched parameter."""
    if parameter.categorical is not None:
        return CategoricalDistribution(list(parameter.categorical.values))
    if parameter.int_range is not None:
        r = parameter.int_range
        return IntDistribution(r.min, r.min + r.step * ((r.max - r.min) // r.step), step=r.step)
    assert parameter.float_range is not None
    f = parameter.float_range
    return FloatDistribution(f.min, f.max, log=f.log)


def fits(parameters: Mapping[str, ParamValue], space: Sequence[SearchParameter]) -> bool:
    """Whether `parameters` is a point of `space`: the same names, every value allowed."""
    if set(parameters) != {p.name for p in space}:
        return False
    return all(_allowed(parameters[p.name], p) for p in space)


def _allowed(value: ParamValue, parameter: SearchParameter) -> bool:
    if parameter.categorical is not None:
        return any(
            value == v and isinstance(value, bool) == isinstance(v, bool)
            for v in parameter.categorical.values
        )
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    if parameter.int_range is not None:
        r = parameter.int_range
        return isinstance(value, int) and r.min <= value <= r.max and (value - r.min) % r.step == 0
    assert parameter.float_range is not None
    return parameter.float_range.min <= value <= parameter.float_range.max


def _seed(seed: int, index: int) -> int:
    digest = hashlib.sha256(f"kubetune/tpe/{seed}/{index}".encode()).digest()
    return int.from_bytes(digest[:4], "big")


def _evaluations(trial: TrialStatus) -> dict[int, float]:
    return {e.step: e.value for e in trial.evaluations or [] if math.isfinite(e.value)}


def _as_optuna(
    trial: TrialStatus, distributions: Mapping[str, BaseDistribution]
) -> FrozenTrial | None:
    """The trial as Optuna sees it; None for what TPE ignores anyway (failed, canceled)."""
    params, known = dict(trial.parameters), dict(distributions)
    if trial.phase == "Succeeded" and trial.metric is not None:
        return create_trial(
            state=TrialState.COMPLETE,
            value=trial.metric,
            intermediate_values=_evaluations(trial),
            params=params,
            distributions=known,
        )
    if trial.phase == "Pruned":
        return create_trial(
            state=TrialState.PRUNED,
            intermediate_values=_evaluations(trial),
            params=params,
            distributions=known,
        )
    if trial.phase in ACTIVE_TRIAL_PHASES:
        return create_trial(state=TrialState.RUNNING, params=params, distributions=known)
    return None


class TpeSampler:
    """Optuna's TPE through ask-and-tell, over a study rebuilt from the recorded trials.

    Trials whose parameters are not a point of the current space (impossible unless the
    spec changed under a running attempt) are left out of the study.
    """

    def __init__(
        self,
        space: Sequence[SearchParameter],
        seed: int,
        direction: Direction,
        *,
        multivariate: bool,
        startup_trials: int,
        size: int | None,
    ) -> None:
        self._space = list(space)
        self._size = size
        self._distributions: dict[str, BaseDistribution] = {p.name: distribution(p) for p in space}
        self._seed = seed
        self._direction = direction
        self._multivariate = multivariate
        self._startup_trials = startup_trials

    def size(self) -> int | None:
        """A fully discrete space's size (TPE would only repeat itself beyond it)."""
        return self._size

    def origin(self, trials: Sequence[TrialStatus]) -> SuggestionOrigin:
        """`random` while TPE is still drawing its startup trials (as Optuna counts them:
        succeeded and pruned trials), else `tpe`."""
        finished = sum(
            t.phase == "Pruned" or (t.phase == "Succeeded" and t.metric is not None)
            for t in trials
            if fits(t.parameters, self._space)
        )
        return "random" if finished < self._startup_trials else "tpe"

    def suggest(self, index: int, trials: Sequence[TrialStatus]) -> Parameters:
        sampler = optuna.samplers.TPESampler(
            seed=_seed(self._seed, index),
            multivariate=self._multivariate,
            n_startup_trials=self._startup_trials,
            constant_liar=True,
        )
        study = optuna.create_study(direction=self._direction, sampler=sampler)
        for trial in sorted(trials, key=lambda t: t.index):
            if not fits(trial.parameters, self._space):
                continue
            frozen = _as_optuna(trial, self._distributions)
            if frozen is not None:
                study.add_trial(frozen)
        asked = study.ask(self._distributions)
        return {p.name: self._clean(p, asked.params[p.name]) for p in self._space}

    @staticmethod
    def _clean(parameter: SearchParameter, value: ParamValue) -> ParamValue:
        """Round floats for status, and keep them inside the range after rounding."""
        f = parameter.float_range
        if f is None or not isinstance(value, float):
            return value
        return min(max(round_value(value), f.min), f.max)


def prune_decision(
    trial: TrialStatus,
    trials: Sequence[TrialStatus],
    rule: EarlyStoppingSpec,
    direction: Direction,
) -> PrunedAt | None:
    """Where to stop the running `trial`, or None to let it go on: Optuna's `MedianPruner`
    compares its best intermediate value with the median of the succeeded trials' values
    at its latest evaluation step."""
    values = _evaluations(trial)
    if not values:
        return None
    pruner = optuna.pruners.MedianPruner(
        n_startup_trials=rule.startup_trials,
        n_warmup_steps=rule.warmup_steps,
        interval_steps=1,
        n_min_trials=rule.min_trials,
    )
    study = optuna.create_study(direction=direction, pruner=pruner)
    completed = [t for t in trials if t.phase == "Succeeded" and t.metric is not None]
    for done in completed:
        study.add_trial(
            create_trial(
                state=TrialState.COMPLETE, value=done.metric, intermediate_values=_evaluations(done)
            )
        )
    running = create_trial(state=TrialState.RUNNING, intermediate_values=values)
    if not pruner.prune(study, running):
        return None
    step = max(values)
    peers = [v for t in completed if (v := _evaluations(t).get(step)) is not None]
    return PrunedAt(step=step, value=values[step], median=round_value(statistics.median(peers)))
