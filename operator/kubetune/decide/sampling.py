"""Hyperparameter suggestions behind one small interface, `Sampler`.

A sampler maps a trial index (and, for samplers that learn, the trials so far) to one
parameter set. Grid and random search depend on the index and the seed only, so the same
spec always yields the same trials and a restarted operator re-derives exactly the trials
it had planned. TPE (`study.TpeSampler`) learns: it rebuilds an Optuna study from `trials`
on every call, so its suggestions depend on the spec and the recorded results only.

Grid and random stay plain enumerations rather than Optuna's samplers: the grid's documented
order (first parameter slowest) and random search's walk without repetition over small
discrete spaces are properties users rely on, and neither needs a model of the results.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from typing import Protocol

from kubetune.api import (
    HyperparameterSpec,
    ParamValue,
    SearchParameter,
    SuggestionOrigin,
    TrialStatus,
)
from kubetune.api.finetuningtask import MAX_TRIALS, TpeSettings
from kubetune.decide.study import Direction, TpeSampler, round_value

Parameters = dict[str, ParamValue]
_RANDOM_PERMUTATION_LIMIT = 10_000
"""Fully discrete spaces up to this size are sampled without replacement."""


class Sampler(Protocol):
    def size(self) -> int | None:
        """How many distinct parameter sets it can produce; None: unbounded."""
        ...

    def origin(self, trials: Sequence[TrialStatus]) -> SuggestionOrigin:
        """How the next suggestion is made, for the trial's status."""
        ...

    def suggest(self, index: int, trials: Sequence[TrialStatus]) -> Parameters:
        """The parameters of trial `index`, given the trials recorded so far."""
        ...


def _grid_values(parameter: SearchParameter) -> list[ParamValue]:
    if parameter.categorical is not None:
        return list(parameter.categorical.values)
    if parameter.int_range is not None:
        r = parameter.int_range
        return list(range(r.min, r.max + 1, r.step))
    assert parameter.float_range is not None
    f = parameter.float_range
    n = f.grid_points
    if f.log:
        low, high = math.log(f.min), math.log(f.max)
        return [round_value(math.exp(low + (high - low) * i / (n - 1))) for i in range(n)]
    return [round_value(f.min + (f.max - f.min) * i / (n - 1)) for i in range(n)]


def _grid_size(space: Sequence[SearchParameter]) -> int:
    return math.prod(len(_grid_values(p)) for p in space)


class GridSampler:
    """Every combination, the first parameter varying slowest, in declaration order."""

    def __init__(self, space: Sequence[SearchParameter]) -> None:
        self._names = [p.name for p in space]
        self._values = [_grid_values(p) for p in space]

    def size(self) -> int:
        return math.prod(len(v) for v in self._values)

    def origin(self, trials: Sequence[TrialStatus]) -> SuggestionOrigin:
        return "grid"

    def suggest(self, index: int, trials: Sequence[TrialStatus]) -> Parameters:
        chosen: Parameters = {}
        for name, values in zip(reversed(self._names), reversed(self._values), strict=True):
            index, position = divmod(index, len(values))
            chosen[name] = values[position]
        return {name: chosen[name] for name in self._names}


class RandomSampler:
    """Independent seeded draws per trial index; a small fully discrete space is instead
    walked in a seeded random order, so no combination repeats."""

    def __init__(self, space: Sequence[SearchParameter], seed: int) -> None:
        self._space = list(space)
        self._seed = seed
        discrete = all(p.float_range is None for p in space)
        size = _grid_size(space) if discrete else None
        self._size = size if size is not None and size <= _RANDOM_PERMUTATION_LIMIT else None
        self._grid = GridSampler(space) if self._size is not None else None

    def size(self) -> int | None:
        return self._size

    def origin(self, trials: Sequence[TrialStatus]) -> SuggestionOrigin:
        return "random"

    def suggest(self, index: int, trials: Sequence[TrialStatus]) -> Parameters:
        if self._grid is not None and self._size is not None:
            order = list(range(self._size))
            random.Random(f"kubetune/{self._seed}").shuffle(order)
            return self._grid.suggest(order[index % self._size], trials)
        rng = random.Random(f"kubetune/{self._seed}/{index}")
        return {p.name: _draw(p, rng) for p in self._space}


def _draw(parameter: SearchParameter, rng: random.Random) -> ParamValue:
    if parameter.categorical is not None:
        return rng.choice(parameter.categorical.values)
    if parameter.int_range is not None:
        r = parameter.int_range
        return r.min + r.step * rng.randint(0, (r.max - r.min) // r.step)
    assert parameter.float_range is not None
    f = parameter.float_range
    if f.log:
        return round_value(math.exp(rng.uniform(math.log(f.min), math.log(f.max))))
    return round_value(rng.uniform(f.min, f.max))


def sampler_for(spec: HyperparameterSpec, direction: Direction = "maximize") -> Sampler:
    """The sampler of the spec's algorithm; `direction` is the objective's (TPE needs it)."""
    if spec.algorithm == "random":
        return RandomSampler(spec.search_space, spec.seed or 0)
    if spec.algorithm == "tpe":
        settings = spec.tpe or TpeSettings()
        discrete = all(p.float_range is None for p in spec.search_space)
        return TpeSampler(
            spec.search_space,
            spec.seed or 0,
            direction,
            multivariate=settings.multivariate,
            startup_trials=settings.startup_trials,
            size=_grid_size(spec.search_space) if discrete else None,
        )
    return GridSampler(spec.search_space)


def planned_trials(spec: HyperparameterSpec, sampler: Sampler) -> int:
    """How many trials an attempt runs: maxTrials, never more than the sampler can
    produce distinct sets (a grid's size), and never more than the API's limit."""
    size = sampler.size()
    limits = [n for n in (spec.max_trials, size, MAX_TRIALS) if n is not None]
    return max(1, min(limits))
