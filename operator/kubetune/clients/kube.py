"""Kubernetes reads and writes of the operator: its two kinds, trial Jobs and their Pods,
and the Secrets that hold S3 credentials. Plain dicts in and out: responses are parsed as
JSON, never into the client's model classes (which costs several times the CPU). Errors
that mean "already done" (AlreadyExists on create, NotFound on delete) are success.
"""

from __future__ import annotations

import base64
import json
import os
from datetime import UTC, datetime
from typing import Any, cast

import urllib3
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from kubetune.api import GROUP, VERSION
from kubetune.manifests import LABEL_TASK

USER_AGENT = "kubetune-operator"
"""How the operator's own requests are named in the apiserver's audit log (kopf's watches
carry kopf's name)."""


def raw_json(response: object) -> Any:
    """The body of a call made with `_preload_content=False`: the client then returns
    urllib3's response, not the model class its annotations name."""
    return json.loads(cast(urllib3.BaseHTTPResponse, response).data)


class ConflictError(RuntimeError):
    """A conditional write lost a race; reconcile again with fresh reads."""


class Kube:
    def __init__(self, api: client.ApiClient) -> None:
        self.custom = client.CustomObjectsApi(api)
        self.batch = client.BatchV1Api(api)
        self.core = client.CoreV1Api(api)

    # -- the operator's kinds --------------------------------------------------------
    def get(self, plural: str, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            found = self.custom.get_namespaced_custom_object(
                GROUP, VERSION, namespace, plural, name
            )
            return dict(cast(dict[str, Any], found))
        except ApiException as error:
            if error.status == 404:
                return None
            raise

    def patch_status(
        self,
        plural: str,
        namespace: str,
        name: str,
        status_patch: dict[str, Any],
        resource_version: str | None = None,
    ) -> dict[str, Any]:
        """JSON merge patch of `status`; with `resource_version`, only if it is unchanged."""
        body: dict[str, Any] = {"status": status_patch}
        if resource_version:
            body["metadata"] = {"resourceVersion": resource_version}
        try:
            response = self.custom.patch_namespaced_custom_object_status(
                GROUP,
                VERSION,
                namespace,
                plural,
                name,
                body,
                _content_type="application/merge-patch+json",
                _preload_content=False,
            )
        except ApiException as error:
            if error.status == 409:
                raise ConflictError(
                    f"{plural}/{name} changed while it was being updated"
                ) from error
            raise
        return dict(raw_json(response))

    def patch_metadata(self, plural: str, namespace: str, name: str, patch: dict[str, Any]) -> None:
        self.custom.patch_namespaced_custom_object(
            GROUP, VERSION, namespace, plural, name, {"metadata": patch}
        )

    # -- trial Jobs -----------------------------------------------------------------
    def task_jobs(self, namespace: str, task: str) -> list[dict[str, Any]]:
        response = self.batch.list_namespaced_job(
            namespace, label_selector=f"{LABEL_TASK}={task}", _preload_content=False
        )
        return list(raw_json(response)["items"])

    def task_pods(self, namespace: str, task: str) -> list[dict[str, Any]]:
        response = self.core.list_namespaced_pod(
            namespace, label_selector=f"{LABEL_TASK}={task}", _preload_content=False
        )
        return list(raw_json(response)["items"])

    def pod_creation_failures(self, namespace: str, job: str) -> list[dict[str, Any]]:
        """The Job controller's FailedCreate events about this Job: why it has no Pod."""
        selector = f"involvedObject.kind=Job,involvedObject.name={job},reason=FailedCreate"
        response = self.core.list_namespaced_event(
            namespace, field_selector=selector, _preload_content=False
        )
        return list(raw_json(response)["items"])

    def create_job(self, manifest: dict[str, Any]) -> bool:
        """Create the Job; False when it already exists (the name is deterministic)."""
        try:
            self.batch.create_namespaced_job(
                manifest["metadata"]["namespace"],
                manifest,  # type: ignore[arg-type]  # the client sends a dict as it is
                _preload_content=False,
            )
        except ApiException as error:
            if error.status == 409:
                return False
            raise
        return True

    def delete_job(self, namespace: str, name: str) -> None:
        try:
            self.batch.delete_namespaced_job(
                name, namespace, propagation_policy="Background", _preload_content=False
            )
        except ApiException as error:
            if error.status != 404:
                raise

    # -- Events ---------------------------------------------------------------------
    def post_event(
        self, body: dict[str, Any], type_: str, reason: str, message: str, at: datetime
    ) -> None:
        """A core/v1 Event about one of the operator's objects, as `kubectl describe` shows,
        that happened `at`."""
        meta = body["metadata"]
        now = at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        self.core.create_namespaced_event(
            meta["namespace"],
            {  # type: ignore[arg-type]  # the client sends a dict as it is
                "metadata": {"generateName": f"{meta['name']}.", "namespace": meta["namespace"]},
                "involvedObject": {
                    "apiVersion": body.get("apiVersion"),
                    "kind": body.get("kind"),
                    "name": meta["name"],
                    "namespace": meta["namespace"],
                    "uid": meta.get("uid"),
                    "resourceVersion": meta.get("resourceVersion"),
                },
                "type": type_,
                "reason": reason,
                "message": message[:1024],
                "source": {"component": "kubetune"},
                "reportingComponent": "kubetune.dev/operator",
                "reportingInstance": os.environ.get("HOSTNAME", "kubetune"),
                "firstTimestamp": now,
                "lastTimestamp": now,
                "eventTime": now,
                "action": reason,
                "count": 1,
            },
            _preload_content=False,
        )

    # -- Secrets --------------------------------------------------------------------
    def secret_data(self, namespace: str, name: str) -> dict[str, str] | None:
        try:
            response = self.core.read_namespaced_secret(name, namespace, _preload_content=False)
        except ApiException as error:
            if error.status == 404:
                return None
            raise
        data = raw_json(response).get("data") or {}
        return {k: base64.b64decode(v).decode() for k, v in data.items()}
