"""The FineTuningTask decision: from the task, its TunedModel and its observed Jobs to the
actions to take and the status to write.

One call handles whichever stage the task is in: start an attempt (reserve an iteration,
resolve the starting model, plan the warm start), run trials (follow Jobs, stop hopeless
ones early, launch new ones up to the parallel limit, stop at the failure limit, the goal
or on suspend), promote the winner (`promotion`), or, once finished, make sure nothing
runs. Everything it needs to resume is in the status it returns, so a restarted operator
continues exactly where the last one stopped.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from pydantic import ValidationError

from kubetune.api import (
    BestTrial,
    FineTuningTaskSpec,
    FineTuningTaskStatus,
    MlflowStatus,
    ObjectiveSpec,
    StepValue,
    SuggestionOrigin,
    TrialCounts,
    TrialStatus,
)
from kubetune.api import conditions as c
from kubetune.api.taskstatus import MAX_EVALUATIONS
from kubetune.contract import EXIT_REASONS, TrialProgress
from kubetune.decide import promotion, warmstart
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
from kubetune.decide.observe import SUSPENDED
from kubetune.decide.sampling import Sampler, planned_trials, sampler_for
from kubetune.decide.study import prune_decision
from kubetune.decide.trialconfig import search_space_problems
from kubetune.locations import lineage_root, scratch_uri, trial_checkpoint_uri
from kubetune.manifests import job_name

MODEL_RETRY_SECONDS = 30.0
PROGRESS_POLL_SECONDS = 5.0
"""With early stopping, how often running trials' progress is read."""


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
    status.warm_start = warmstart.plan(spec, model.status)
    status.counts = TrialCounts(total=planned_trials(spec.hyperparameters, _sampler(spec)))
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


def _sampler(spec: FineTuningTaskSpec) -> Sampler:
    return sampler_for(spec.hyperparameters, spec.objective.direction)


def _record_evaluations(trial: TrialStatus, points: dict[int, float]) -> None:
    """Merge intermediate values into the trial's (a restarted Pod starts a new file)."""
    merged = {e.step: e.value for e in trial.evaluations or []} | points
    if merged:
        ordered = sorted(merged.items())[-MAX_EVALUATIONS:]
        trial.evaluations = [StepValue(step=step, value=value) for step, value in ordered]


def _progress_points(progress: TrialProgress, metric: str) -> dict[int, float]:
    return {e.step: e.metrics[metric] for e in progress.evaluations if metric in e.metrics}


def _observe(r: Reconcile, trial: TrialStatus, job: ObservedJob) -> None:
    """Fold the Job's state (and, with early stopping, its progress) into its trial."""
    metric = r.task.spec.objective.metric
    stopping = r.task.spec.hyperparameters.early_stopping is not None
    if stopping and job.progress is not None:
        _record_evaluations(trial, _progress_points(job.progress, metric))
    if job.phase == "Pending":
        _waiting(r, trial, job)
    elif job.phase == "Running":
        trial.phase = "Running"
        trial.reason = trial.message = None
        trial.started_at = job.started_at or trial.started_at or r.now
    elif job.phase == "Succeeded" and job.result is not None:
        result = job.result
        trial.phase = "Succeeded"
        trial.metric = result.value
        trial.baseline = result.baseline_value
        trial.metrics = dict(result.metrics)
        trial.checkpoint_uri = result.checkpoint_uri
        trial.mlflow_run_id = result.mlflow_run_id
        if stopping:
            _record_evaluations(trial, {result.steps: result.value})
        trial.started_at = trial.started_at or job.started_at
        trial.finished_at = job.finished_at or r.now
        r.event(
            False, "TrialSucceeded", f"{trial.name}: {result.objective.metric}={result.value:.4f}"
        )
    elif job.phase == "Succeeded" and job.result_error is not None:
        _fail(r, trial, job, "NoResult", job.result_error)
    elif job.phase == "Failed":
        reason = EXIT_REASONS.get(job.exit_code or -1) or job.reason or "JobFailed"
        message = job.termination_message or job.reason or "the Job failed"
        if job.termination_message is None and trial.phase == "Pending" and trial.reason:
            # e.g. `activeDeadlineSeconds` ran out while a quota refused the Pod
            message = f"{message} while its Pod waited: {trial.reason}: {trial.message}"
        _fail(r, trial, job, reason, message)


QUEUED_REASONS = frozenset({"Unschedulable", SUSPENDED})
"""Waiting reasons of a trial queued for capacity (no node has a free GPU; Kueue has not
admitted it yet): normal on a shared cluster, so recorded in status but not warned about."""


def _waiting(r: Reconcile, trial: TrialStatus, job: ObservedJob) -> None:
    """Say why a Pending trial's Pod does not run, and warn once per reason where someone
    must act: a trial refused by a quota or with an image that cannot be pulled would
    otherwise wait silently."""
    reason, message = job.waiting_reason, (job.waiting_message or "")[:MESSAGE_LIMIT] or None
    if reason is not None and reason != trial.reason and reason not in QUEUED_REASONS:
        r.event(True, "TrialWaiting", f"{trial.name}: {reason}: {message}"[:1024])
    trial.reason, trial.message = reason, message


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
    return next(iter(warmstart.ranked(trials, objective)), None)


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
    if spec.hyperparameters.early_stopping is not None:
        _stop_hopeless(r)
    failed = sum(t.phase == "Failed" for t in status.trials)
    limit = spec.hyperparameters.max_failed_trials
    if limit is not None and failed > limit:
        message = f"{failed} trials failed, more than maxFailedTrials={limit}"
        message += _first_failure(status.trials)
        r.end(c.FAILED, c.REASON_MAX_FAILED_TRIALS, message[:MESSAGE_LIMIT])
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
    goal = _goal_reached(best, spec.objective)
    if goal and best is not None and status.counts.total > len(status.trials):
        message = f"{best.name} reached the goal {spec.objective.goal}: no further trials"
        r.event(False, c.REASON_GOAL_REACHED, message)
    try:
        for trial in missing:
            r.create_job(trial)
        _launch(r, stop=goal)
    except ValidationError as error:
        r.end(c.FAILED, c.REASON_INVALID_SPEC, f"invalid trial config: {error}"[:MESSAGE_LIMIT])
        return
    active = sum(t.phase in ACTIVE_TRIAL_PHASES for t in status.trials)
    if active:
        done = sum(t.phase not in ACTIVE_TRIAL_PHASES for t in status.trials)
        message = f"{done}/{status.counts.total} trials done, {active} running"
        waiting = [t for t in status.trials if t.phase == "Pending" and t.reason]
        if waiting:
            message += f"; {len(waiting)} waiting, {waiting[0].name}: {waiting[0].reason}"
        r.condition(c.RUNNING, "True", c.REASON_TRIALS_RUNNING, message)
        if spec.hyperparameters.early_stopping is not None:
            r.requeue(PROGRESS_POLL_SECONDS)
    elif best is None:
        message = f"all {len(status.trials)} trials failed" + _first_failure(status.trials)
        r.end(c.FAILED, c.REASON_NO_SUCCESSFUL_TRIAL, message[:MESSAGE_LIMIT])
    else:
        promotion.start(r, best)


def _first_failure(trials: Sequence[TrialStatus]) -> str:
    """The first failed trial's reason and message, so the task's Failed condition says
    what went wrong (e.g. the trainer naming an empty data file) without a look at every
    trial."""
    failed = next((t for t in trials if t.phase == "Failed"), None)
    if failed is None:
        return ""
    # The trainer's termination message starts with its reason ("BadInput: ...").
    return f"; {failed.name}: {failed.message or failed.reason}"


def _stop_hopeless(r: Reconcile) -> None:
    """Prune running trials the median rule gives up on; their Jobs are deleted, which
    frees their resources for the next suggestion in this same reconcile."""
    status, spec = r.status, r.task.spec
    rule = spec.hyperparameters.early_stopping
    assert rule is not None
    for trial in status.trials:
        if trial.phase != "Running":
            continue
        at = prune_decision(trial, status.trials, rule, spec.objective.direction)
        if at is None:
            continue
        job = r.job(trial.name)
        if job is not None and not job.deleting:
            r.actions.append(DeleteJob(trial.name))
        trial.phase = "Pruned"
        trial.reason = c.REASON_EARLY_STOPPED
        trial.pruned = at
        trial.message = (
            f"{spec.objective.metric} {at.value:.4f} at step {at.step} is worse than the "
            f"median {at.median:.4f} of the completed trials"
        )
        trial.finished_at = r.now
        r.event(False, "TrialPruned", f"{trial.name}: {trial.message}")


def _launch(r: Reconcile, *, stop: bool) -> None:
    """Add trials, up to the parallel limit and the planned total, and create their Jobs:
    first the warm-start sets, then the sampler's suggestions. Once the goal is reached
    (`stop`), the trials already started are all the attempt runs."""
    status, hyper = r.status, r.task.spec.hyperparameters
    sampler = _sampler(r.task.spec)
    planned = planned_trials(hyper, sampler)
    status.counts.total = min(planned, len(status.trials)) if stop else planned
    assert status.scratch_uri is not None
    warm = status.warm_start.parameters if status.warm_start is not None else []
    active = sum(t.phase in ACTIVE_TRIAL_PHASES for t in status.trials)
    while len(status.trials) < status.counts.total and active < hyper.parallel_trials:
        index = len(status.trials)
        origin: SuggestionOrigin
        if index < len(warm):
            parameters, origin = dict(warm[index]), "warm-start"
        else:
            origin = sampler.origin(status.trials)
            parameters = sampler.suggest(index - len(warm), status.trials)
        trial = TrialStatus(
            index=index,
            name=job_name(r.task.name, status.attempt, index),
            parameters=parameters,
            origin=origin,
            phase="Pending",
            checkpoint_uri=trial_checkpoint_uri(status.scratch_uri, index),
        )
        r.create_job(trial)
        status.trials.append(trial)
        active += 1


def action_failed(
    task: TaskObject,
    action: Action,
    message: str,
    now: datetime,
    *,
    copy_incomplete: bool = False,
) -> FineTuningTaskStatus:
    """The status to write when applying `action` failed (the decision's own status is
    dropped). A verification that found the copy incomplete (`copy_incomplete`) sends the
    promotion back to Copy; anything else, an unreachable S3 during Verify included, is
    reported on InputsReady and retried by the handler with backoff."""
    status = _copy(task.status)
    now = now.replace(microsecond=0)
    p = status.promotion
    if (
        copy_incomplete
        and isinstance(action, VerifyCheckpoint)
        and p is not None
        and p.step == "Verify"
    ):
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
