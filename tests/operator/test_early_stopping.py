"""Early stopping: Optuna's median rule on the intermediate evaluations a trial reports,
and what the task does with a pruned trial (delete its Job, count it apart from failures,
launch the next trial at once)."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest

from kubetune.api import EarlyStoppingSpec, PrunedAt, StepValue, TrialStatus
from kubetune.contract import Evaluation, TrialProgress
from kubetune.decide import CreateJob, DeleteJob, ObservedJob, progress_to_read
from kubetune.decide.study import prune_decision
from kubetune.decide.task import PROGRESS_POLL_SECONDS
from tests.operator.builders import World, task_spec


def trial(index: int, evaluations: dict[int, float], phase: str = "Succeeded") -> TrialStatus:
    return TrialStatus(
        index=index,
        name=f"tune-t{index}",
        phase=phase,
        metric=list(evaluations.values())[-1] if phase == "Succeeded" else None,
        evaluations=[StepValue(step=s, value=v) for s, v in evaluations.items()],
        checkpoint_uri=f"s3://models/runs/1/trial-{index}/model/",
    )


COMPLETED = [
    trial(0, {2: 0.50, 4: 0.60, 6: 0.70}),
    trial(1, {2: 0.52, 4: 0.62, 6: 0.72}),
    trial(2, {2: 0.48, 4: 0.58}),
]


@pytest.mark.parametrize(
    ("running", "rule", "direction", "expected"),
    [
        ({2: 0.30}, {}, "maximize", PrunedAt(step=2, value=0.30, median=0.50)),
        ({2: 0.51}, {}, "maximize", None),
        ({}, {}, "maximize", None),
        ({2: 0.30}, {"warmupSteps": 4}, "maximize", None),
        (
            {2: 0.30, 4: 0.35},
            {"warmupSteps": 4},
            "maximize",
            PrunedAt(step=4, value=0.35, median=0.6),
        ),
        ({2: 0.30}, {"startupTrials": 4}, "maximize", None),
        ({2: 0.3, 4: 0.3, 6: 0.3}, {"minTrials": 3}, "maximize", None),
        (
            {2: 0.3, 4: 0.3, 6: 0.3},
            {"minTrials": 2},
            "maximize",
            PrunedAt(step=6, value=0.3, median=0.71),
        ),
        ({2: 0.61, 4: 0.40}, {}, "maximize", None),
        ({2: 0.55, 4: 0.40}, {}, "maximize", PrunedAt(step=4, value=0.40, median=0.60)),
        ({2: 0.70}, {}, "minimize", PrunedAt(step=2, value=0.70, median=0.50)),
        ({2: 0.30}, {}, "minimize", None),
    ],
    ids=[
        "below-median",
        "above-median",
        "no-evaluation-yet",
        "in-warm-up",
        "after-warm-up",
        "too-few-completed",
        "too-few-at-this-step",
        "enough-at-this-step",
        "best-so-far-counts",
        "best-so-far-still-below",
        "minimize-above-median",
        "minimize-below-median",
    ],
)
def test_median_rule(running, rule, direction, expected):
    spec = EarlyStoppingSpec.model_validate({"startupTrials": 3, **rule})
    current = trial(3, running, phase="Running")
    assert prune_decision(current, [*COMPLETED, current], spec, direction) == expected


def early_stopping_spec(**hyperparameters: Any):
    return task_spec(
        hyperparameters={
            "fixed": {"evalEverySteps": 2},
            "searchSpace": [
                {"name": "learningRate", "categorical": {"values": [1e-5, 2e-5, 1e-3, 3e-5, 4e-5]}}
            ],
            "parallelTrials": 2,
            "maxFailedTrials": 0,
            "earlyStopping": {"startupTrials": 2},
            **hyperparameters,
        }
    )


def progress(job: ObservedJob, evaluations: dict[int, float]) -> TrialProgress:
    return TrialProgress(
        trial=job.name,
        phase="training",
        step=max(evaluations),
        total_steps=6,
        epoch=0.5,
        evaluations=[Evaluation(step=s, metrics={"ndcg@10": v}) for s, v in evaluations.items()],
        updated_at="2025-01-01T12:00:00+00:00",
    )


def report(world: World, name: str, evaluations: dict[int, float]) -> None:
    """The trial's Pod runs and its progress file holds these evaluations."""
    job = world.jobs[name]
    world.jobs[name] = replace(job, phase="Running", progress=progress(job, evaluations))


def test_a_hopeless_trial_is_pruned_its_job_deleted_and_the_next_trial_started():
    world = World(spec=early_stopping_spec())
    world.settle()
    for name, value in (("tune-t0", 0.90), ("tune-t1", 0.92)):
        report(world, name, {2: value - 0.1, 4: value})
        world.finish(name, value)
    world.settle()
    assert [e.step for e in world.status.trials[0].evaluations or []] == [2, 4, 10]
    report(world, "tune-t2", {2: 0.30})
    report(world, "tune-t3", {2: 0.85})
    decision = world.reconcile()

    pruned = decision.status.trials[2]
    assert (pruned.phase, pruned.reason) == ("Pruned", "EarlyStopped")
    assert pruned.pruned == PrunedAt(step=2, value=0.30, median=0.81)
    assert "at step 2" in (pruned.message or "")
    assert DeleteJob("tune-t2") in decision.actions
    assert [a.name for a in decision.actions if isinstance(a, CreateJob)] == ["tune-t4"]
    assert decision.status.trials[3].phase == "Running"
    assert decision.requeue_after == PROGRESS_POLL_SECONDS
    assert "TrialPruned" in {e.reason for e in decision.events}

    for name, value in (("tune-t3", 0.91), ("tune-t4", 0.93)):
        world.finish(name, value)
    world.settle()
    status = world.status
    assert status.phase == "Succeeded"  # maxFailedTrials 0: a pruned trial is no failure
    assert (status.counts.pruned, status.counts.failed, status.counts.done) == (1, 0, 5)
    assert status.trials_summary == "5/5"
    assert status.best_trial is not None and status.best_trial.name == "tune-t4"


def test_without_early_stopping_progress_is_neither_read_nor_recorded():
    world = World(spec=task_spec())
    world.settle()
    report(world, "tune-t0", {2: 0.1})
    assert progress_to_read(world.spec, world.status, list(world.jobs.values())) == []
    world.reconcile()
    assert world.status.trials[0].evaluations is None


def test_progress_is_read_for_running_and_just_succeeded_trials_only():
    world = World(spec=early_stopping_spec(parallelTrials=3))
    world.settle()
    report(world, "tune-t0", {2: 0.5})
    world.finish("tune-t1", 0.9)
    reads = dict(progress_to_read(world.spec, world.status, list(world.jobs.values())))
    assert reads == {
        "tune-t0": "s3://models/kubetune/team/minilm/runs/1/trial-0/progress.json",
        "tune-t1": "s3://models/kubetune/team/minilm/runs/1/trial-1/progress.json",
    }
    world.settle()
    assert progress_to_read(world.spec, world.status, list(world.jobs.values())) == [
        ("tune-t0", "s3://models/kubetune/team/minilm/runs/1/trial-0/progress.json")
    ]


def test_a_restarted_pod_keeps_the_evaluations_already_recorded():
    world = World(spec=early_stopping_spec())
    world.settle()
    report(world, "tune-t0", {2: 0.5, 4: 0.6})
    world.reconcile()
    report(world, "tune-t0", {2: 0.55})
    world.reconcile()
    values = [(e.step, e.value) for e in world.status.trials[0].evaluations or []]
    assert values == [(2, 0.55), (4, 0.6)]
