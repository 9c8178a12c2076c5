"""The devcluster's apiserver is the real one: version, CRD schema and CEL validation."""

from __future__ import annotations

import json

from devcluster import build, cluster
from devcluster.state import ClusterInfo
from tests.conftest import Kubectl

WIDGET_CRD = """
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: widgets.test.kubetune.dev
spec:
  group: test.kubetune.dev
  names: {plural: widgets, singular: widget, kind: Widget}
  scope: Namespaced
  versions:
  - name: v1
    served: true
    storage: true
    schema:
      openAPIV3Schema:
        type: object
        properties:
          spec:
            type: object
            required: [replicas]
            x-kubernetes-validations:
            - rule: self.minSize <= self.maxSize
              message: minSize must not exceed maxSize
            properties:
              replicas: {type: integer, minimum: 1, maximum: 10}
              minSize: {type: integer}
              maxSize: {type: integer}
"""


def test_version_is_the_pinned_release(devcluster: ClusterInfo, kubectl: Kubectl) -> None:
    version = cluster.wait_for_version(devcluster)
    assert version["gitVersion"] == build.KUBERNETES_VERSION
    client_version = json.loads(kubectl("version", "--client", "-o", "json").stdout)
    assert client_version["clientVersion"]["gitVersion"] == build.KUBERNETES_VERSION


def test_crd_rejects_bad_objects_with_the_servers_message(kubectl: Kubectl, namespace: str) -> None:
    kubectl("apply", "-f", "-", input=WIDGET_CRD)
    kubectl("wait", "--for=condition=Established", "crd/widgets.test.kubetune.dev", "--timeout=30s")
    out_of_range = (
        "apiVersion: test.kubetune.dev/v1\nkind: Widget\nmetadata: {name: big}\n"
        "spec: {replicas: 20, minSize: 1, maxSize: 2}\n"
    )
    result = kubectl("apply", "-n", namespace, "-f", "-", input=out_of_range, check=False)
    assert result.returncode != 0
    assert "spec.replicas: Invalid value: 20" in result.stderr
    assert "less than or equal to 10" in result.stderr

    inverted = (
        "apiVersion: test.kubetune.dev/v1\nkind: Widget\nmetadata: {name: inverted}\n"
        "spec: {replicas: 1, minSize: 5, maxSize: 2}\n"
    )
    result = kubectl("apply", "-n", namespace, "-f", "-", input=inverted, check=False)
    assert result.returncode != 0
    assert "minSize must not exceed maxSize" in result.stderr

    good = (
        "apiVersion: test.kubetune.dev/v1\nkind: Widget\nmetadata: {name: good}\n"
        "spec: {replicas: 3, minSize: 1, maxSize: 2}\n"
    )
    kubectl("apply", "-n", namespace, "-f", "-", input=good)
    kubectl("delete", "crd", "widgets.test.kubetune.dev")
