"""The FineTuningTask decision: from the task, its TunedModel and its observed Jobs to the
actions to take and the status to write.

One call handles whichever stage the task is in: start an attempt (reserve an iteration,
resolve the starting model), run trials (follow Jobs, launch new ones up to the parallel
limit, stop at the failure limit or on suspend), promote the winner (`promotion`), or, once
finished, make sure nothing runs. Everything it needs to resume is in the status it
returns, so a restarted operator continues exactly where the last one stopped.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from pydantic import ValidationError

from kubetune.api import (
    BestTrial,
    FineTuningTaskStatus,
    MlflowStatus,
    ObjectiveSpec,
    TrialCounts,
    TrialStatus,
)
from kubetune.api import conditions as c
from kubetune.contract import EXIT_REASONS
from kubetune.decide import promotion
from kubetune.decide.actions import (
    Action,
    DeleteJob,
    ReserveIteration,
    TaskDecision,
    VerifyCheckpoint,
)
from kubetune.decide.context import (
    ACTIVE_TRIAL_PHASES,
    MESSAGE_LIMIT,
    Reconcile,
    experiment_name,
)
from kubetune.decide.inputs import Defaults, ModelObject, ObservedJob, TaskObject
from kubetune.decide.sampling import planned_trials, sampler_for
from kubetune.decide.trialconfig import search_space_problems
from kubetune.locations import lineage_root, scratch_uri, trial_checkpoint_uri
from kubetune.manifests import job_name

MODEL_RETRY_SECONDS = 30.0


def decide_task(
    task: TaskObject,
    model: ModelObject | None,
    jobs: Sequence[ObservedJob],
    defaults: Defaults,
    now: datetime,
    *,
    experiment_id: str | None = None,
) -> TaskDecision:
    """Decide one reconcile of a FineTuningTask.

    `model` is the TunedModel named by `spec.modelRef` (None if it does not exist); `jobs`
    are all Jobs labelled with the task (any attempt); `experiment_id` is the MLflow id of
    `status.mlflow.experimentName`, when the handler has it.
    """
    r = Reconcile(task, model, jobs, defaults, now.replace(microsecond=0), _copy(task.status))
    status, spec = r.status, task.spec
    if status.mlflow is not None and experiment_id and status.mlflow.experiment_id is None:
        status.mlflow.experiment_id = experiment_id
    terminal = c.task_phase(status.conditions) in c.TERMINAL_PHASES
    restart = spec.restart_generation > status.observed_restart_generation
    if status.attempt == 0 or (terminal and restart):
        if spec.suspend:
            _hold(r)
        else:
            _start_attempt(r)
    elif terminal:
        r.actions += [DeleteJob(j.name) for j in jobs if j.active]
    elif status.promotion is not None:
        promotion.advance(r)
    else:
        _run(r)
    ended = c.task_phase(status.conditions) in c.TERMINAL_PHASES
    if ended and not spec.suspend and spec.restart_generation > status.observed_restart_generation:
        r.requeue(0)  # a restart requested while it ran starts now
    return r.decision()


def _copy(status: FineTuningTaskStatus) -> FineTuningTaskStatus:
    return status.model_copy(deep=True)


def _hold(r: Reconcile) -> None:
    """Suspended before an attempt starts: wait, and stop leftovers of an older attempt."""
    r.actions += [DeleteJob(j.name) for j in r.jobs if j.active]
    if r.status.attempt == 0:
        r.condition(c.RUNNING, "False", c.REASON_SUSPENDED, "suspended before it started")


def _blocked(r: Reconcile, reason: str, message: str, retry: float | None) -> None:
    if r.condition(c.INPUTS_READY, "False", reason, message):
        r.event(True, reason, message)
    if retry is not None:
        r.requeue(retry)


def _start_attempt(r: Reconcile) -> None:
    """Reserve the next iteration of the lineage and reset the status for a new attempt."""
    task, model, status, spec = r.task, r.model, r.status, r.task.spec
    if model is None:
        message = f"TunedModel {spec.model_ref.name} not found in namespace {task.namespace}"
        _blocked(r, c.REASON_MODEL_NOT_FOUND, message, MODEL_RETRY_SECONDS)
        return
    storage = r.storage
    if storage is None:
        message = "no bucket: set spec.storage.bucket on the TunedModel or an operator default"
        _blocked(r, c.REASON_STORAGE_NOT_CONFIGURED, message, None)
        return
    problems = search_space_problems(spec)
    if problems:
        _blocked(r, c.REASON_INVALID_SPEC, "; ".join(problems)[:MESSAGE_LIMIT], None)
        return
    iteration = model.status.last_iteration + 1
    r.actions.append(ReserveIteration(model.name, iteration, model.resource_version))
    r.actions += [DeleteJob(j.name) for j in r.jobs if not j.deleting]
    current = model.status.current_iteration
    if current is None or spec.start_from == "base":
        status.starting_model, status.starting_iteration = model.spec.base_model, None
    else:
        status.starting_model, status.starting_iteration = current.uri, current.iteration
    restarted = status.attempt > 0
    status.attempt += 1
    status.observed_restart_generation = spec.restart_generation
    status.iteration = iteration
    status.scratch_uri = scratch_uri(lineage_root(storage, task.namespace, model.name), iteration)
    status.trials = []
    hyper = spec.hyperparameters
    status.counts = TrialCounts(total=planned_trials(hyper, sampler_for(hyper)))
    status.best_trial = None
    status.promotion = None
    status.promoted_uri = None
    status.mlflow = (
        MlflowStatus(experiment_name=experiment_name(task.namespace, model.name, iteration))
        if r.defaults.mlflow_tracking_uri
        else None
    )
    status.started_at = r.now
    status.finished_at = None
    for type_ in (c.SUCCEEDED, c.FAILED, c.CANCELED):
        if c.get_condition(status.conditions, type_) is not None:
            r.condition(type_, "False", c.REASON_RESTARTED, f"attempt {status.attempt} started")
    r.condition(c.INPUTS_READY, "True", c.REASON_RESOLVED, "")
    origin = (
        f"iteration {status.starting_iteration}" if status.starting_iteration else "the base model"
    )
    message = f"attempt {status.attempt}: iteration {iteration} of {model.name}, from {origin}"
    r.condition(c.RUNNING, "True", c.REASON_STARTED, message)
    r.event(False, c.REASON_RESTARTED if restarted else c.REASON_STARTED, message)
    r.requeue(0)


def _observe(r: Reconcile, trial: TrialStatus, job: ObservedJob) -> None:
    """Fold the Job's state into its trial."""
    if job.phase == "Running":
        trial.phase = "Running"
        trial.started_at = job.started_at or trial.started_at or r.now
    elif job.phase == "Succeeded" and job.result is not None:
        result = job.result
        trial.phase = "Succeeded"
        trial.metric = result.value
        trial.baseline = result.baseline_value
        trial.metrics = dict(result.metrics)
        trial.checkpoint_uri = result.checkpoint_uri
        trial.mlflow_run_id = result.mlflow_run_id
        trial.started_at = trial.started_at or job.started_at
        trial.finished_at = job.finished_at or r.now
        r.event(
            False, "TrialSucceeded", f"{trial.name}: {result.objective.metric}={result.value:.4f}"
        )
    elif job.phase == "Succeeded" and job.result_error is not None:
        _fail(r, trial, job, "NoResult", job.result_error)
    elif job.phase == "Failed":
        reason = EXIT_REASONS.get(job.exit_code or -1) or job.reason or "JobFailed"
        _fail(r, trial, job, reason, job.termination_message or job.reason or "the Job failed")


def _fail(r: Reconcile, trial: TrialStatus, job: ObservedJob, reason: str, message: str) -> None:
    trial.phase = "Failed"
    trial.reason = reason
    trial.message = message[:MESSAGE_LIMIT]
    trial.exit_code = job.exit_code
    trial.started_at = trial.started_at or job.started_at
    trial.finished_at = job.finished_at or r.now
    r.event(True, "TrialFailed", f"{trial.name}: {reason}: {trial.message}"[:1024])


def best_trial(trials: Sequence[TrialStatus], objective: ObjectiveSpec) -> TrialStatus | None:
    """The succeeded trial with the best metric; ties go to the lower index."""
    scored = [t for t in trials if t.phase == "Succeeded" and t.metric is not None]
    if not scored:
        return None
    sign = -1.0 if objective.direction == "maximize" else 1.0
    return min(scored, key=lambda t: (sign * (t.metric or 0.0), t.index))


def _goal_reached(best: TrialStatus | None, objective: ObjectiveSpec) -> bool:
    if best is None or best.metric is None or objective.goal is None:
        return False
    if objective.direction == "maximize":
        return best.metric >= objective.goal
    return best.metric <= objective.goal


def _run(r: Reconcile) -> None:
    """Follow the trials' Jobs, stop or launch trials, and start the promotion when done."""
    status, spec = r.status, r.task.spec
    missing: list[TrialStatus] = []
    for trial in status.trials:
        if trial.phase not in ACTIVE_TRIAL_PHASES:
            continue
        job = r.job(trial.name)
        if job is None:
            missing.append(trial)
        else:
            _observe(r, trial, job)
    failed = sum(t.phase == "Failed" for t in status.trials)
    limit = spec.hyperparameters.max_failed_trials
    if limit is not None and failed > limit:
        message = f"{failed} trials failed, more than maxFailedTrials={limit}"
        r.end(c.FAILED, c.REASON_MAX_FAILED_TRIALS, message)
        return
    if spec.suspend:
        r.end(c.CANCELED, c.REASON_SUSPENDED, "suspended: running trials were stopped")
        return
    if r.model is None or r.storage is None:
        message = f"TunedModel {spec.model_ref.name} not found in namespace {r.task.namespace}"
        _blocked(r, c.REASON_MODEL_NOT_FOUND, message, MODEL_RETRY_SECONDS)
        return
    r.condition(c.INPUTS_READY, "True", c.REASON_RESOLVED, "")
    best = best_trial(status.trials, spec.objective)
    status.best_trial = (
        BestTrial(index=best.index, name=best.name, metric=spec.objective.metric, value=best.metric)
        if best is not None and best.metric is not None
        else None
    )
    try:
        for trial in missing:
            r.create_job(trial)
        _launch(r, stop=_goal_reached(best, spec.objective))
    except ValidationError as error:
        r.end(c.FAILED, c.REASON_INVALID_SPEC, f"invalid trial config: {error}"[:MESSAGE_LIMIT])
        return
    active = sum(t.phase in ACTIVE_TRIAL_PHASES for t in status.trials)
    if active:
        done = sum(t.phase not in ACTIVE_TRIAL_PHASES for t in status.trials)
        message = f"{done}/{status.counts.total} trials done, {active} running"
        r.condition(c.RUNNING, "True", c.REASON_TRIALS_RUNNING, message)
    elif best is None:
        r.end(c.FAILED, c.REASON_NO_SUCCESSFUL_TRIAL, f"all {len(status.trials)} trials failed")
    else:
        promotion.start(r, best)


def _launch(r: Reconcile, *, stop: bool) -> None:
    """Add trials, up to the parallel limit and the planned total, and create their Jobs."""
    status, hyper = r.status, r.task.spec.hyperparameters
    sampler = sampler_for(hyper)
    status.counts.total = planned_trials(hyper, sampler)
    assert status.scratch_uri is not None
    active = sum(t.phase in ACTIVE_TRIAL_PHASES for t in status.trials)
    while not stop and len(status.trials) < status.counts.total and active < hyper.parallel_trials:
        index = len(status.trials)
        trial = TrialStatus(
            index=index,
            name=job_name(r.task.name, status.attempt, index),
            parameters=sampler.suggest(index, status.trials),
            phase="Pending",
            checkpoint_uri=trial_checkpoint_uri(status.scratch_uri, index),
        )
        r.create_job(trial)
        status.trials.append(trial)
        active += 1


def action_failed(
    task: TaskObject, action: Action, message: str, now: datetime
) -> FineTuningTaskStatus:
    """The status to write when applying `action` failed (the decision's own status is
    dropped). A failed verification sends the promotion back to Copy; anything else is
    reported on InputsReady and retried by the handler with backoff."""
    status = _copy(task.status)
    now = now.replace(microsecond=0)
    p = status.promotion
    if isinstance(action, VerifyCheckpoint) and p is not None and p.step == "Verify":
        p.verify_failures += 1
        p.step = "Copy"
    text = f"{type(action).__name__} failed: {message}"[:MESSAGE_LIMIT]
    c.set_condition(
        status.conditions,
        c.INPUTS_READY,
        "False",
        c.REASON_ACTION_FAILED,
        text,
        task.generation,
        now,
    )
    status.phase = c.task_phase(status.conditions)
    return status


def invalid_spec(
    status: FineTuningTaskStatus, generation: int, message: str, now: datetime
) -> FineTuningTaskStatus:
    """The status to write when the spec cannot be parsed (see `TaskObject.from_body`)."""
    status = _copy(status)
    c.set_condition(
        status.conditions,
        c.INPUTS_READY,
        "False",
        c.REASON_INVALID_SPEC,
        message[:MESSAGE_LIMIT],
        generation,
        now.replace(microsecond=0),
    )
    status.observed_generation = generation
    status.phase = c.task_phase(status.conditions)
    return status
