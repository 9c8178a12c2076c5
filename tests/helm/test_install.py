"""The chart against the real apiserver: every rendered object is accepted (server-side
dry run) in each mode; a cluster-wide release's account is still bounded; upgrades move
or remove what they should and `helm uninstall` leaves nothing of the release behind but
the CRDs (and every user resource), as Helm intends."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from devcluster.chart_operator import service_account_kubeconfig
from devcluster.state import ClusterInfo
from tests.conftest import Kubectl
from tests.helm.conftest import (
    CHART,
    EXAMPLES,
    Helm,
    documents,
    find,
    values_args,
)
from tests.support import wait_for

CRDS = ("tunedmodels.kubetune.dev", "finetuningtasks.kubetune.dev")
SERVICE_MONITOR_CRD = {
    "apiVersion": "apiextensions.k8s.io/v1",
    "kind": "CustomResourceDefinition",
    "metadata": {"name": "servicemonitors.monitoring.coreos.com"},
    "spec": {
        "group": "monitoring.coreos.com",
        "names": {"kind": "ServiceMonitor", "plural": "servicemonitors"},
        "scope": "Namespaced",
        "versions": [
            {
                "name": "v1",
                "served": True,
                "storage": True,
                "schema": {
                    "openAPIV3Schema": {
                        "type": "object",
                        "x-kubernetes-preserve-unknown-fields": True,
                    }
                },
            }
        ],
    },
}
"""A stand-in for prometheus-operator's CRD, so a ServiceMonitor can be dry-run applied."""


@pytest.fixture
def service_monitor_crd(kubectl: Kubectl) -> Iterator[None]:
    name = "crd/servicemonitors.monitoring.coreos.com"
    kubectl("apply", "-f", "-", input=json.dumps(SERVICE_MONITOR_CRD))
    # Polled: right after a create, `kubectl wait` can still answer NotFound.
    wait_for(
        lambda: (
            kubectl(
                "get",
                name,
                "-o",
                "jsonpath={.status.conditions[?(@.type=='Established')].status}",
                check=False,
            ).stdout
            == "True"
        ),
        "the ServiceMonitor CRD established",
    )
    yield
    kubectl("delete", name)


def _mode_values(mode: str, namespace: str) -> dict[str, Any]:
    if mode == "cluster-wide":
        return {}
    if mode == "namespaced":
        return {"watch": {"namespaces": [namespace, "default"]}}
    return {
        "crds": {"manage": True},
        "image": {"digest": "sha256:" + "0" * 64},
        "imagePullSecrets": [{"name": "registry"}],
        "metrics": {
            "serviceMonitor": {"enabled": True, "labels": {"release": "prometheus"}},
            "service": {"annotations": {"prometheus.io/scrape": "true"}},
        },
        "rbac": {"secretNames": ["s3-credentials"]},
        "trainer": {"serviceAccount": {"namespaces": [namespace]}},
        "storage": {"bucket": "models", "endpoint": "https://s3.example.com"},
        "mlflow": {"trackingUri": "http://mlflow.mlflow:5000"},
        "operator": {"extraEnv": [{"name": "AWS_MAX_ATTEMPTS", "value": "5"}]},
        "podAnnotations": {"example.com/team": "ml"},
        "nodeSelector": {"kubernetes.io/os": "linux"},
        "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "ml"}],
        "priorityClassName": "system-cluster-critical",
    }


@pytest.mark.parametrize("mode", ["cluster-wide", "namespaced", "everything-on"])
def test_apiserver_accepts_every_rendered_object(
    mode: str,
    helm: Helm,
    kubectl: Kubectl,
    namespace: str,
    crds: None,
    service_monitor_crd: None,
) -> None:
    rendered = helm.template(*values_args(_mode_values(mode, namespace)), namespace=namespace)
    objects = documents(rendered)
    result = kubectl("apply", "--dry-run=server", "-f", "-", input=rendered)
    lines = result.stdout.splitlines()
    assert len(lines) == len(objects), result.stdout
    assert all(line.endswith("(server dry run)") for line in lines), result.stdout


def _can_i(kubectl: Kubectl, kubeconfig: Path, *args: str) -> bool:
    result = kubectl("--kubeconfig", str(kubeconfig), "auth", "can-i", *args, check=False)
    return result.stdout.strip() == "yes"


def test_cluster_wide_account_is_still_bounded(
    helm: Helm,
    kubectl: Kubectl,
    devcluster: ClusterInfo,
    namespace: str,
    crds: None,
    tmp_path: Path,
) -> None:
    name = f"cw-{uuid.uuid4().hex[:6]}"
    helm("install", name, str(CHART), "-n", namespace)
    try:
        config = service_account_kubeconfig(
            devcluster, namespace, f"{name}-kubetune", tmp_path / "kubeconfig"
        )
        assert _can_i(kubectl, config, "watch", "finetuningtasks.kubetune.dev", "-A")
        assert _can_i(kubectl, config, "get", "secrets", "-n", "default")
        for refused in (
            ["list", "secrets", "-n", "default"],
            ["create", "pods", "-n", "default"],
            ["delete", "customresourcedefinitions.apiextensions.k8s.io"],
            ["list", "namespaces"],
            ["patch", "deployments.apps", "-n", namespace],
            ["get", "configmaps", "-n", namespace],
            ["update", "finetuningtasks.kubetune.dev", "-n", "default"],
            ["create", "clusterrolebindings.rbac.authorization.k8s.io"],
        ):
            assert not _can_i(kubectl, config, *refused), refused
    finally:
        helm("uninstall", name, "-n", namespace)


def _release_objects(kubectl: Kubectl, release: str) -> set[str]:
    kinds = kubectl("api-resources", "--verbs=list", "-o", "name").stdout.split()
    kinds = [k for k in kinds if k not in ("events", "events.events.k8s.io")]
    listing = kubectl(
        "get", ",".join(kinds), "-A", "-o", "name", "-l", f"app.kubernetes.io/instance={release}"
    )
    return set(listing.stdout.split())


@pytest.fixture
def adopted_crds(kubectl: Kubectl) -> Iterator[list[str]]:
    """Give the CRDs back their pre-test metadata when a test let a release adopt them."""
    yield list(CRDS)
    labels = [f"{k}-" for k in ("app.kubernetes.io/managed-by", "app.kubernetes.io/instance",
              "app.kubernetes.io/name", "app.kubernetes.io/part-of",
              "app.kubernetes.io/version", "helm.sh/chart")]  # fmt: skip
    annotations = [
        f"{k}-"
        for k in ("meta.helm.sh/release-name", "meta.helm.sh/release-namespace",
                  "helm.sh/resource-policy")
    ]  # fmt: skip
    kubectl("label", "crd", *CRDS, *labels, "--overwrite", check=False)
    kubectl("annotate", "crd", *CRDS, *annotations, "--overwrite", check=False)


def test_upgrade_and_uninstall_leave_no_orphans(
    helm: Helm,
    kubectl: Kubectl,
    namespace: str,
    crds: None,
    adopted_crds: list[str],
) -> None:
    release = f"up-{uuid.uuid4().hex[:6]}"
    first, second = f"{release}-a", f"{release}-b"
    for tenant in (first, second):
        kubectl("create", "namespace", tenant)
    try:
        helm("install", release, str(CHART), "-n", namespace,
             *values_args({"watch": {"namespaces": [first]}}))  # fmt: skip
        kubectl("apply", "-n", first, "-f", str(EXAMPLES / "minimal" / "tunedmodel.yaml"))
        before = _release_objects(kubectl, release)
        assert f"role.rbac.authorization.k8s.io/{release}-kubetune" in before
        assert f"service/{release}-kubetune-metrics" in before

        changed = {
            "watch": {"namespaces": [second]},
            "metrics": {"enabled": False},
            "operator": {"logLevel": "DEBUG"},
            "trainer": {"serviceAccount": {"name": "trainer"}},
        }
        helm("upgrade", release, str(CHART), "-n", namespace, *values_args(changed))
        manifest = documents(helm("get", "manifest", release, "-n", namespace).stdout)
        served = [r for r in find(manifest, "Role") if r["metadata"]["namespace"] != namespace]
        assert {r["metadata"]["namespace"] for r in served} == {second}
        for kind in ("roles", "rolebindings", "serviceaccounts"):
            names = kubectl("get", kind, "-n", first, "-o", "name", "-l",
                            f"app.kubernetes.io/instance={release}").stdout  # fmt: skip
            assert names == "", (kind, names)
        assert (
            kubectl("get", "serviceaccount", "trainer", "-n", second, check=False).returncode == 0
        )
        assert kubectl("get", "service", f"{release}-kubetune-metrics", "-n", namespace,
                       check=False).returncode != 0  # fmt: skip
        deployment = json.loads(kubectl("get", "deployment", f"{release}-kubetune", "-n",
                                        namespace, "-o", "json").stdout)  # fmt: skip
        env = {e["name"]: e.get("value") for e in
               deployment["spec"]["template"]["spec"]["containers"][0]["env"]}  # fmt: skip
        assert env["KUBETUNE_NAMESPACES"] == second and env["KUBETUNE_LOG_LEVEL"] == "DEBUG"
        assert "KUBETUNE_METRICS_PORT" not in env

        # Taking over CRD upgrades: adopt the CRDs that crds/ created, as NOTES.txt says.
        kubectl("label", "crd", *adopted_crds, "app.kubernetes.io/managed-by=Helm")
        kubectl("annotate", "crd", *adopted_crds, f"meta.helm.sh/release-name={release}",
                f"meta.helm.sh/release-namespace={namespace}")  # fmt: skip
        helm("upgrade", release, str(CHART), "-n", namespace, "--reuse-values",
             *values_args({"crds": {"manage": True}}))  # fmt: skip
        for crd in adopted_crds:
            metadata = json.loads(kubectl("get", "crd", crd, "-o", "json").stdout)["metadata"]
            assert metadata["annotations"]["helm.sh/resource-policy"] == "keep"
            assert metadata["labels"]["app.kubernetes.io/instance"] == release
    finally:
        helm("uninstall", release, "-n", namespace, check=False)
    left = _release_objects(kubectl, release)
    assert left == {f"customresourcedefinition.apiextensions.k8s.io/{c}" for c in CRDS}
    kubectl("get", "tunedmodel", "minilm", "-n", first)
    for tenant in (first, second):
        kubectl("delete", "namespace", tenant, "--wait=false")
