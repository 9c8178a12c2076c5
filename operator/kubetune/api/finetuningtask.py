"""`FineTuningTask`: one tuning iteration of one TunedModel (kubetune.dev/v1alpha1).

The spec mirrors the trainer contract (`kubetune.contract`) in camelCase, leaving out what
the operator decides itself (trial identity, output locations, MLflow wiring). Enumerations
come from the contract, so the CRD cannot accept a loss, format or metric the trainer does
not know. Rules that span fields are CEL (`x-kubernetes-validations`) so `kubectl apply`
rejects them with a readable message.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import ConfigDict, Field, WithJsonSchema
from pydantic.config import JsonDict

from kubetune.api.base import (
    ApiModel,
    DnsLabel,
    DnsSubdomain,
    ParamValue,
    SecretKey,
    ShortText,
    Uri,
)
from kubetune.contract import (
    LOSSES_FOR_FORMAT,
    DataFormat,
    LossName,
    Method,
    Metric,
    Precision,
)

MAX_TRIALS = 256
MAX_PARALLEL_TRIALS = 64

ParameterKind = Literal["float", "int", "str"]
ParameterName = Literal[
    "learningRate",
    "batchSize",
    "epochs",
    "maxSteps",
    "warmupRatio",
    "weightDecay",
    "maxGradNorm",
    "maxSeqLength",
    "precision",
    "lora.r",
    "lora.alpha",
    "lora.dropout",
    "loss.scale",
    "loss.margin",
]
SEARCHABLE_PARAMETERS: dict[ParameterName, tuple[str, str, ParameterKind]] = {
    "learningRate": ("hyperparameters", "learning_rate", "float"),
    "batchSize": ("hyperparameters", "batch_size", "int"),
    "epochs": ("hyperparameters", "epochs", "int"),
    "maxSteps": ("hyperparameters", "max_steps", "int"),
    "warmupRatio": ("hyperparameters", "warmup_ratio", "float"),
    "weightDecay": ("hyperparameters", "weight_decay", "float"),
    "maxGradNorm": ("hyperparameters", "max_grad_norm", "float"),
    "maxSeqLength": ("hyperparameters", "max_seq_length", "int"),
    "precision": ("hyperparameters", "precision", "str"),
    "lora.r": ("lora", "r", "int"),
    "lora.alpha": ("lora", "alpha", "float"),
    "lora.dropout": ("lora", "dropout", "float"),
    "loss.scale": ("loss", "scale", "float"),
    "loss.margin": ("loss", "margin", "float"),
}
"""Search parameter name -> (section of the trial config, its field there, value kind)."""

RESERVED_ENV_NAMES: tuple[str, ...] = (
    "KUBETUNE_TRIAL_CONFIG",
    "KUBETUNE_TERMINATION_MESSAGE_PATH",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_ENDPOINT_URL",
    "AWS_ENDPOINT_URL_S3",
    "AWS_DEFAULT_REGION",
    "MLFLOW_TRACKING_URI",
)
"""Environment variables the operator sets on every trainer container."""


def _names(kind: ParameterKind) -> str:
    return ", ".join(f"'{n}'" for n, (_, _, k) in SEARCHABLE_PARAMETERS.items() if k == kind)


def _cel(rule: str, message: str) -> JsonDict:
    return {"rule": rule, "message": message}


def _rules(*rules: JsonDict) -> ConfigDict:
    return ConfigDict(json_schema_extra={"x-kubernetes-validations": list(rules)})


class ModelRef(ApiModel):
    """Names the TunedModel this task tunes."""

    model_config = _rules(_cel("self == oldSelf", "modelRef is immutable"))

    name: DnsLabel = Field(description="Name of a TunedModel in the task's namespace.")


class ColumnMapping(ApiModel):
    """Column names in the data files, for the logical columns the format uses. Columns
    left out keep their logical name."""

    anchor: ShortText | None = Field(default=None, description="Query or anchor text.")
    positive: ShortText | None = Field(default=None, description="Relevant text.")
    negative: ShortText | None = Field(default=None, description="Non-relevant text.")
    score: ShortText | None = Field(default=None, description="Relevance score (`scored`).")
    query: ShortText | None = Field(default=None, description="Search query (`sessions`).")
    shown: ShortText | None = Field(
        default=None, description="Texts shown, in display order (`sessions`)."
    )
    clicked: ShortText | None = Field(default=None, description="Texts clicked (`sessions`).")


class DatasetSpec(ApiModel):
    """The training data (JSONL, JSONL.gz or Parquet files, or directories ending in `/`)."""

    model_config = _rules(
        _cel("self == oldSelf", "dataset is immutable; create a new FineTuningTask instead"),
        _cel(
            "!has(self.scoreWeights) || (has(self.format) && self.format == 'scored')",
            "scoreWeights applies only to format 'scored'",
        ),
    )

    train: Annotated[list[Uri], Field(min_length=1, max_length=64)] = Field(
        description="Training data files or directories, `s3://` or absolute paths."
    )
    validation: Annotated[list[Uri], Field(min_length=1, max_length=64)] | None = Field(
        default=None,
        description="Held-out evaluation data; without it, `evalFraction` of the train "
        "anchors is held out.",
    )
    format: DataFormat = Field(
        default="pairs",
        description="`pairs` (anchor, positive), `triplets` (anchor, positive, negative), "
        "`scored` (anchor, positive, score) or `sessions` (query, shown, clicked).",
    )
    columns: ColumnMapping | None = Field(
        default=None, description="Column names, where they differ from the logical ones."
    )
    score_weights: Annotated[dict[ShortText, float], Field(min_length=1, max_length=16)] | None = (
        Field(
            default=None,
            description="For `scored`: score = sum of weight * column, over these columns.",
        )
    )
    eval_fraction: float = Field(
        default=0.1,
        gt=0,
        lt=1,
        description="Share of distinct anchors held out for evaluation when `validation` "
        "is not given (a deterministic split by anchor hash).",
    )
    max_train_samples: int | None = Field(
        default=None, ge=1, description="Use at most this many training examples."
    )
    max_eval_samples: int | None = Field(
        default=None, ge=1, description="Evaluate on at most this many queries."
    )


class LoraSettings(ApiModel):
    """LoRA adapter settings; the adapter is merged into the exported checkpoint."""

    r: int | None = Field(default=None, ge=1, le=1024, description="Adapter rank.")
    alpha: float | None = Field(default=None, gt=0, description="Scaling numerator.")
    dropout: float | None = Field(default=None, ge=0, lt=1, description="Adapter dropout.")
    target_modules: Annotated[list[ShortText], Field(min_length=1, max_length=32)] | None = Field(
        default=None,
        description="Modules to adapt; default: every linear layer of the encoder.",
    )


class MethodSpec(ApiModel):
    """How the encoder's weights are trained."""

    model_config = _rules(
        _cel(
            "!has(self.lora) || self.type == 'lora'",
            "lora settings apply only to method type 'lora'",
        )
    )

    type: Method = Field(
        default="full", description="`full` fine-tuning or `lora` (parameter-efficient)."
    )
    lora: LoraSettings | None = Field(default=None, description="LoRA settings.")


class LossSpec(ApiModel):
    """The training loss."""

    name: LossName | None = Field(
        default=None,
        description="`mnrl` (in-batch negatives), `mnrl_symmetric`, `triplet` or `weighted` "
        "(for scored data); default: `weighted` for `scored`, else `mnrl`.",
    )
    scale: float | None = Field(
        default=None, gt=0, description="Inverse temperature of the contrastive softmax."
    )
    margin: float | None = Field(default=None, ge=0, description="Margin of the triplet loss.")


class GradientCacheSpec(ApiModel):
    """Gradient caching: embed the contrastive batch in mini-batches so `batchSize` (the
    number of in-batch negatives) is not bounded by accelerator memory."""

    enabled: bool = Field(default=False, description="Turn gradient caching on.")
    mini_batch_size: int | None = Field(
        default=None, ge=1, le=65536, description="Examples per forward pass."
    )


class ObjectiveSpec(ApiModel):
    """Which evaluation metric picks the winning trial."""

    metric: Metric = Field(default="ndcg@10", description="The metric that ranks trials.")
    direction: Literal["maximize", "minimize"] = Field(
        default="maximize", description="Whether a greater value is better."
    )
    goal: float | None = Field(
        default=None,
        description="Once a trial reaches this value, no further trials start; the task "
        "promotes the best one when the running trials end.",
    )


class FixedHyperparameters(ApiModel):
    """Training settings every trial shares; a searched parameter overrides its fixed
    value. Left out, the trainer's defaults apply."""

    learning_rate: float | None = Field(
        default=None, gt=0, le=1, description="Peak learning rate (default by method)."
    )
    batch_size: int | None = Field(
        default=None, ge=2, le=65536, description="Examples per step (in-batch negatives)."
    )
    epochs: int | None = Field(default=None, ge=1, le=1000, description="Passes over the data.")
    max_steps: int | None = Field(
        default=None, ge=1, description="Train exactly this many steps (overrides epochs)."
    )
    warmup_ratio: float | None = Field(
        default=None, ge=0, le=1, description="Share of steps with linear warm-up."
    )
    weight_decay: float | None = Field(default=None, ge=0, description="AdamW weight decay.")
    max_grad_norm: float | None = Field(default=None, gt=0, description="Gradient clipping norm.")
    max_seq_length: int | None = Field(
        default=None,
        ge=8,
        le=8192,
        description="Token truncation length in training (default: the model's own).",
    )
    precision: Precision | None = Field(
        default=None, description="`auto`, `fp32`, `bf16` or `fp16`."
    )
    eval_every_steps: int | None = Field(
        default=None, ge=1, description="Evaluate every N steps (always at the end)."
    )
    checkpoint_every_steps: int | None = Field(
        default=None, ge=1, description="Save resumable state every N steps."
    )
    log_every_steps: int | None = Field(
        default=None, ge=1, description="Log loss and learning rate every N steps."
    )


class FloatRange(ApiModel):
    """A real-valued range."""

    model_config = _rules(
        _cel("self.min < self.max", "min must be less than max"),
        _cel("!has(self.log) || !self.log || self.min > 0.0", "a log-scale range needs min > 0"),
    )

    min: float = Field(description="Lower bound (inclusive).")
    max: float = Field(description="Upper bound (inclusive).")
    log: bool = Field(default=False, description="Sample uniformly on a log scale.")
    grid_points: int = Field(
        default=3,
        ge=2,
        le=32,
        description="Grid search only: evenly spaced points from min to max (log-spaced "
        "when `log`).",
    )


class IntRange(ApiModel):
    """An integer range."""

    model_config = _rules(_cel("self.min < self.max", "min must be less than max"))

    min: int = Field(description="Lower bound (inclusive).")
    max: int = Field(description="Upper bound (inclusive).")
    step: int = Field(default=1, ge=1, description="Values are min, min+step, ... <= max.")


class Categorical(ApiModel):
    """A list of values to choose from."""

    values: Annotated[list[ParamValue], Field(min_length=1, max_length=64)] = Field(
        description="The choices, in grid order."
    )


class SearchParameter(ApiModel):
    """One searched hyperparameter: exactly one of `float`, `int` or `categorical`."""

    model_config = _rules(
        _cel(
            "[has(self.float), has(self.int), has(self.categorical)].filter(x, x).size() == 1",
            "set exactly one of float, int or categorical",
        ),
        _cel(
            f"!has(self.float) || self.name in [{_names('float')}]",
            "a float range applies only to real-valued parameters",
        ),
        _cel(
            f"!has(self.int) || self.name in [{_names('int')}]",
            "an int range applies only to integer parameters",
        ),
        _cel(
            f"!(self.name in [{_names('str')}]) || has(self.categorical)",
            "this parameter takes categorical values",
        ),
    )

    name: ParameterName = Field(
        description="The parameter: a fixed hyperparameter's name, or `lora.r`, "
        "`lora.alpha`, `lora.dropout`, `loss.scale`, `loss.margin`."
    )
    float_range: FloatRange | None = Field(
        default=None, alias="float", description="Real values from a range."
    )
    int_range: IntRange | None = Field(
        default=None, alias="int", description="Integer values from a range."
    )
    categorical: Categorical | None = Field(default=None, description="Values from a list.")


MAX_WARM_START = 10
"""Parameter sets a promoted iteration keeps for the next iteration's warm start."""


class TpeSettings(ApiModel):
    """Settings of the Tree-structured Parzen Estimator (Optuna's `TPESampler`)."""

    multivariate: bool = Field(
        default=False,
        description="Model the parameters jointly instead of one at a time; better when "
        "they interact (e.g. learning rate and batch size).",
    )
    startup_trials: int = Field(
        default=4,
        ge=1,
        le=MAX_TRIALS,
        description="Finished trials (warm-start ones included) before TPE models the "
        "results; until then suggestions are seeded random draws.",
    )


class WarmStartSpec(ApiModel):
    """Re-run the lineage's last promoted iteration's best parameter sets first."""

    top_k: int = Field(
        default=3,
        ge=0,
        le=MAX_WARM_START,
        description="How many of the previous iteration's best parameter sets the first "
        "trials re-run (0: none). Sets that do not fit the current search space are skipped.",
    )


class EarlyStoppingSpec(ApiModel):
    """Median stopping with Optuna's `MedianPruner` semantics: a running trial is stopped
    when its best intermediate value so far is worse than the median of the completed
    trials' values at the same evaluation step."""

    warmup_steps: int = Field(
        default=0,
        ge=0,
        description="Training steps before which no trial is stopped (`n_warmup_steps`).",
    )
    startup_trials: int = Field(
        default=3,
        ge=1,
        le=MAX_TRIALS,
        description="Completed trials needed before any trial is stopped (`n_startup_trials`).",
    )
    min_trials: int = Field(
        default=1,
        ge=1,
        le=MAX_TRIALS,
        description="Completed trials that must have reported at a step to compare at it "
        "(`n_min_trials`).",
    )


class HyperparameterSpec(ApiModel):
    """Fixed training settings, the search space and how it is searched."""

    model_config = _rules(
        _cel(
            "!has(self.maxTrials) || !has(self.parallelTrials) "
            "|| self.parallelTrials <= self.maxTrials",
            "parallelTrials must not exceed maxTrials",
        ),
        _cel(
            "has(self.maxTrials) || !has(self.algorithm) || self.algorithm != 'random'",
            "random search needs maxTrials",
        ),
        _cel(
            "has(self.maxTrials) || !has(self.algorithm) || self.algorithm != 'tpe'",
            "tpe search needs maxTrials",
        ),
        _cel(
            "!has(self.tpe) || (has(self.algorithm) && self.algorithm == 'tpe')",
            "tpe settings apply only to algorithm 'tpe'",
        ),
        _cel(
            "!has(self.earlyStopping) || (has(self.fixed) && has(self.fixed.evalEverySteps))",
            "earlyStopping needs fixed.evalEverySteps: trials are compared at their evaluations",
        ),
    )

    fixed: FixedHyperparameters | None = Field(
        default=None, description="Settings shared by every trial."
    )
    search_space: Annotated[
        list[SearchParameter],
        Field(
            max_length=16,
            json_schema_extra={
                "x-kubernetes-list-type": "map",
                "x-kubernetes-list-map-keys": ["name"],
            },
        ),
    ] = Field(
        default_factory=list,
        description="Searched parameters, one entry per name. Empty: a single trial.",
    )
    algorithm: Literal["grid", "random", "tpe"] = Field(
        default="grid",
        description="`grid`: every combination in order (floats at `gridPoints` points); "
        "`random`: seeded random draws; `tpe`: Bayesian optimization with Optuna's TPE, "
        "learning from the trials so far.",
    )
    tpe: TpeSettings | None = Field(default=None, description="TPE settings.")
    warm_start: WarmStartSpec = Field(
        default_factory=WarmStartSpec,
        description="For `random` and `tpe`: start from the previous iteration's best "
        "parameter sets (grid search runs every point anyway).",
    )
    early_stopping: EarlyStoppingSpec | None = Field(
        default=None,
        description="Stop trials whose intermediate evaluations cannot win; they end "
        "`Pruned` and free their resources for the next trial.",
    )
    max_trials: int | None = Field(
        default=None,
        ge=1,
        le=MAX_TRIALS,
        description="Trials to run at most; default for grid: the grid's size.",
    )
    parallel_trials: int = Field(
        default=1, ge=1, le=MAX_PARALLEL_TRIALS, description="Trials running at the same time."
    )
    max_failed_trials: int | None = Field(
        default=None,
        ge=0,
        le=MAX_TRIALS,
        description="Once more trials than this have failed, running trials are stopped and "
        "the task fails. Unset: the task fails only when no trial succeeds.",
    )
    seed: int | None = Field(
        default=None,
        ge=0,
        le=2**31 - 1,
        description="Seeds the search and training; the same spec and the same trial "
        "results give the same trials.",
    )


Quantity = Annotated[
    int | str,
    WithJsonSchema(
        {
            "anyOf": [{"type": "integer"}, {"type": "string"}],
            "pattern": r"^(\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))(([KMGTPE]i)|[numkMGTPE]|"
            r"([eE](\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))))?$",
            "x-kubernetes-int-or-string": True,
        }
    ),
]
ResourceList = Annotated[dict[ShortText, Quantity], Field(max_length=16)]


class ResourceRequirements(ApiModel):
    """Compute resources of the trainer container, e.g. `limits: {nvidia.com/gpu: 1}`."""

    limits: ResourceList | None = Field(default=None, description="Resource limits.")
    requests: ResourceList | None = Field(default=None, description="Resource requests.")


QUALIFIED_NAME_PATTERN = (
    r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?([.][a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?"
    r"[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$"
)
"""A label key or taint key, e.g. `nvidia.com/gpu`; `[.]`, not an escaped dot, as the
pattern is also a CEL string literal, where `\\.` is not a valid escape."""
LABEL_VALUE_PATTERN = r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$"
LabelValue = Annotated[str, Field(max_length=63, pattern=LABEL_VALUE_PATTERN)]


class Toleration(ApiModel):
    """A Kubernetes toleration (as in a Pod spec). The rules are the Pod's own, checked
    here so that `kubectl apply` rejects them instead of every trial's Job."""

    model_config = _rules(
        _cel(
            "has(self.key) || (has(self.operator) && self.operator == 'Exists')",
            "a toleration without a key needs operator 'Exists'",
        ),
        _cel(
            "!has(self.operator) || self.operator != 'Exists' || !has(self.value) "
            "|| self.value == ''",
            "a toleration with operator 'Exists' takes no value",
        ),
        _cel(
            "!has(self.tolerationSeconds) || (has(self.effect) && self.effect == 'NoExecute')",
            "tolerationSeconds applies only to effect 'NoExecute'",
        ),
    )

    key: str | None = Field(
        default=None, max_length=317, pattern=QUALIFIED_NAME_PATTERN, description="Taint key."
    )
    operator: Literal["Exists", "Equal"] | None = Field(
        default=None, description="`Exists` or `Equal` (default)."
    )
    value: LabelValue | None = Field(default=None, description="Taint value.")
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = Field(
        default=None, description="Taint effect to match; empty matches all."
    )
    toleration_seconds: int | None = Field(
        default=None, description="How long a `NoExecute` taint is tolerated."
    )


class KeyRef(ApiModel):
    """A key of a Secret or ConfigMap in the task's namespace."""

    name: DnsSubdomain = Field(description="Name of the Secret or ConfigMap.")
    key: SecretKey = Field(description="The key.")
    optional: bool | None = Field(default=None, description="Allow it to be missing.")


class EnvVarSource(ApiModel):
    """Where an environment variable's value comes from."""

    model_config = _rules(
        _cel(
            "has(self.secretKeyRef) != has(self.configMapKeyRef)",
            "set exactly one of secretKeyRef or configMapKeyRef",
        )
    )

    secret_key_ref: KeyRef | None = Field(default=None, description="A key of a Secret.")
    config_map_key_ref: KeyRef | None = Field(default=None, description="A key of a ConfigMap.")


class EnvVar(ApiModel):
    """An environment variable of the trainer container."""

    model_config = _rules(
        _cel(
            "!(has(self.value) && has(self.valueFrom))",
            "set value or valueFrom, not both",
        ),
        _cel(
            f"!(self.name in [{', '.join(repr(n) for n in RESERVED_ENV_NAMES)}])",
            "this variable is set by the operator",
        ),
    )

    name: str = Field(
        max_length=256, pattern=r"^[-._a-zA-Z][-._a-zA-Z0-9]*$", description="Variable name."
    )
    value: str | None = Field(default=None, max_length=8192, description="Literal value.")
    value_from: EnvVarSource | None = Field(
        default=None, description="Value from a Secret or ConfigMap key."
    )


class TrainerSpec(ApiModel):
    """Settings of the trainer Pods (one Job per trial)."""

    image: str | None = Field(
        default=None,
        max_length=512,
        pattern=r"^\S+$",
        description="Trainer image; default: the operator's configured trainer image.",
    )
    image_pull_policy: Literal["Always", "IfNotPresent", "Never"] | None = Field(
        default=None, description="Image pull policy."
    )
    resources: ResourceRequirements | None = Field(
        default=None,
        description="Container resources, GPUs included. A CPU limit (else request), rounded "
        "up, also sets the trainer's thread count, `OMP_NUM_THREADS`, unless `env` sets it. "
        "Given several GPUs, the trial runs one process per GPU (data parallel, in-batch "
        "negatives gathered across them; `KUBETUNE_PROCESSES` in `env` sets another count), "
        "and the Pod gets a memory-backed `/dev/shm`.",
    )
    node_selector: (
        Annotated[
            dict[ShortText, LabelValue],
            Field(
                max_length=32,
                json_schema_extra={
                    "x-kubernetes-validations": [
                        _cel(
                            f"self.all(k, k.matches('{QUALIFIED_NAME_PATTERN}'))",
                            "nodeSelector keys must be label keys, e.g. "
                            "'kubernetes.io/arch' or 'gpu-type'",
                        )
                    ]
                },
            ),
        ]
        | None
    ) = Field(default=None, description="Node labels the Pod must match.")
    tolerations: Annotated[list[Toleration], Field(max_length=32)] | None = Field(
        default=None, description="Tolerations of the Pod."
    )
    service_account_name: DnsSubdomain | None = Field(
        default=None, description="Service account of the Pod (none mounted when unset)."
    )
    env: (
        Annotated[
            list[EnvVar],
            Field(
                max_length=64,
                json_schema_extra={
                    "x-kubernetes-list-type": "map",
                    "x-kubernetes-list-map-keys": ["name"],
                },
            ),
        ]
        | None
    ) = Field(default=None, description="Extra environment variables.")
    priority_class_name: DnsSubdomain | None = Field(
        default=None, description="PriorityClass of the Pod."
    )
    queue_name: DnsLabel | None = Field(
        default=None,
        description="Kueue LocalQueue; sets the `kueue.x-k8s.io/queue-name` label on Jobs.",
    )
    active_deadline_seconds: int | None = Field(
        default=None, ge=1, description="Per-trial time limit; the Job fails after it."
    )
    backoff_limit: int = Field(
        default=0,
        ge=0,
        le=10,
        description="Pod retries per trial; bad input and training failures never retry.",
    )


def _loss_format_rule() -> str:
    fmt = "(has(self.dataset.format) ? self.dataset.format : 'pairs')"
    cases = " || ".join(
        f"({fmt} == '{data_format}' && self.loss.name in [{', '.join(repr(n) for n in losses)}])"
        for data_format, losses in LOSSES_FOR_FORMAT.items()
    )
    return f"!has(self.loss) || !has(self.loss.name) || {cases}"


def _single_gpu_rule(kind: str) -> str:
    """CEL: with gradient caching on, no `<vendor>/gpu` resource among the trainer's `kind`
    (limits or requests) is more than one (the trainer runs one process per GPU, and gradient
    caching needs one). One rule per kind: together they pass the apiserver's cost budget."""
    resources = f"self.trainer.resources.{kind}"
    return (
        "!has(self.gradientCache) || !self.gradientCache.enabled || !has(self.trainer) "
        f"|| !has(self.trainer.resources) || !has({resources}) || !{resources}.exists(k, "
        f"k.endsWith('/gpu') && !(string({resources}[k]) in ['0', '1']))"
    )


class FineTuningTaskSpec(ApiModel):
    """One tuning iteration: data, method, objective, search and trainer settings."""

    model_config = _rules(
        _cel(_loss_format_rule(), "this loss cannot train on this dataset format"),
        _cel(
            "!has(self.hyperparameters) || !has(self.hyperparameters.searchSpace) "
            "|| (has(self.method) && has(self.method.type) && self.method.type == 'lora') "
            "|| self.hyperparameters.searchSpace.all(p, !p.name.startsWith('lora.'))",
            "lora.* parameters need method type 'lora'",
        ),
        _cel(
            "!has(self.gradientCache) || !self.gradientCache.enabled || !has(self.loss) "
            "|| !has(self.loss.name) || self.loss.name != 'triplet'",
            "gradient caching does not apply to the triplet loss",
        ),
        *(
            _cel(
                _single_gpu_rule(kind),
                "gradient caching runs in one process: give the trainer one GPU",
            )
            for kind in ("limits", "requests")
        ),
    )

    model_ref: ModelRef = Field(description="The TunedModel to tune (immutable).")
    start_from: Literal["latest", "base"] = Field(
        default="latest",
        description="`latest`: the lineage's current iteration (the base model if none); "
        "`base`: always the base model.",
    )
    dataset: DatasetSpec = Field(description="Training and evaluation data (immutable).")
    method: MethodSpec = Field(default_factory=MethodSpec, description="Training method.")
    loss: LossSpec | None = Field(default=None, description="Loss and its settings.")
    gradient_cache: GradientCacheSpec | None = Field(
        default=None, description="Gradient caching for large contrastive batches."
    )
    objective: ObjectiveSpec = Field(
        default_factory=ObjectiveSpec, description="The metric that decides the winner."
    )
    hyperparameters: HyperparameterSpec = Field(
        default_factory=HyperparameterSpec, description="Fixed settings and the search."
    )
    trainer: TrainerSpec = Field(
        default_factory=TrainerSpec, description="Settings of the trainer Pods."
    )
    suspend: bool = Field(
        default=False,
        description="True stops the task: before it starts, it waits; while trials run, "
        "their Jobs are deleted and it ends Canceled (a promotion in progress completes).",
    )
    restart_generation: int = Field(
        default=0,
        ge=0,
        json_schema_extra={
            "x-kubernetes-validations": [
                _cel("self >= oldSelf", "restartGeneration can only increase")
            ]
        },
        description="Increase to re-run a finished task as a new attempt (a new iteration); "
        "a restart requested while the task runs takes effect when it ends.",
    )
