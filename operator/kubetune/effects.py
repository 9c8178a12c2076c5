"""Carry out a decision's actions against Kubernetes, S3 and MLflow.

Each action maps to one client call (or a short sequence for lineage updates, which are
conditional writes of the TunedModel's status). Failures surface as `EffectError` with a
message a user can act on; the reconciler turns it into a condition and retries.
"""

from __future__ import annotations

import json
import posixpath
from dataclasses import dataclass, field
from typing import Any

from kubernetes.client.exceptions import ApiException

from kubetune.api import TUNED_MODEL, TunedModelStatus
from kubetune.clients.expiring import ExpiringCache
from kubetune.clients.kube import ConflictError, Kube
from kubetune.clients.s3 import S3Credentials, S3Location, Storage, StorageError
from kubetune.decide import (
    Action,
    CopyCheckpoint,
    CreateJob,
    DeleteJob,
    DeleteStorage,
    DropIterations,
    ReserveIteration,
    UpdateLineage,
    VerifyCheckpoint,
    WriteManifest,
    apply_to_model,
)
from kubetune.locations import ResolvedStorage
from kubetune.metrics import METRICS
from kubetune.patch import merge_patch

STORAGE_CACHE_SECONDS = 30.0
"""How long credentials read from a Secret, and a bucket that passed the pre-launch check,
are reused: a rotated key reaches the operator within this time, and a busy operator reads
each Secret and checks each bucket at most once per interval instead of once per trial
result and per launch."""


class EffectError(RuntimeError):
    """An action could not be carried out; the message says what and why."""


class CopyIncompleteError(EffectError):
    """Verification read both prefixes and found objects missing or different."""


class StaleReadError(EffectError):
    """A conditional write lost a race with another writer: read again and redecide.
    Normal under concurrency, so it is neither a condition nor a Warning Event."""


@dataclass
class Effects:
    kube: Kube
    secrets: ExpiringCache[tuple[str, str], dict[str, str]] = field(
        default_factory=lambda: ExpiringCache(STORAGE_CACHE_SECONDS)
    )
    checked_buckets: ExpiringCache[tuple[str | None, ...], bool] = field(
        default_factory=lambda: ExpiringCache(STORAGE_CACHE_SECONDS)
    )

    def storage(self, namespace: str, resolved: ResolvedStorage) -> Storage:
        """An S3 client for the storage, with credentials from its Secret (if it names
        one) or else the operator's own environment."""
        access_key = secret_key = None
        ref = resolved.credentials_secret
        if ref is not None:
            data = self.secrets.get(
                (namespace, ref.name), lambda: self.kube.secret_data(namespace, ref.name)
            )
            if data is None:
                raise EffectError(f'Secret "{ref.name}" not found in namespace "{namespace}"')
            missing = [
                k for k in (ref.access_key_id_key, ref.secret_access_key_key) if k not in data
            ]
            if missing:
                raise EffectError(f'Secret "{ref.name}" has no key {missing[0]!r}')
            access_key = data[ref.access_key_id_key]
            secret_key = data[ref.secret_access_key_key]
        return Storage.for_credentials(
            S3Credentials(resolved.endpoint, access_key, secret_key, resolved.region or "us-east-1")
        )

    def preflight(self, namespace: str, resolved: ResolvedStorage) -> None:
        """Before trials start: the credentials exist and the bucket answers (a success is
        kept for `STORAGE_CACHE_SECONDS`, a failure is checked again at the next launch)."""

        def check() -> bool:
            self.storage(namespace, resolved).check_bucket(resolved.bucket)
            return True

        ref = resolved.credentials_secret
        credentials = json.dumps(ref.to_json(), sort_keys=True) if ref else None
        key = (namespace, resolved.bucket, resolved.endpoint, resolved.region, credentials)
        try:
            self.checked_buckets.get(key, check)
        except StorageError as error:
            raise EffectError(str(error)) from error

    def apply(self, namespace: str, action: Action) -> dict[str, Any] | None:
        """Carry out `action`. Returns the TunedModel as the apiserver returned it when the
        action wrote the lineage (None for other actions), so the caller need not read it
        again."""
        try:
            return self._apply(namespace, action)
        except StorageError as error:
            raise EffectError(str(error)) from error
        except ApiException as error:
            raise EffectError(f"Kubernetes API: {error.status} {_api_message(error)}") from error

    def _apply(self, namespace: str, action: Action) -> dict[str, Any] | None:
        if isinstance(action, ReserveIteration):
            return self._reserve_iteration(namespace, action)
        if isinstance(action, UpdateLineage | DropIterations):
            return self._update_lineage(namespace, action)
        if isinstance(action, CreateJob):
            if self.kube.create_job(action.manifest):
                METRICS.trials_started.inc()
        elif isinstance(action, DeleteJob):
            self.kube.delete_job(namespace, action.name)
        elif isinstance(action, CopyCheckpoint):
            storage = self.storage(namespace, action.storage)
            storage.copy_tree(
                S3Location.parse(action.source_uri), S3Location.parse(action.target_uri)
            )
        elif isinstance(action, VerifyCheckpoint):
            self._verify(namespace, action)
        elif isinstance(action, WriteManifest):
            assert action.storage is not None
            folder, name = posixpath.split(action.uri)
            self.storage(namespace, action.storage).put_json(
                S3Location.parse(folder), name, action.document
            )
        elif isinstance(action, DeleteStorage):
            self.storage(namespace, action.storage).delete_tree(S3Location.parse(action.uri))
        else:
            raise TypeError(f"unknown action {action!r}")
        return None

    def _verify(self, namespace: str, action: VerifyCheckpoint) -> None:
        storage = self.storage(namespace, action.storage)
        source = storage.list(S3Location.parse(action.source_uri))
        target = storage.list(S3Location.parse(action.target_uri))
        if not source:
            raise CopyIncompleteError(f"{action.source_uri} is empty")
        wrong = sorted(k for k, size in source.items() if target.get(k) != size)
        if wrong:
            raise CopyIncompleteError(
                f"{len(wrong)} of {len(source)} objects missing or different under "
                f"{action.target_uri} (first: {wrong[0]})"
            )

    def _reserve_iteration(self, namespace: str, action: ReserveIteration) -> dict[str, Any]:
        """No read first: the write is conditional on the version the decision read, so
        when it succeeds the rest of the status is what the decision saw."""
        patch = {"lastIteration": action.iteration}
        return self._patch_model_status(namespace, action.model, patch, action.resource_version)

    def _update_lineage(
        self, namespace: str, action: UpdateLineage | DropIterations
    ) -> dict[str, Any]:
        body = self.kube.get(TUNED_MODEL.plural, namespace, action.model)
        if body is None:
            raise EffectError(f'TunedModel "{action.model}" not found')
        old = TunedModelStatus.model_validate(body.get("status") or {})
        patch = merge_patch(old.to_json(), apply_to_model(old, action).to_json())
        if not patch:
            return body
        return self._patch_model_status(
            namespace, action.model, patch, body["metadata"]["resourceVersion"]
        )

    def _patch_model_status(
        self, namespace: str, model: str, patch: dict[str, Any], version: str
    ) -> dict[str, Any]:
        try:
            return self.kube.patch_status(TUNED_MODEL.plural, namespace, model, patch, version)
        except ConflictError as error:
            raise StaleReadError(str(error)) from error
        except ApiException as error:
            if error.status == 404:
                raise EffectError(f'TunedModel "{model}" not found') from error
            raise

    def read_json(self, namespace: str, resolved: ResolvedStorage, uri: str) -> Any | None:
        """The JSON document at `uri`; None when there is none."""
        folder, name = posixpath.split(uri)
        try:
            return self.storage(namespace, resolved).get_json(S3Location.parse(folder), name)
        except StorageError as error:
            raise EffectError(str(error)) from error


def _api_message(error: ApiException) -> str:
    """The apiserver's own explanation (for a 422 it names the field, e.g.
    `spec.template.spec.tolerations[0].operator`), else the HTTP reason."""
    try:
        message = json.loads(error.body or "").get("message")
    except (ValueError, AttributeError):
        message = None
    return str(message) if message else str(error.reason)
