"""The contract between the operator and one trainer process, shared by both sides.

The operator builds a `TrialConfig`, serialises it into the trainer Job (env var
`KUBETUNE_TRIAL_CONFIG`, or a file passed with `--config`), and later reads back what the
trainer wrote: `result.json` (a `TrialResult`) beside the checkpoint, the optional progress
file (a `TrialProgress`), the container's exit code (`EXIT_*`) and its termination message.
The trainer (`kubetune_trainer`) validates its input with these same models, so the two sides
cannot drift apart.

This module depends only on pydantic and the standard library: the operator imports it and
must never pull in torch. S3 endpoint and credentials are deliberately absent: the trainer
takes them from the standard AWS environment variables, so secrets never land in a config.
"""

from __future__ import annotations

import posixpath
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

SCHEMA_VERSION: Literal[1] = 1

TRIAL_CONFIG_ENV = "KUBETUNE_TRIAL_CONFIG"
"""Env var holding the `TrialConfig` as JSON (the alternative is `--config PATH`)."""

PROCESSES_ENV = "KUBETUNE_PROCESSES"
"""Env var: how many processes (one per GPU) run the trial; the operator sets it from the
trainer's GPU resources unless the task's env does, the trainer otherwise counts its GPUs."""

LOG_FORMAT_ENV = "KUBETUNE_LOG_FORMAT"
"""Env var: `text` or `json` (one JSON object a line), for the operator's log and its trainers'
(the operator passes its own format on, unless the task's env sets one)."""

TERMINATION_MESSAGE_ENV = "KUBETUNE_TERMINATION_MESSAGE_PATH"
DEFAULT_TERMINATION_MESSAGE_PATH = "/dev/termination-log"
TERMINATION_MESSAGE_MAX_BYTES = 4096
"""Kubernetes truncates a container's termination message at 4096 bytes."""

RESULT_FILENAME = "result.json"
PROGRESS_FILENAME = "progress.json"
RESUME_DIRNAME = "resume"

EXIT_OK = 0
EXIT_INTERNAL_ERROR = 1
"""An unexpected exception: a bug in the trainer, not in the trial's input."""
EXIT_BAD_INPUT = 2
"""Invalid config, unreadable or malformed data, missing or unusable base model."""
EXIT_TRAINING_FAILED = 3
"""Training itself failed: non-finite loss, out of memory, or a similar runtime failure."""
EXIT_STORAGE_FAILED = 4
"""Reading from or writing to S3 (or the local output directory) failed."""

EXIT_REASONS: dict[int, str] = {
    EXIT_OK: "Succeeded",
    EXIT_INTERNAL_ERROR: "TrainerError",
    EXIT_BAD_INPUT: "BadInput",
    EXIT_TRAINING_FAILED: "TrainingFailed",
    EXIT_STORAGE_FAILED: "StorageFailed",
}
"""Exit code -> a CamelCase reason the operator can put into a condition."""

RETRYABLE_EXIT_CODES: frozenset[int] = frozenset({EXIT_STORAGE_FAILED})
"""Exit codes worth a retry of the same trial; bad input and training failures repeat."""

Metric = Literal["ndcg@10", "recall@1", "recall@10", "recall@100", "mrr@10"]
METRICS: tuple[Metric, ...] = ("ndcg@10", "recall@1", "recall@10", "recall@100", "mrr@10")
"""The retrieval metrics every evaluation reports; all of them are greater-is-better."""

DataFormat = Literal["pairs", "triplets", "scored", "sessions"]
LossName = Literal["mnrl", "mnrl_symmetric", "triplet", "weighted"]
Method = Literal["full", "lora"]
Precision = Literal["auto", "fp32", "bf16", "fp16"]

DEFAULT_LEARNING_RATE: dict[Method, float] = {"full": 5e-5, "lora": 5e-4}
"""Used when `hyperparameters.learning_rate` is not given; LoRA needs a larger step."""

LOSSES_FOR_FORMAT: dict[DataFormat, tuple[LossName, ...]] = {
    "pairs": ("mnrl", "mnrl_symmetric"),
    "triplets": ("mnrl", "mnrl_symmetric", "triplet"),
    "sessions": ("mnrl", "mnrl_symmetric", "triplet"),
    "scored": ("weighted",),
}
"""Which losses can train on which data format (a triplet loss needs negatives, the
weighted loss needs scores)."""

DEFAULT_LOSS_FOR_FORMAT: dict[DataFormat, LossName] = {
    "pairs": "mnrl",
    "triplets": "mnrl",
    "sessions": "mnrl",
    "scored": "weighted",
}

NonEmptyStr = Annotated[str, Field(min_length=1)]
Name = Annotated[str, Field(min_length=1, max_length=253)]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _is_s3(uri: str) -> bool:
    return uri.startswith("s3://")


def _check_uri(uri: str) -> str:
    if "://" in uri and not _is_s3(uri):
        raise ValueError(f"{uri!r}: only s3:// URIs and local paths are supported")
    if _is_s3(uri):
        bucket = uri[len("s3://") :].split("/", 1)[0]
        if not bucket:
            raise ValueError(f"{uri!r}: an s3:// URI needs a bucket name")
    return uri


def mlflow_eval_metric(metric: str) -> str:
    """The MLflow key of an evaluation metric: MLflow rejects '@', so `ndcg@10` is logged
    as `eval/ndcg_at_10` (the operator reads these back to chart a task's trials)."""
    return "eval/" + metric.replace("@", "_at_")


def sibling_uri(uri: str, name: str) -> str:
    """`name` in the same directory (or S3 prefix) as the directory `uri`.

    `s3://b/tasks/t/trial-3/model/` with `result.json` gives `s3://b/tasks/t/trial-3/result.json`.
    """
    if _is_s3(uri):
        bucket, _, key = uri[len("s3://") :].partition("/")
        parent = posixpath.dirname(key.rstrip("/"))
        return f"s3://{bucket}/{parent}/{name}" if parent else f"s3://{bucket}/{name}"
    return posixpath.join(posixpath.dirname(uri.rstrip("/")) or ".", name)


class TrialIdentity(_Model):
    """Who this trial is: where it belongs in the operator's objects and in the lineage."""

    namespace: Name
    task: Name = Field(description="Name of the tuning task object that owns the trial.")
    lineage: Name = Field(
        description="The model lineage this trial may extend (the model's stable name)."
    )
    iteration: int = Field(ge=0, description="Which round of tuning within the lineage.")
    index: int = Field(ge=0, description="The trial's index within its task.")
    name: Name = Field(description="The trial's own unique name (also the Job's name).")


class ColumnMap(_Model):
    """Logical column -> the column name in the data files."""

    anchor: NonEmptyStr = "anchor"
    positive: NonEmptyStr = "positive"
    negative: NonEmptyStr = "negative"
    score: NonEmptyStr = "score"
    query: NonEmptyStr = "query"
    shown: NonEmptyStr = "shown"
    clicked: NonEmptyStr = "clicked"


class DataSpec(_Model):
    """Where the training data is, in which shape, and how to hold some back for evaluation.

    Formats (one row each, JSONL, JSONL.gz or Parquet):
    - `pairs`: anchor, positive.
    - `triplets`: anchor, positive, negative.
    - `scored`: anchor, positive, score (>= 0; 0 means not relevant), or several outcome
      columns combined with `score_weights`.
    - `sessions`: query, shown (list of texts, in display order), clicked (list of texts);
      every clicked text becomes a positive, shown-but-not-clicked texts hard negatives.
    """

    train: list[NonEmptyStr] = Field(
        min_length=1,
        description="Files or directories (ending in /) of training data, local or s3://.",
    )
    validation: list[NonEmptyStr] | None = Field(
        default=None, description="Held-out evaluation data; if absent, split from `train`."
    )
    format: DataFormat = "pairs"
    columns: ColumnMap = ColumnMap()
    score_weights: dict[NonEmptyStr, float] | None = Field(
        default=None,
        description="For `scored`: score = sum(weight * row[column]) instead of one column.",
    )
    eval_fraction: float = Field(
        default=0.1,
        gt=0,
        lt=1,
        description="Share of distinct anchors held out when no `validation` is given; "
        "decided by a hash of the anchor text, so the split is the same on every run.",
    )
    max_train_samples: int | None = Field(default=None, ge=1)
    max_eval_samples: int | None = Field(default=None, ge=1)

    @field_validator("train", "validation", mode="before")
    @classmethod
    def _one_or_many(cls, value: object) -> object:
        return [value] if isinstance(value, str) else value

    @field_validator("train", "validation")
    @classmethod
    def _uris(cls, value: list[str] | None) -> list[str] | None:
        return None if value is None else [_check_uri(uri) for uri in value]

    @model_validator(mode="after")
    def _weights_only_for_scored(self) -> DataSpec:
        if self.score_weights is not None and self.format != "scored":
            raise ValueError("score_weights only applies to format 'scored'")
        if self.score_weights is not None and not self.score_weights:
            raise ValueError("score_weights must name at least one column")
        return self


class LoraSpec(_Model):
    """LoRA adapter settings (used when `method` is `lora`). The adapter is merged into the
    exported checkpoint, so it loads as a plain sentence-transformers model."""

    r: int = Field(default=16, ge=1)
    alpha: float = Field(default=32.0, gt=0)
    dropout: float = Field(default=0.1, ge=0, lt=1)
    target_modules: list[NonEmptyStr] | Literal["all-linear"] = Field(
        default="all-linear",
        description="Module names to adapt, or 'all-linear' for every linear layer of the encoder.",
    )


class LossSpec(_Model):
    """The training objective. `name` defaults by data format (mnrl, or weighted for scored)."""

    name: LossName | None = None
    scale: float = Field(
        default=20.0, gt=0, description="Inverse temperature of the contrastive softmax."
    )
    margin: float = Field(default=0.2, ge=0, description="Cosine margin of the triplet loss.")


class GradientCacheSpec(_Model):
    """Gradient caching: the contrastive batch is embedded in mini-batches, so `batch_size`
    (the number of in-batch negatives) is not bounded by accelerator memory."""

    enabled: bool = False
    mini_batch_size: int = Field(default=32, ge=1)


class Hyperparameters(_Model):
    """The knobs a search varies. `learning_rate` defaults by `method`."""

    learning_rate: float | None = Field(default=None, gt=0)
    batch_size: int = Field(default=256, ge=2)
    epochs: int = Field(default=1, ge=1)
    max_steps: int | None = Field(
        default=None, ge=1, description="If set, train exactly this many steps (overrides epochs)."
    )
    # No warm-up, no weight decay, the model's own length: sentence-transformers' trainer's
    # defaults, which one epoch on the Debian pairs needs to reach its reference
    # (docs/benchmarks.md); truncating at 128 instead of 256 cost about 0.002 nDCG@10.
    warmup_ratio: float = Field(default=0.0, ge=0, le=1)
    weight_decay: float = Field(default=0.0, ge=0)
    max_grad_norm: float | None = Field(default=1.0, gt=0)
    max_seq_length: int | None = Field(
        default=None,
        ge=8,
        description="Truncation length in training; by default the model's own, the one "
        "evaluation uses.",
    )
    seed: int = Field(default=42, ge=0)
    precision: Precision = "auto"
    eval_every_steps: int | None = Field(
        default=None, ge=1, description="Evaluate every N steps (always at the end)."
    )
    checkpoint_every_steps: int | None = Field(
        default=500, ge=1, description="Save resumable state every N steps; None disables."
    )
    log_every_steps: int = Field(
        default=20, ge=1, description="Loss/lr to log and MLflow every N steps."
    )


class ObjectiveSpec(_Model):
    """The metric that ranks trials."""

    metric: Metric = "ndcg@10"
    direction: Literal["maximize", "minimize"] = "maximize"


class OutputSpec(_Model):
    """Where the trainer writes. Unset URIs are derived from `checkpoint_uri`'s parent, so a
    trial only needs one prefix: `<parent>/model/`, `<parent>/result.json`, `<parent>/resume/`."""

    checkpoint_uri: NonEmptyStr = Field(
        description="Directory (local or s3://bucket/prefix/) for the final checkpoint."
    )
    result_uri: NonEmptyStr | None = Field(
        default=None, description="Where result.json goes; default beside the checkpoint."
    )
    resume_uri: NonEmptyStr | None = Field(
        default=None,
        description="Directory for resumable training state; default beside the checkpoint.",
    )
    progress_uri: NonEmptyStr | None = Field(
        default=None, description="Small JSON status file (TrialProgress); None disables it."
    )
    baseline_uri: NonEmptyStr | None = Field(
        default=None,
        description="JSON file where the trials of one iteration share the starting model's "
        "evaluation (kubetune_trainer.baseline); None: the trial evaluates it for itself.",
    )

    @field_validator("checkpoint_uri", "result_uri", "resume_uri", "progress_uri", "baseline_uri")
    @classmethod
    def _uri(cls, value: str | None) -> str | None:
        return None if value is None else _check_uri(value)

    @field_validator("checkpoint_uri")
    @classmethod
    def _not_bucket_root(cls, value: str) -> str:
        if _is_s3(value) and not value[len("s3://") :].partition("/")[2].strip("/"):
            raise ValueError(f"{value!r}: the checkpoint needs a prefix, not a bucket root")
        return value

    @model_validator(mode="after")
    def _derive(self) -> OutputSpec:
        if self.result_uri is None:
            object.__setattr__(
                self, "result_uri", sibling_uri(self.checkpoint_uri, RESULT_FILENAME)
            )
        if self.resume_uri is None:
            object.__setattr__(self, "resume_uri", sibling_uri(self.checkpoint_uri, RESUME_DIRNAME))
        return self


class MlflowSpec(_Model):
    """MLflow tracking. With no `tracking_uri` here and no `MLFLOW_TRACKING_URI` in the
    environment, the trainer runs without MLflow."""

    tracking_uri: str | None = None
    experiment: NonEmptyStr | None = Field(
        default=None, description="Default: '<namespace>/<task>' of the trial."
    )
    run_name: NonEmptyStr | None = Field(default=None, description="Default: the trial's name.")
    run_id: NonEmptyStr | None = Field(
        default=None, description="Resume this run (the operator pre-created it)."
    )
    tags: dict[str, str] = {}


class TrialConfig(_Model):
    """Everything one trainer process needs to run one trial, start to finish."""

    schema_version: Literal[1] = SCHEMA_VERSION
    trial: TrialIdentity
    base_model: NonEmptyStr = Field(
        description="The starting model: a sentence-transformers or Hugging Face encoder "
        "directory, local or s3://bucket/prefix."
    )
    data: DataSpec
    method: Method = "full"
    lora: LoraSpec = LoraSpec()
    loss: LossSpec = LossSpec()
    gradient_cache: GradientCacheSpec = GradientCacheSpec()
    hyperparameters: Hyperparameters = Hyperparameters()
    objective: ObjectiveSpec = ObjectiveSpec()
    output: OutputSpec
    mlflow: MlflowSpec = MlflowSpec()

    @field_validator("base_model")
    @classmethod
    def _model_uri(cls, value: str) -> str:
        return _check_uri(value)

    @model_validator(mode="after")
    def _resolve_defaults(self) -> TrialConfig:
        loss_name = self.loss.name or DEFAULT_LOSS_FOR_FORMAT[self.data.format]
        allowed = LOSSES_FOR_FORMAT[self.data.format]
        if loss_name not in allowed:
            raise ValueError(
                f"loss {loss_name!r} cannot train on format {self.data.format!r}; "
                f"use one of {', '.join(allowed)}"
            )
        if self.loss.name is None:
            object.__setattr__(self, "loss", self.loss.model_copy(update={"name": loss_name}))
        if self.hyperparameters.learning_rate is None:
            resolved = self.hyperparameters.model_copy(
                update={"learning_rate": DEFAULT_LEARNING_RATE[self.method]}
            )
            object.__setattr__(self, "hyperparameters", resolved)
        if self.gradient_cache.enabled and self.loss.name == "triplet":
            raise ValueError("gradient_cache only helps in-batch-negative losses, not 'triplet'")
        return self

    @property
    def loss_name(self) -> LossName:
        """The resolved loss (never None after validation)."""
        assert self.loss.name is not None
        return self.loss.name

    @property
    def learning_rate(self) -> float:
        """The resolved learning rate (never None after validation)."""
        assert self.hyperparameters.learning_rate is not None
        return self.hyperparameters.learning_rate

    @property
    def experiment_name(self) -> str:
        return self.mlflow.experiment or f"{self.trial.namespace}/{self.trial.task}"


class Evaluation(_Model):
    """The metrics of one evaluation during or at the end of training."""

    step: int = Field(ge=0)
    metrics: dict[str, float]


class TrialProgress(_Model):
    """The small status document the trainer keeps at `output.progress_uri` while it runs.

    The operator reads `evaluations` of running trials to stop hopeless ones early, so the
    trainer rewrites the document after every evaluation.
    """

    schema_version: Literal[1] = SCHEMA_VERSION
    trial: NonEmptyStr
    phase: Literal["starting", "baseline", "training", "exporting", "done"]
    step: int = Field(ge=0)
    total_steps: int = Field(ge=0)
    epoch: float = Field(ge=0)
    samples_per_second: float | None = None
    eta_seconds: float | None = None
    loss: float | None = None
    learning_rate: float | None = None
    baseline_metrics: dict[str, float] = {}
    metrics: dict[str, float] = Field(default={}, description="The latest evaluation.")
    evaluations: list[Evaluation] = Field(
        default=[], description="Every evaluation so far, in step order, the final one included."
    )
    updated_at: NonEmptyStr = Field(description="UTC time, ISO 8601.")


class TrialResult(_Model):
    """What `result.json` holds after a successful trial."""

    schema_version: Literal[1] = SCHEMA_VERSION
    trial: TrialIdentity
    objective: ObjectiveSpec
    value: float = Field(description="The objective metric after training.")
    baseline_value: float = Field(description="The objective metric of the starting model.")
    metrics: dict[str, float] = Field(description="All metrics after training.")
    baseline_metrics: dict[str, float] = Field(description="All metrics of the starting model.")
    parameters: dict[str, str | int | float | bool | None] = Field(
        description="The resolved training parameters, flattened ('hyperparameters.batch_size')."
    )
    steps: int = Field(ge=0)
    epochs: float = Field(ge=0)
    train_samples: int = Field(ge=0, description="Training examples after filtering.")
    eval_queries: int = Field(ge=0)
    eval_corpus: int = Field(ge=0)
    samples_per_second: float = Field(ge=0, description="Training throughput, examples/s.")
    train_seconds: float = Field(ge=0)
    wall_seconds: float = Field(ge=0, description="The whole process, model download included.")
    resumed_from_step: int | None = None
    checkpoint_uri: NonEmptyStr
    base_model: NonEmptyStr
    train_data: list[str]
    validation_data: list[str] | None
    eval_max_seq_length: int = Field(ge=1, description="Truncation used in evaluation.")
    device: NonEmptyStr
    mlflow_run_id: str | None = None
    trainer_version: NonEmptyStr

    @property
    def improvement(self) -> float:
        """Gain of the objective over the starting model, signed so that > 0 is better."""
        delta = self.value - self.baseline_value
        return delta if self.objective.direction == "maximize" else -delta


def _truncate_utf8(text: str, max_bytes: int) -> str:
    encoded = text.encode("utf-8")
    if len(encoded) <= max_bytes:
        return text
    return encoded[: max_bytes - 3].decode("utf-8", errors="ignore") + "..."


def termination_summary(result: TrialResult) -> str:
    """One line for the pod's termination message, well under Kubernetes' 4096-byte limit."""
    metric = result.objective.metric
    text = (
        f"ok {metric}={result.value:.4f} (base {result.baseline_value:.4f}, "
        f"{result.value - result.baseline_value:+.4f}) steps={result.steps} "
        f"samples/s={result.samples_per_second:.1f} wall={result.wall_seconds:.0f}s "
        f"checkpoint={result.checkpoint_uri}"
    )
    return _truncate_utf8(text, TERMINATION_MESSAGE_MAX_BYTES - 1)


def failure_message(exit_code: int, message: str) -> str:
    """One line naming the failure's reason, for the termination message."""
    reason = EXIT_REASONS.get(exit_code, "TrainerError")
    line = " ".join(f"{reason}: {message}".split())
    return _truncate_utf8(line, TERMINATION_MESSAGE_MAX_BYTES - 1)
