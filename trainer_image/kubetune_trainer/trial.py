"""One trial, start to finish: the sequence the CLI runs.

Read the data (first, so bad data fails fast), fetch and load the base model, evaluate it
(the baseline), resume or start training, evaluate again, export the checkpoint and write
`result.json` beside it. Every step reports to the observers (log, progress file, MLflow).

One trial may span several GPUs of one machine: started under `torchrun`, each process
trains on its share of every batch (see `kubetune_trainer.step`), and rank 0 alone
evaluates, reports, saves resumable state, exports and writes the result; the others
return None. torchrun's environment (`WORLD_SIZE`, `RANK`, `LOCAL_RANK`) says which process
this is, so the operator's config is the same for one GPU or several.
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from kubetune.contract import Precision, TrialConfig, TrialResult
from kubetune_trainer import __version__
from kubetune_trainer.baseline import SharedBaseline, baseline_key
from kubetune_trainer.batching import TokenizedExamples
from kubetune_trainer.checkpoint import ResumeStore, fingerprint
from kubetune_trainer.data import load_data
from kubetune_trainer.errors import InputError, TrainingError
from kubetune_trainer.evaluation import RetrievalEvaluator, RetrievalSet
from kubetune_trainer.losses import build_loss
from kubetune_trainer.model import apply_lora, export, load_model
from kubetune_trainer.storage import Storage
from kubetune_trainer.tracking import (
    LogObserver,
    MlflowObserver,
    Observer,
    Observers,
    ProgressObserver,
    mlflow_tracking_uri,
    trial_parameters,
)
from kubetune_trainer.train import Trainer, total_steps

log = logging.getLogger(__name__)


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


@dataclass(frozen=True)
class Process:
    """This process's place among the trial's processes, from torchrun's environment."""

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1

    @property
    def lead(self) -> bool:
        return self.rank == 0

    @classmethod
    def from_environ(cls, environ: Mapping[str, str] = os.environ) -> Process:
        try:
            return cls(
                rank=int(environ.get("RANK", "0")),
                local_rank=int(environ.get("LOCAL_RANK", "0")),
                world_size=int(environ.get("WORLD_SIZE", "1")),
            )
        except ValueError as error:
            raise InputError(f"bad torchrun environment: {error}") from None


def _device_name(device: torch.device, processes: int) -> str:
    """What ran the trial: the device's name, with the process count when several ran it."""
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else device.type
    return name if processes == 1 else f"{processes} x {name}"


def autocast_dtype(precision: Precision, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for `precision` on `device`; None means plain fp32."""
    if precision == "auto":
        cuda_bf16 = device.type == "cuda" and torch.cuda.is_bf16_supported()
        return torch.bfloat16 if cuda_bf16 else None
    if precision == "fp16" and device.type != "cuda":
        raise InputError("hyperparameters.precision: fp16 needs a CUDA device; use bf16 or fp32")
    return {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]


def _open_mlflow(config: TrialConfig, resume_run_id: str | None) -> MlflowObserver | None:
    tracking_uri = mlflow_tracking_uri(config)
    if tracking_uri is None:
        log.info("no MLflow tracking URI: running without MLflow")
        return None
    from mlflow.exceptions import MlflowException

    try:
        return MlflowObserver(config, tracking_uri, resume_run_id)
    except (MlflowException, OSError) as error:
        log.warning("cannot start an MLflow run at %s, continuing without: %s", tracking_uri, error)
        return None


def run_trial(
    config: TrialConfig,
    extra_observers: Sequence[Observer] = (),
    device: torch.device | None = None,
    work_dir: Path | None = None,
    process: Process | None = None,
) -> TrialResult | None:
    """Run the trial described by `config` and return its result (also written to storage);
    None in processes other than rank 0 of a multi-GPU trial."""
    started = time.perf_counter()
    process = process or Process.from_environ()
    if process.world_size == 1:
        device = device or default_device()
    elif config.gradient_cache.enabled:
        raise InputError("gradient_cache: runs in one process only; start the trial with one")
    elif torch.cuda.is_available():
        device = torch.device("cuda", process.local_rank)
        torch.cuda.set_device(device)
        dist.init_process_group("nccl", device_id=device)
    else:  # several CPU processes (gloo): slow, but the same trial, and how tests run it
        device = torch.device("cpu")
        dist.init_process_group("gloo")
    amp_dtype = autocast_dtype(config.hyperparameters.precision, device)
    try:
        with tempfile.TemporaryDirectory(prefix="kubetune-", dir=work_dir) as scratch:
            return _run(
                config, Path(scratch), device, amp_dtype, list(extra_observers), started, process
            )
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def _evaluate_baseline(
    config: TrialConfig,
    storage: Storage,
    scratch: Path,
    evaluate: Callable[[], dict[str, float]],
    key: str,
) -> dict[str, float]:
    """The starting model's metrics: shared by an earlier trial of the iteration if it
    evaluated them under the same settings, else evaluated here (and shared)."""
    uri = config.output.baseline_uri
    if uri is None:
        return evaluate()
    shared = SharedBaseline(storage, uri, key, scratch / "baseline")
    metrics = shared.load()
    if metrics is None:
        metrics = evaluate()
        shared.save(metrics, config.trial.name)
    return metrics


def _run(
    config: TrialConfig,
    scratch: Path,
    device: torch.device,
    amp_dtype: torch.dtype | None,
    extra_observers: list[Observer],
    started: float,
    process: Process,
) -> TrialResult | None:
    storage = Storage()
    output = config.output
    assert output.resume_uri is not None and output.result_uri is not None
    hyper = config.hyperparameters
    # other seeds on other ranks: different dropout masks; DDP copies rank 0's weights
    torch.manual_seed(hyper.seed + process.rank)
    resume = ResumeStore(storage, output.resume_uri, scratch / "resume", fingerprint(config))
    state = resume.load(device)
    observers: list[Observer] = []
    mlflow = None
    if process.lead:
        observers += [LogObserver(), *extra_observers]
        if output.progress_uri is not None:
            observers.append(ProgressObserver(storage, output.progress_uri, config.trial.name))
        mlflow = _open_mlflow(config, state.get("mlflow_run_id") if state else None)
        if mlflow is not None:
            observers.append(mlflow)
    observer = Observers(observers)
    try:
        observer.on_phase("starting", 0)
        data = load_data(config.data, storage, scratch / "data", config.loss_name == "triplet")
        model_dir = storage.local_dir(config.base_model, scratch / "base_model")
        model = load_model(model_dir, config.base_model)
        model.encoder.to(device)
        if hyper.max_seq_length is None:
            hyper = hyper.model_copy(update={"max_seq_length": model.eval_max_seq_length})
            config = config.model_copy(update={"hyperparameters": hyper})
        retrieval = RetrievalSet.from_examples(data.eval)
        evaluator = RetrievalEvaluator(retrieval, model.eval_max_seq_length)
        log.info(
            "%d training examples; evaluation: %d queries over %d documents, max length %d",
            len(data.train),
            len(retrieval.queries),
            len(retrieval.corpus),
            model.eval_max_seq_length,
        )
        steps = total_steps(config, len(data.train))
        baseline: dict[str, float] = {}
        if state is not None:
            baseline = state["baseline_metrics"]
        elif process.lead:
            observer.on_phase("baseline", steps)
            baseline = _evaluate_baseline(
                config,
                storage,
                scratch,
                lambda: evaluator(model, device, amp_dtype),
                baseline_key(
                    config.base_model, retrieval, model.eval_max_seq_length, amp_dtype, device
                ),
            )
        observer.on_baseline(baseline)
        if config.method == "lora":
            apply_lora(model, config.lora)
            model.encoder.to(device)
        tokenized = TokenizedExamples(data.train, model, hyper.max_seq_length)

        def save_state(trainer_state: dict[str, Any]) -> None:
            run_id = mlflow.run_id if mlflow is not None else None
            resume.save(trainer_state | {"baseline_metrics": baseline, "mlflow_run_id": run_id})

        trainer = Trainer(
            config=config,
            encoder=model.encoder,
            data=tokenized,
            loss_fn=build_loss(config.loss_name, config.loss),
            device=device,
            amp_dtype=amp_dtype,
            evaluate=(lambda: evaluator(model, device, amp_dtype)) if process.lead else None,
            observer=observer,
            save_state=save_state
            if hyper.checkpoint_every_steps is not None and process.lead
            else None,
        )
        if state is not None:
            trainer.restore(state)
        observer.on_phase("training", steps)
        try:
            outcome = trainer.run()
        except torch.OutOfMemoryError as error:
            raise TrainingError(
                f"out of memory at step {trainer.step}: lower hyperparameters.batch_size or "
                "max_seq_length, or enable gradient_cache"
            ) from error
        if not process.lead:
            return None
        metrics = evaluator(model, device, amp_dtype)
        observer.on_eval(outcome.steps, metrics)
        observer.on_phase("exporting", steps)
        checkpoint_dir = scratch / "checkpoint"
        export(model, checkpoint_dir)
        storage.upload_dir(checkpoint_dir, output.checkpoint_uri)
        metric = config.objective.metric
        result = TrialResult(
            trial=config.trial,
            objective=config.objective,
            value=metrics[metric],
            baseline_value=baseline[metric],
            metrics=metrics,
            baseline_metrics=baseline,
            parameters=trial_parameters(config),
            steps=outcome.steps,
            epochs=outcome.epochs,
            train_samples=len(data.train),
            eval_queries=len(retrieval.queries),
            eval_corpus=len(retrieval.corpus),
            samples_per_second=outcome.samples_per_second,
            train_seconds=outcome.train_seconds,
            wall_seconds=time.perf_counter() - started,
            resumed_from_step=outcome.resumed_from_step,
            checkpoint_uri=output.checkpoint_uri,
            base_model=config.base_model,
            train_data=config.data.train,
            validation_data=config.data.validation,
            eval_max_seq_length=model.eval_max_seq_length,
            device=_device_name(device, process.world_size),
            mlflow_run_id=mlflow.run_id if mlflow is not None else None,
            trainer_version=__version__,
        )
        storage.put_json(output.result_uri, result.model_dump(mode="json"))
        resume.delete()
    except BaseException as error:
        observer.on_failure(error)
        raise
    observer.on_result(result)
    log.info("result written to %s", output.result_uri)
    return result
