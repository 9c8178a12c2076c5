"""TPE through Optuna, rebuilt from status on every call: it learns, it is reproducible,
and it stays inside the declared space."""

from __future__ import annotations

import math
import statistics
from typing import Any

import pytest

from kubetune.api import FineTuningTaskStatus, HyperparameterSpec, StepValue, TrialStatus
from kubetune.decide.sampling import planned_trials, sampler_for
from kubetune.decide.study import fits

SPACE = [
    {"name": "learningRate", "float": {"min": 1e-6, "max": 1e-2, "log": True}},
    {"name": "warmupRatio", "float": {"min": 0.0, "max": 1.0}},
]
MIXED = [
    {"name": "learningRate", "float": {"min": 1e-5, "max": 1e-3, "log": True}},
    {"name": "batchSize", "int": {"min": 16, "max": 64, "step": 16}},
    {"name": "precision", "categorical": {"values": ["bf16", "fp32"]}},
]


def objective(parameters: dict[str, Any]) -> float:
    """A known function with its maximum 0 at learningRate 5e-5, warmupRatio 0.27."""
    return -(
        (math.log10(parameters["learningRate"]) + 4.3) ** 2
        + 4 * (parameters["warmupRatio"] - 0.27) ** 2
    )


def hyper(**document: Any) -> HyperparameterSpec:
    return HyperparameterSpec.model_validate(document)


def trial(index: int, parameters: dict[str, Any], phase: str = "Succeeded", **fields: Any):
    return TrialStatus(
        index=index,
        name=f"tune-t{index}",
        parameters=parameters,
        phase=phase,
        checkpoint_uri=f"s3://models/runs/1/trial-{index}/model/",
        **fields,
    )


def search(spec: HyperparameterSpec, budget: int) -> list[TrialStatus]:
    """Run `budget` trials one after the other, each scored by `objective`."""
    sampler = sampler_for(spec)
    trials: list[TrialStatus] = []
    for index in range(budget):
        parameters = sampler.suggest(index, trials)
        trials.append(trial(index, parameters, metric=objective(parameters)))
    return trials


def test_tpe_finds_a_better_optimum_than_random_search_in_the_same_budget():
    budget, seeds = 20, range(10)
    best: dict[str, list[float]] = {"random": [], "tpe": []}
    for algorithm in best:
        for seed in seeds:
            spec = hyper(algorithm=algorithm, searchSpace=SPACE, maxTrials=budget, seed=seed)
            best[algorithm].append(max(t.metric or -math.inf for t in search(spec, budget)))
    assert statistics.mean(best["tpe"]) > statistics.mean(best["random"])
    assert statistics.median(best["tpe"]) > statistics.median(best["random"])


def test_rebuilding_the_study_from_status_gives_identical_next_suggestions():
    spec = hyper(algorithm="tpe", searchSpace=MIXED, maxTrials=12, seed=5, tpe={"startupTrials": 3})
    trials = search_mixed(spec, 6)
    trials.append(trial(6, sampler_for(spec).suggest(6, trials), phase="Running"))
    status = FineTuningTaskStatus(trials=trials)
    stored = FineTuningTaskStatus.model_validate(status.to_json())  # as the apiserver has it
    first = sampler_for(spec).suggest(7, status.trials)
    again = sampler_for(spec).suggest(7, stored.trials)  # a restarted operator
    assert first == again
    assert sampler_for(spec).origin(stored.trials) == "tpe"


def search_mixed(spec: HyperparameterSpec, budget: int) -> list[TrialStatus]:
    sampler = sampler_for(spec)
    trials: list[TrialStatus] = []
    for index in range(budget):
        p = sampler.suggest(index, trials)
        value = -abs(math.log10(p["learningRate"]) + 4) - p["batchSize"] / 100
        trials.append(trial(index, p, metric=value + (p["precision"] == "bf16") * 0.1))
    return trials


def test_suggestions_depend_on_the_results_and_the_seed():
    spec = hyper(algorithm="tpe", searchSpace=SPACE, maxTrials=10, seed=1, tpe={"startupTrials": 2})
    trials = search(spec, 4)
    sampler = sampler_for(spec)
    changed = [t.model_copy(update={"metric": -(t.metric or 0)}) for t in trials]
    assert sampler.suggest(4, trials) != sampler.suggest(4, changed)
    reseeded = sampler_for(spec.model_copy(update={"seed": 2}))
    assert sampler.suggest(4, trials) != reseeded.suggest(4, trials)


@pytest.mark.parametrize("multivariate", [False, True], ids=["independent", "multivariate"])
def test_tpe_stays_in_the_space_and_reports_its_origin(multivariate):
    spec = hyper(
        algorithm="tpe",
        searchSpace=MIXED,
        maxTrials=12,
        seed=3,
        tpe={"multivariate": multivariate, "startupTrials": 4},
    )
    sampler = sampler_for(spec)
    trials: list[TrialStatus] = []
    origins = []
    for index in range(10):
        origins.append(sampler.origin(trials))
        parameters = sampler.suggest(index, trials)
        assert fits(parameters, spec.search_space), parameters
        assert isinstance(parameters["batchSize"], int) and parameters["batchSize"] % 16 == 0
        trials.append(trial(index, parameters, metric=float(parameters["batchSize"])))
    assert origins == ["random"] * 4 + ["tpe"] * 6


def test_pruned_and_running_trials_inform_tpe_and_failed_ones_do_not():
    spec = hyper(algorithm="tpe", searchSpace=SPACE, maxTrials=10, seed=4, tpe={"startupTrials": 2})
    trials = search(spec, 3)
    sampler = sampler_for(spec)
    failed = trial(3, {"learningRate": 1e-3, "warmupRatio": 0.5}, phase="Failed")
    assert sampler.suggest(4, [*trials, failed]) == sampler.suggest(4, trials)
    pruned = trial(
        3,
        {"learningRate": 1e-3, "warmupRatio": 0.5},
        phase="Pruned",
        evaluations=[StepValue(step=2, value=-9.0)],
    )
    assert sampler.suggest(4, [*trials, pruned]) != sampler.suggest(4, trials)
    assert sampler.origin([trials[0], pruned]) == "tpe"  # pruned trials count as finished
    running = trial(3, {"learningRate": 1e-3, "warmupRatio": 0.5}, phase="Running")
    assert sampler.suggest(4, [*trials, running]) != sampler.suggest(4, trials)


def test_tpe_over_a_small_discrete_space_plans_no_more_than_its_size():
    space = [{"name": "epochs", "int": {"min": 1, "max": 3}}]
    spec = hyper(algorithm="tpe", searchSpace=space, maxTrials=10)
    assert planned_trials(spec, sampler_for(spec)) == 3
