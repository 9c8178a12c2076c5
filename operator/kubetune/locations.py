"""Where a lineage's objects live in S3, as pure functions of the resolved storage.

Layout under `s3://<bucket>/<prefix>/<namespace>/<model>/`:

    runs/<iteration>/trial-<index>/model/     a trial's checkpoint (scratch)
    runs/<iteration>/trial-<index>/result.json
    runs/<iteration>/baseline.json            the starting model's evaluation, shared
    iterations/<iteration>/model/             a promoted model
    iterations/<iteration>/manifest.json      written last: the iteration is complete

Iteration numbers are unique within a lineage (reserved on the TunedModel), so no two
attempts ever write to the same place.
"""

from __future__ import annotations

import posixpath
from dataclasses import dataclass

from kubetune.api import CredentialsSecretRef, StorageSpec


@dataclass(frozen=True)
class ResolvedStorage:
    """A TunedModel's storage with the operator defaults filled in."""

    bucket: str
    prefix: str = ""
    endpoint: str | None = None
    region: str | None = None
    credentials_secret: CredentialsSecretRef | None = None


def resolve_storage(spec: StorageSpec, defaults: StorageSpec) -> ResolvedStorage | None:
    """Field by field, the spec's value or the default; None when no bucket is known."""
    bucket = spec.bucket or defaults.bucket
    if not bucket:
        return None
    return ResolvedStorage(
        bucket=bucket,
        prefix=(spec.prefix if spec.prefix is not None else defaults.prefix or "").strip("/"),
        endpoint=spec.endpoint or defaults.endpoint,
        region=spec.region or defaults.region,
        credentials_secret=spec.credentials_secret or defaults.credentials_secret,
    )


def lineage_root(storage: ResolvedStorage, namespace: str, model: str) -> str:
    parts = [p for p in (storage.prefix, namespace, model) if p]
    return f"s3://{storage.bucket}/{'/'.join(parts)}/"


def scratch_uri(root: str, iteration: int) -> str:
    return f"{root}runs/{iteration}/"


def trial_checkpoint_uri(scratch: str, index: int) -> str:
    return f"{scratch}trial-{index}/model/"


def baseline_uri(scratch: str) -> str:
    return f"{scratch}baseline.json"


def iteration_uri(root: str, iteration: int) -> str:
    return f"{root}iterations/{iteration}/"


def model_uri(iteration_prefix: str) -> str:
    return f"{iteration_prefix}model/"


def manifest_uri(iteration_prefix: str) -> str:
    return f"{iteration_prefix}manifest.json"


def iteration_prefix_of(promoted_model_uri: str) -> str:
    """The iteration prefix that holds a promoted model directory (and its manifest)."""
    return posixpath.dirname(promoted_model_uri.rstrip("/")) + "/"
