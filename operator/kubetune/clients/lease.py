"""Reads and conditional writes of the operator's leader-election Lease
(coordination.k8s.io/v1). A write that loses a race raises `ConflictError`."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from kubetune.clients.kube import ConflictError, raw_json
from kubetune.decide.leadership import LeaseRecord


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class Leases:
    def __init__(self, api: client.ApiClient, namespace: str, name: str) -> None:
        self.coordination = client.CoordinationV1Api(api)
        self.namespace = namespace
        self.name = name

    def read(self) -> tuple[LeaseRecord, str] | None:
        """The record and the resourceVersion to update it against; None if absent."""
        try:
            response = self.coordination.read_namespaced_lease(
                self.name, self.namespace, _preload_content=False
            )
        except ApiException as error:
            if error.status == 404:
                return None
            raise
        lease = raw_json(response)
        spec = lease.get("spec") or {}
        record = LeaseRecord(
            holder=spec.get("holderIdentity") or None,
            lease_duration_seconds=int(spec.get("leaseDurationSeconds") or 0),
            transitions=int(spec.get("leaseTransitions") or 0),
            renew_time=spec.get("renewTime"),
        )
        return record, lease["metadata"]["resourceVersion"]

    def create(self, holder: str, duration_seconds: int) -> None:
        now = _now()
        body = {
            "metadata": {"name": self.name, "namespace": self.namespace},
            "spec": {
                "holderIdentity": holder,
                "leaseDurationSeconds": duration_seconds,
                "acquireTime": now,
                "renewTime": now,
                "leaseTransitions": 0,
            },
        }
        try:
            self.coordination.create_namespaced_lease(
                self.namespace,
                body,  # type: ignore[arg-type]  # the client sends a dict as it is
            )
        except ApiException as error:
            if error.status == 409:
                raise ConflictError(f"lease {self.name} was created by another replica") from error
            raise

    def write(
        self,
        resource_version: str,
        holder: str | None,
        duration_seconds: int,
        transitions: int,
        acquired: bool,
    ) -> None:
        """Replace the spec, only if the Lease is still at `resource_version`."""
        now = _now()
        spec: dict[str, Any] = {
            "holderIdentity": holder,
            "leaseDurationSeconds": duration_seconds,
            "renewTime": now,
            "leaseTransitions": transitions,
        }
        if acquired:
            spec["acquireTime"] = now
        body = {
            "metadata": {"name": self.name, "resourceVersion": resource_version},
            "spec": spec,
        }
        try:
            self.coordination.patch_namespaced_lease(
                self.name,
                self.namespace,
                body,
                _content_type="application/merge-patch+json",
            )
        except ApiException as error:
            if error.status == 409:
                raise ConflictError(f"lease {self.name} changed while being written") from error
            raise
