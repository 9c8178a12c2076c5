"""`TunedModel`: a named, long-lived model lineage (kubetune.dev/v1alpha1).

The spec says where the lineage starts (the base model) and where its promoted checkpoints
live; the status says which iteration is current. `lastIteration` is the lineage's
iteration counter: a task reserves the next number here (with optimistic concurrency)
before it records it, so two tasks never share an iteration.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from pydantic import Field

from kubetune.api.base import (
    ApiModel,
    Conditions,
    DnsLabel,
    DnsSubdomain,
    ParamMap,
    SecretKey,
    Uri,
)
from kubetune.api.finetuningtask import MAX_WARM_START
from kubetune.contract import Metric

MAX_RETENTION = 10
MAX_HISTORY = 2 * MAX_RETENTION + 4
"""Retained iterations plus those superseded but not yet deleted."""


class CredentialsSecretRef(ApiModel):
    """A Secret in the object's namespace holding S3 credentials; they reach the trainer
    only as `secretKeyRef` environment variables, never in a spec, status or log."""

    name: DnsSubdomain = Field(description="Name of the Secret.")
    access_key_id_key: SecretKey = Field(
        default="AWS_ACCESS_KEY_ID", description="Key of the access key id in the Secret."
    )
    secret_access_key_key: SecretKey = Field(
        default="AWS_SECRET_ACCESS_KEY", description="Key of the secret access key in the Secret."
    )


class StorageSpec(ApiModel):
    """S3-compatible storage for trial checkpoints and promoted iterations. Every field
    left out takes the operator-wide default."""

    bucket: str | None = Field(
        default=None,
        min_length=3,
        max_length=63,
        pattern=r"^[a-z0-9][a-z0-9.-]*[a-z0-9]$",
        description="Bucket name.",
    )
    prefix: str | None = Field(
        default=None,
        max_length=512,
        pattern=r"^[A-Za-z0-9!_.*'()-]+(/[A-Za-z0-9!_.*'()-]+)*/?$",
        description="Key prefix inside the bucket; objects go under "
        "`<prefix>/<namespace>/<model>/`.",
    )
    endpoint: str | None = Field(
        default=None,
        max_length=512,
        pattern=r"^https?://[^\s/]+(/\S*)?$",
        description="S3 endpoint URL, e.g. `http://minio.storage:9000`.",
    )
    region: str | None = Field(
        default=None, max_length=64, pattern=r"^[a-z0-9-]+$", description="S3 region."
    )
    credentials_secret: CredentialsSecretRef | None = Field(
        default=None,
        description=(
            "Secret with the S3 access key pair. The operator reads it at most once every"
            " 30 s, so a rotated key is in use within 30 s."
        ),
    )


class TunedModelSpec(ApiModel):
    """What the lineage starts from, where it is stored and how much of it to keep."""

    base_model: Uri = Field(
        description="The initial model: a sentence-transformers or Hugging Face encoder "
        "directory, as `s3://bucket/prefix/` or an absolute path inside the trainer image."
    )
    storage: StorageSpec = Field(
        default_factory=StorageSpec, description="Where checkpoints and iterations live."
    )
    retention: int = Field(
        default=1,
        ge=1,
        le=MAX_RETENTION,
        description="How many promoted iterations to keep in storage, the current one "
        "included; older ones are deleted after each promotion.",
    )
    delete_storage_on_delete: bool = Field(
        default=False,
        description="Delete every object of the lineage from storage when this TunedModel "
        "is deleted. Off by default: deleting the resource keeps the models.",
    )


class RankedTrial(ApiModel):
    """One of an iteration's best trials: what the next iteration's warm start re-runs."""

    parameters: ParamMap = Field(default_factory=dict, description="Its searched parameters.")
    value: float = Field(description="Its objective metric's value.")


class PromotedIteration(ApiModel):
    """One promoted iteration of the lineage."""

    iteration: int = Field(ge=1, description="The iteration number.")
    uri: Uri = Field(description="The model directory; loads with `SentenceTransformer(uri)`.")
    metric: Metric = Field(description="The objective metric.")
    value: float = Field(description="The objective metric's value on the evaluation data.")
    parameters: ParamMap = Field(
        default_factory=dict, description="The searched hyperparameters of the winning trial."
    )
    top_trials: Annotated[list[RankedTrial], Field(max_length=MAX_WARM_START)] = Field(
        default_factory=list,
        description="The iteration's best succeeded trials, best first, distinct parameter "
        "sets; the next iteration's warm start re-runs the first `warmStart.topK`.",
    )
    source_task: DnsLabel = Field(description="The FineTuningTask that produced it.")
    source_trial: DnsLabel = Field(description="The winning trial (its Job's name).")
    promoted_at: datetime = Field(description="When the lineage started pointing at it.")


class TunedModelStatus(ApiModel):
    """The lineage's current model, its recent history and its counters."""

    observed_generation: int | None = Field(
        default=None, ge=0, description="The generation the status was computed for."
    )
    conditions: Conditions = Field(
        default_factory=list, description="`Ready` is True once an iteration is promoted."
    )
    current_iteration: PromotedIteration | None = Field(
        default=None, description="The iteration tasks start from and clients should serve."
    )
    history: Annotated[list[PromotedIteration], Field(max_length=MAX_HISTORY)] = Field(
        default_factory=list,
        description="Promoted iterations, newest promotion first (the current one is the "
        "first); entries beyond `spec.retention` are deleted from storage and then dropped.",
    )
    last_iteration: int = Field(
        default=0,
        ge=0,
        description="The highest iteration number reserved by any task of this lineage.",
    )
