"""What every fault test proves at its end: the task Succeeded, each Job was created once
(audit log), and the lineage points at a complete iteration (its manifest is written)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from devcluster.audit import successful_creates
from devcluster.state import ClusterInfo
from kubetune.clients.s3 import S3Location
from kubetune.locations import iteration_prefix_of, manifest_uri
from tests.conftest import Kubectl
from tests.e2e.fixtures import get, wait_phase


def _exists(s3: Any, uri: str) -> bool:
    location = S3Location.parse(uri)
    listed = s3.list_objects_v2(Bucket=location.bucket, Prefix=location.prefix, MaxKeys=1)
    return bool(listed.get("KeyCount"))


def assert_recovered(
    kubectl: Kubectl, s3: Any, devcluster: ClusterInfo, namespace: str, task: str, model: str
) -> dict[str, Any]:
    """The fault left no trace but the delay; returns the final task."""
    final = wait_phase(kubectl, namespace, task, {"Succeeded", "Failed"}, timeout=900)
    assert final["status"]["phase"] == "Succeeded", final["status"]
    creates = successful_creates(Path(devcluster.state_dir), "jobs", namespace)
    assert creates and all(count == 1 for count in creates.values()), creates
    current = get(kubectl, namespace, "tunedmodel", model)["status"]["currentIteration"]
    assert current["sourceTask"] == task, current
    assert _exists(s3, current["uri"]), f"the promoted model {current['uri']} is empty"
    manifest = manifest_uri(iteration_prefix_of(current["uri"]))
    assert _exists(s3, manifest), f"{manifest} is missing: the iteration is incomplete"
    return final
