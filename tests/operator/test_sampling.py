"""Grid and random search: complete, in order, seeded and deterministic."""

from __future__ import annotations

import pytest

from kubetune.api import HyperparameterSpec
from kubetune.decide.sampling import planned_trials, sampler_for


def hyper(**document) -> HyperparameterSpec:
    return HyperparameterSpec.model_validate(document)


MIXED = [
    {"name": "learningRate", "float": {"min": 1e-5, "max": 1e-3, "log": True}},
    {"name": "batchSize", "int": {"min": 16, "max": 64, "step": 16}},
    {"name": "precision", "categorical": {"values": ["bf16", "fp32"]}},
]


def suggestions(spec: HyperparameterSpec) -> list[dict]:
    sampler = sampler_for(spec)
    return [sampler.suggest(i, []) for i in range(planned_trials(spec, sampler))]


@pytest.mark.parametrize(
    ("document", "expected"),
    [
        ({"searchSpace": []}, [{}]),
        (
            {
                "searchSpace": [
                    {"name": "learningRate", "float": {"min": 1e-5, "max": 1e-3, "log": True}}
                ]
            },
            [{"learningRate": 1e-5}, {"learningRate": 1e-4}, {"learningRate": 1e-3}],
        ),
        (
            {
                "searchSpace": [
                    {"name": "warmupRatio", "float": {"min": 0, "max": 0.2, "gridPoints": 2}}
                ]
            },
            [{"warmupRatio": 0.0}, {"warmupRatio": 0.2}],
        ),
        (
            {
                "searchSpace": [
                    {"name": "epochs", "int": {"min": 1, "max": 2}},
                    {"name": "precision", "categorical": {"values": ["bf16", "fp32"]}},
                ]
            },
            [
                {"epochs": 1, "precision": "bf16"},
                {"epochs": 1, "precision": "fp32"},
                {"epochs": 2, "precision": "bf16"},
                {"epochs": 2, "precision": "fp32"},
            ],
        ),
        (
            {"searchSpace": [{"name": "epochs", "int": {"min": 1, "max": 9}}], "maxTrials": 2},
            [{"epochs": 1}, {"epochs": 2}],
        ),
    ],
    ids=["empty", "log-float", "linear-float", "product-order", "max-trials-caps-grid"],
)
def test_grid(document, expected):
    assert suggestions(hyper(**document)) == expected


def test_random_is_deterministic_per_seed_and_within_bounds():
    spec = hyper(algorithm="random", searchSpace=MIXED, maxTrials=20, seed=7)
    first, again = suggestions(spec), suggestions(spec)
    assert first == again
    assert suggestions(hyper(algorithm="random", searchSpace=MIXED, maxTrials=20, seed=8)) != first
    for parameters in first:
        assert 1e-5 <= parameters["learningRate"] <= 1e-3
        assert parameters["batchSize"] in (16, 32, 48, 64)
        assert parameters["precision"] in ("bf16", "fp32")
    assert len({tuple(p.values()) for p in first}) == 20


def test_random_does_not_depend_on_history_or_call_order():
    spec = hyper(algorithm="random", searchSpace=MIXED, maxTrials=5, seed=1)
    sampler = sampler_for(spec)
    assert sampler.suggest(3, []) == sampler_for(spec).suggest(3, [])


def test_random_over_a_small_discrete_space_never_repeats():
    space = [{"name": "epochs", "int": {"min": 1, "max": 3}}]
    spec = hyper(algorithm="random", searchSpace=space, maxTrials=10, seed=3)
    values = suggestions(spec)
    assert len(values) == 3  # the space has three points
    assert sorted(v["epochs"] for v in values) == [1, 2, 3]
