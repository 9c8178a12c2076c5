"""Warm start through the TunedModel's history: a promotion records the iteration's best
parameter sets, and the next iteration's first trials re-run those that fit its space."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest

from kubetune.api import PromotedIteration, RankedTrial, TunedModelStatus
from kubetune.decide import warmstart
from tests.operator.builders import NOW, World, model, task_spec

RATES = [1e-5, 2e-5, 5e-5, 1e-4, 2e-4]


def random_spec(**hyperparameters: Any):
    return task_spec(
        hyperparameters={
            "searchSpace": [{"name": "learningRate", "categorical": {"values": RATES}}],
            "algorithm": "random",
            "maxTrials": 5,
            "parallelTrials": 5,
            "seed": 11,
            **hyperparameters,
        }
    )


def lineage(*top: tuple[dict[str, Any], float]) -> TunedModelStatus:
    entry = PromotedIteration(
        iteration=1,
        uri="s3://models/kubetune/team/minilm/iterations/1/model/",
        metric="ndcg@10",
        value=top[0][1],
        parameters=top[0][0],
        top_trials=[RankedTrial(parameters=p, value=v) for p, v in top],
        source_task="first",
        source_trial="first-t0",
        promoted_at=NOW,
    )
    return TunedModelStatus(current_iteration=entry, history=[entry], last_iteration=1)


def test_promotion_records_the_best_distinct_parameter_sets_best_first():
    world = World(spec=random_spec(maxTrials=5))
    world.settle()
    values = {"tune-t0": 0.90, "tune-t1": 0.95, "tune-t2": None, "tune-t3": 0.91, "tune-t4": 0.93}
    for name, value in values.items():
        world.finish(name, value)
    world.settle()
    assert world.model is not None and world.model.status.current_iteration is not None
    top = world.model.status.current_iteration.top_trials
    by_name = {t.name: t.parameters for t in world.status.trials}
    assert [(t.parameters, t.value) for t in top] == [
        (by_name["tune-t1"], 0.95),
        (by_name["tune-t4"], 0.93),
        (by_name["tune-t3"], 0.91),
        (by_name["tune-t0"], 0.90),
    ]


def test_the_next_iteration_first_reruns_the_previous_top_k():
    top = [({"learningRate": r}, v) for r, v in ((5e-5, 0.95), (2e-5, 0.93), (1e-4, 0.9))]
    world = World(spec=random_spec(warmStart={"topK": 2}), model=model(lineage(*top)))
    world.settle()
    status = world.status
    assert status.warm_start is not None
    assert status.warm_start.iteration == 1
    assert status.warm_start.parameters == [{"learningRate": 5e-5}, {"learningRate": 2e-5}]
    trials = status.trials
    assert [t.origin for t in trials] == ["warm-start"] * 2 + ["random"] * 3
    assert [t.parameters for t in trials[:2]] == status.warm_start.parameters
    assert world.created == [f"tune-t{i}" for i in range(5)]


@pytest.mark.parametrize(
    ("spec", "top", "expected"),
    [
        (random_spec(), [({"learningRate": 5e-5}, 0.9)], [{"learningRate": 5e-5}]),
        (
            random_spec(),
            [
                ({"learningRate": 3e-5}, 0.95),  # not a choice any more
                ({"learningRate": 5e-5, "batchSize": 32}, 0.94),  # batchSize is not searched
                ({"learningRate": 1e-4}, 0.9),
                ({"learningRate": 1e-4}, 0.89),  # a duplicate
            ],
            [{"learningRate": 1e-4}],
        ),
        (random_spec(warmStart={"topK": 0}), [({"learningRate": 5e-5}, 0.9)], None),
        (
            task_spec(
                hyperparameters={
                    "searchSpace": [{"name": "learningRate", "categorical": {"values": RATES}}]
                }
            ),
            [({"learningRate": 5e-5}, 0.9)],
            None,
        ),
        (
            random_spec(
                searchSpace=[{"name": "learningRate", "float": {"min": 1e-5, "max": 1e-4}}],
            ),
            [({"learningRate": 5e-5}, 0.9), ({"learningRate": 2e-4}, 0.8)],
            [{"learningRate": 5e-5}],
        ),
    ],
    ids=["fits", "only-what-fits", "turned-off", "grid-runs-everything", "float-range"],
)
def test_plan(spec, top, expected):
    plan = warmstart.plan(spec, lineage(*top))
    assert (plan.parameters if plan is not None else None) == expected


def test_no_warm_start_without_a_promoted_iteration():
    assert warmstart.plan(random_spec(), TunedModelStatus()) is None


def test_the_plan_is_fixed_when_the_attempt_starts():
    top = [({"learningRate": 5e-5}, 0.95), ({"learningRate": 2e-5}, 0.93)]
    world = World(spec=random_spec(parallelTrials=1), model=model(lineage(*top)))
    world.settle()
    assert world.model is not None
    other = lineage(({"learningRate": 2e-4}, 0.99))
    world.model = replace(world.model, status=other.model_copy(update={"last_iteration": 2}))
    world.finish("tune-t0", 0.9)
    world.settle()
    assert world.status.trials[1].parameters == {"learningRate": 2e-5}
    assert world.status.trials[1].origin == "warm-start"


def test_tpe_learns_from_the_rerun_results():
    top = [({"learningRate": r}, v) for r, v in ((5e-5, 0.95), (2e-5, 0.93), (1e-4, 0.9))]
    spec = random_spec(algorithm="tpe", parallelTrials=3, tpe={"startupTrials": 3})
    world = World(spec=spec, model=model(lineage(*top)))
    world.settle()
    assert [t.origin for t in world.status.trials] == ["warm-start"] * 3
    for name, value in (("tune-t0", 0.96), ("tune-t1", 0.92), ("tune-t2", 0.91)):
        world.finish(name, value)
    world.settle()
    assert [t.origin for t in world.status.trials[3:]] == ["tpe", "tpe"]
