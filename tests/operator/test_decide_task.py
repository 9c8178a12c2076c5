"""Decisions of one FineTuningTask reconcile, from start through trials to the end."""

from __future__ import annotations

from dataclasses import replace

import pytest

from kubetune.api import FineTuningTaskStatus, PromotedIteration, TunedModelStatus
from kubetune.api import conditions as c
from kubetune.decide import (
    CreateJob,
    DeleteJob,
    DeleteStorage,
    ReserveIteration,
    VerifyCheckpoint,
    action_failed,
    decide_task,
)
from tests.operator.builders import DEFAULTS, NOW, World, model, task, task_spec

LATEST = PromotedIteration(
    iteration=3,
    uri="s3://models/kubetune/team/minilm/iterations/3/model/",
    metric="ndcg@10",
    value=0.9,
    source_task="older",
    source_trial="older-t0",
    promoted_at=NOW,
)


def started(world: World) -> World:
    world.reconcile()
    return world


@pytest.mark.parametrize(
    ("start_from", "lineage", "expected_model", "expected_iteration"),
    [
        ("latest", TunedModelStatus(), "/models/all-MiniLM-L6-v2", None),
        (
            "latest",
            TunedModelStatus(current_iteration=LATEST, history=[LATEST], last_iteration=3),
            LATEST.uri,
            3,
        ),
        (
            "base",
            TunedModelStatus(current_iteration=LATEST, history=[LATEST], last_iteration=3),
            "/models/all-MiniLM-L6-v2",
            None,
        ),
    ],
    ids=["no-iteration-yet", "latest", "base-asked"],
)
def test_start_resolves_starting_model_and_reserves_iteration(
    start_from, lineage, expected_model, expected_iteration
):
    decision = decide_task(task(task_spec(startFrom=start_from)), model(lineage), [], DEFAULTS, NOW)
    iteration = lineage.last_iteration + 1
    assert decision.actions == (ReserveIteration("minilm", iteration, "7"),)
    status = decision.status
    assert (status.attempt, status.iteration) == (1, iteration)
    assert (status.starting_model, status.starting_iteration) == (
        expected_model,
        expected_iteration,
    )
    assert status.scratch_uri == f"s3://models/kubetune/team/minilm/runs/{iteration}/"
    assert status.phase == "Running"
    assert status.mlflow is not None
    assert status.mlflow.experiment_name == f"team/minilm/iteration-{iteration}"
    assert decision.requeue_after == 0


@pytest.mark.parametrize(
    ("the_model", "spec", "reason"),
    [
        (None, task_spec(), c.REASON_MODEL_NOT_FOUND),
        (
            model(),
            task_spec(
                hyperparameters={
                    "searchSpace": [{"name": "batchSize", "categorical": {"values": ["big"]}}]
                }
            ),
            c.REASON_INVALID_SPEC,
        ),
    ],
    ids=["model-missing", "bad-categorical"],
)
def test_start_blocked_stays_pending_with_reason(the_model, spec, reason):
    decision = decide_task(task(spec), the_model, [], DEFAULTS, NOW)
    assert decision.actions == ()
    assert decision.status.phase == "Pending"
    condition = c.get_condition(decision.status.conditions, c.INPUTS_READY)
    assert condition is not None and condition.reason == reason and condition.message
    assert decision.events and decision.events[0].type == "Warning"


def test_suspended_before_start_waits_without_iteration():
    decision = decide_task(task(task_spec(suspend=True)), model(), [], DEFAULTS, NOW)
    assert decision.actions == ()
    assert decision.status.iteration is None and decision.status.phase == "Pending"


def test_launches_up_to_parallel_limit_with_deterministic_names():
    world = started(World())
    decision = world.reconcile()
    creates = [a for a in decision.actions if isinstance(a, CreateJob)]
    assert [a.name for a in creates] == ["tune-t0", "tune-t1"]
    assert [t.parameters for t in decision.status.trials] == [
        {"learningRate": 1e-5, "batchSize": 32},
        {"learningRate": 1e-5, "batchSize": 64},
    ]
    assert decision.status.trials_summary == "0/4"
    assert world.reconcile().actions == ()  # nothing more while two run


def test_next_trial_starts_when_one_finishes_and_running_is_recorded():
    world = started(World())
    world.reconcile()
    world.jobs["tune-t1"] = replace(world.jobs["tune-t1"], phase="Running", started_at=NOW)
    world.finish("tune-t0", 0.91)
    decision = world.reconcile()
    assert [a.name for a in decision.actions if isinstance(a, CreateJob)] == ["tune-t2"]
    trials = {t.name: t for t in decision.status.trials}
    assert trials["tune-t0"].phase == "Succeeded" and trials["tune-t0"].metric == 0.91
    assert trials["tune-t0"].mlflow_run_id == "run-0"
    assert trials["tune-t1"].phase == "Running" and trials["tune-t1"].started_at == NOW
    assert decision.status.best_trial is not None and decision.status.best_trial.value == 0.91


def test_failed_trial_records_termination_message_and_exit_reason():
    world = started(World())
    world.reconcile()
    world.finish("tune-t0", None)
    status = world.reconcile().status
    failed = status.trials[0]
    assert (failed.phase, failed.reason, failed.exit_code) == ("Failed", "TrainingFailed", 3)
    assert failed.message == "TrainingFailed: nan loss"
    assert status.phase == "Running"  # no limit: keep going


def test_a_pending_trial_says_why_its_pod_does_not_run_until_it_runs():
    world = started(World())
    world.reconcile()
    quota = 'pods "tune-t0-x" is forbidden: exceeded quota: gpus, requested: nvidia.com/gpu=1'
    world.jobs["tune-t0"] = replace(
        world.jobs["tune-t0"], waiting_reason="FailedCreate", waiting_message=quota
    )
    decision = world.reconcile()
    waiting = decision.status.trials[0]
    assert (waiting.phase, waiting.reason, waiting.message) == ("Pending", "FailedCreate", quota)
    assert [(e.reason, e.message) for e in decision.events] == [
        ("TrialWaiting", f"tune-t0: FailedCreate: {quota}")
    ]
    (running,) = [x for x in decision.status.conditions if x.type == "Running"]
    assert running.message == "0/4 trials done, 2 running; 1 waiting, tune-t0: FailedCreate"
    assert world.reconcile().events == ()  # said once, not at every reconcile
    world.jobs["tune-t1"] = replace(world.jobs["tune-t1"], waiting_reason="Unschedulable")
    queued = world.reconcile()
    assert queued.status.trials[1].reason == "Unschedulable"
    assert queued.events == ()  # queued for a GPU: normal, no warning
    world.jobs["tune-t0"] = replace(world.jobs["tune-t0"], phase="Running", started_at=NOW)
    started_trial = world.reconcile().status.trials[0]
    assert (started_trial.phase, started_trial.reason, started_trial.message) == (
        "Running",
        None,
        None,
    )


def test_a_trial_that_fails_while_waiting_says_what_it_waited_for():
    world = started(World())
    world.reconcile()
    quota = "exceeded quota: gpus"
    job = world.jobs["tune-t0"]
    world.jobs["tune-t0"] = replace(job, waiting_reason="FailedCreate", waiting_message=quota)
    world.reconcile()
    world.jobs["tune-t0"] = replace(job, phase="Failed", reason="DeadlineExceeded")
    failed = world.reconcile().status.trials[0]
    assert (failed.phase, failed.reason) == ("Failed", "DeadlineExceeded")
    assert failed.message == f"DeadlineExceeded while its Pod waited: FailedCreate: {quota}"


@pytest.mark.parametrize(("limit", "phase"), [(0, "Failed"), (1, "Running")])
def test_max_failed_trials(limit, phase):
    spec = task_spec(
        hyperparameters={
            "searchSpace": [{"name": "epochs", "int": {"min": 1, "max": 4}}],
            "parallelTrials": 2,
            "maxFailedTrials": limit,
        }
    )
    world = started(World(spec=spec))
    world.reconcile()
    world.finish("tune-t0", None)
    decision = world.reconcile()
    assert decision.status.phase == phase
    if phase == "Failed":
        condition = c.get_condition(decision.status.conditions, c.FAILED)
        assert condition is not None and condition.reason == c.REASON_MAX_FAILED_TRIALS
        assert DeleteJob("tune-t1") in decision.actions
        assert any(isinstance(a, DeleteStorage) for a in decision.actions)
        assert decision.status.trials[1].phase == "Canceled"


def test_all_trials_failed_ends_failed():
    spec = task_spec(hyperparameters={"searchSpace": []})
    world = started(World(spec=spec))
    world.reconcile()
    world.finish("tune-t0", None)
    status = world.reconcile().status
    assert status.phase == "Failed"
    condition = c.get_condition(status.conditions, c.FAILED)
    assert condition is not None and condition.reason == c.REASON_NO_SUCCESSFUL_TRIAL
    # The trainer's own words reach the task's condition, not only the trial's entry.
    assert condition.message == "all 1 trials failed; tune-t0: TrainingFailed: nan loss"


def test_suspend_cancels_running_trials():
    world = started(World())
    world.reconcile()
    world.spec = world.spec.model_copy(update={"suspend": True})
    decision = world.reconcile()
    assert {a.name for a in decision.actions if isinstance(a, DeleteJob)} == {"tune-t0", "tune-t1"}
    assert decision.status.phase == "Canceled"
    assert {t.phase for t in decision.status.trials} == {"Canceled"}
    assert world.jobs == {}
    assert world.reconcile().actions == ()


def test_missing_job_of_unfinished_trial_is_recreated():
    world = started(World())
    world.reconcile()
    del world.jobs["tune-t0"]
    decision = world.reconcile()
    assert [a.name for a in decision.actions if isinstance(a, CreateJob)] == ["tune-t0"]


def test_goal_stops_new_trials():
    spec = task_spec(
        objective={"metric": "ndcg@10", "goal": 0.9},
        hyperparameters={
            "searchSpace": [{"name": "epochs", "int": {"min": 1, "max": 8}}],
            "parallelTrials": 1,
        },
    )
    world = started(World(spec=spec))
    world.reconcile()
    world.finish("tune-t0", 0.95)
    world.settle()
    assert world.status.phase == "Succeeded"
    assert world.created == ["tune-t0"]


def test_full_lifecycle_promotes_best_and_cleans_up():
    world = World()
    world.settle()
    for name, value in (("tune-t0", 0.90), ("tune-t1", 0.93)):
        world.finish(name, value)
    world.settle()
    for name, value in (("tune-t2", 0.92), ("tune-t3", None)):
        world.finish(name, value)
    world.settle()
    status = world.status
    assert status.phase == "Succeeded" and status.trials_summary == "4/4"
    assert status.best_trial is not None and status.best_trial.name == "tune-t1"
    target = "s3://models/kubetune/team/minilm/iterations/1/model/"
    assert status.promoted_uri == target
    assert world.model is not None
    assert world.model.status.current_iteration.uri == target
    assert world.model.status.current_iteration.parameters == {
        "learningRate": 1e-5,
        "batchSize": 64,
    }
    assert world.objects == {
        target + "config.json",
        target + "model.safetensors",
        "s3://models/kubetune/team/minilm/iterations/1/manifest.json",
    }
    assert set(world.jobs) == {"tune-t1"}
    manifest = world.manifests["s3://models/kubetune/team/minilm/iterations/1/manifest.json"]
    assert manifest["sourceTrial"] == "tune-t1" and manifest["objective"]["value"] == 0.93


def test_reapplying_unchanged_finished_task_does_nothing():
    world = World(spec=task_spec(hyperparameters={"searchSpace": []}))
    world.settle()
    world.finish("tune-t0", 0.9)
    world.settle()
    before = world.status
    decision = world.reconcile()
    assert decision.actions == () and decision.status == before
    assert world.created == ["tune-t0"]


def test_restart_after_success_runs_a_new_attempt_from_the_promoted_model():
    world = World(spec=task_spec(hyperparameters={"searchSpace": []}))
    world.settle()
    world.finish("tune-t0", 0.9)
    world.settle()
    first_uri = world.status.promoted_uri
    world.spec = world.spec.model_copy(update={"restart_generation": 1})
    world.generation = 2
    world.settle()
    status = world.status
    assert (status.attempt, status.iteration, status.phase) == (2, 2, "Running")
    assert status.starting_model == first_uri
    assert world.created == ["tune-t0", "tune-a2-t0"]
    world.finish("tune-a2-t0", 0.95)
    world.settle()
    assert world.status.phase == "Succeeded"
    assert world.model.status.current_iteration.iteration == 2
    assert [h.iteration for h in world.model.status.history] == [2]  # retention 1
    assert not any("/iterations/1/" in key for key in world.objects)


def test_restart_requested_while_running_waits_for_the_end():
    world = World(spec=task_spec(hyperparameters={"searchSpace": []}))
    world.settle()
    world.spec = world.spec.model_copy(update={"restart_generation": 1})
    world.settle()
    assert world.status.attempt == 1
    world.finish("tune-t0", 0.9)
    world.settle()
    assert world.status.attempt == 2


def test_verify_failure_goes_back_to_copy_then_fails_after_three():
    world = World(spec=task_spec(hyperparameters={"searchSpace": []}))
    world.settle()
    world.finish("tune-t0", 0.9)
    while world.status.promotion is None or world.status.promotion.step != "Verify":
        world.reconcile()
    for _ in range(3):
        verify = decide_task(world.task(), world.model, [], DEFAULTS, NOW).actions[0]
        assert isinstance(verify, VerifyCheckpoint)
        world.status = action_failed(
            world.task(), verify, "sizes differ", NOW, copy_incomplete=True
        )
        assert world.status.promotion.step == "Copy"
        assert c.get_condition(world.status.conditions, c.INPUTS_READY).status == "False"
        world.reconcile()  # copies again
    world.settle()
    assert world.status.phase == "Failed"
    assert c.get_condition(world.status.conditions, c.FAILED).reason == c.REASON_PROMOTION_FAILED
    assert world.model.status.current_iteration is None


def test_storage_outage_during_verify_retries_verify_without_counting_it():
    world = World(spec=task_spec(hyperparameters={"searchSpace": []}))
    world.settle()
    world.finish("tune-t0", 0.9)
    while world.status.promotion is None or world.status.promotion.step != "Verify":
        world.reconcile()
    for _ in range(5):
        verify = decide_task(world.task(), world.model, [], DEFAULTS, NOW).actions[0]
        assert isinstance(verify, VerifyCheckpoint)
        world.status = action_failed(world.task(), verify, "bucket unreachable", NOW)
        assert world.status.promotion.step == "Verify"
        assert world.status.promotion.verify_failures == 0
    world.settle()
    assert world.status.phase == "Succeeded"


def test_status_round_trips_through_json():
    world = World()
    world.settle()
    document = world.status.to_json()
    assert FineTuningTaskStatus.model_validate(document) == world.status
    assert document["trials"][0]["name"] == "tune-t0"
