"""The chart without a cluster: lint, the schema's strictness, documented values, the
CRD copies, and what the templates render (hardening, RBAC shape, optional objects)."""

from __future__ import annotations

import json
import re
from typing import Any

import promql_parser
import pytest
import yaml

from kubetune.metrics import OperatorMetrics
from tests.helm.conftest import CHART, KUBE_VERSION, REPO, Helm, documents, find, values_args

NAMESPACES = ["team-a", "team-b"]


def test_lint_in_both_modes(helm_offline: Helm) -> None:
    for args in ([], values_args({"watch": {"namespaces": NAMESPACES}})):
        result = helm_offline("lint", "--strict", "--kube-version", KUBE_VERSION, str(CHART), *args)
        assert "0 chart(s) failed" in result.stdout, result.stdout


def test_chart_crds_are_the_generated_crds() -> None:
    chart = sorted(p.name for p in (CHART / "crds").iterdir())
    assert chart == sorted(p.name for p in (REPO / "crds").iterdir())
    for name in chart:
        assert (CHART / "crds" / name).read_bytes() == (REPO / "crds" / name).read_bytes()


@pytest.mark.parametrize(
    ("args", "error"),
    [
        (["--set", "imageTag=1.0"], "additional properties 'imageTag' not allowed"),
        (["--set", "storage.bukket=x"], "additional properties 'bukket' not allowed"),
        (["--set-string", "metrics.port=9090"], "got string, want integer"),
        (["--set", "crds.manage=yes"], "got string, want boolean"),
        (["--set", "operator.logLevel=LOUD"], "value must be one of"),
        (["--set", "operator.logFormat=yaml"], "value must be one of"),
        (["--set", "watch.namespaces={Team_A}"], "does not match pattern"),
        (["--set", "trainer.image.pullPolicy=Sometimes"], "value must be one of"),
    ],
)
def test_schema_rejects_unknown_keys_and_wrong_types(
    helm_offline: Helm, args: list[str], error: str
) -> None:
    result = helm_offline(
        "template", "x", str(CHART), "--kube-version", KUBE_VERSION, *args, check=False
    )
    assert result.returncode != 0
    assert error in result.stderr, result.stderr


def _documented_keys(text: str) -> dict[str, bool]:
    """Every key path of values.yaml -> whether a comment line precedes it."""
    keys: dict[str, bool] = {}
    stack: list[tuple[int, str]] = []
    commented = False
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("#"):
            commented = True
            continue
        match = re.match(r"^( *)([A-Za-z][\w.-]*):", line)
        if match:
            indent = len(match[1])
            stack = [(i, k) for i, k in stack if i < indent]
            stack.append((indent, match[2]))
            keys[".".join(k for _, k in stack)] = commented
        if stripped:
            commented = False
    return keys


def _schema_paths(schema: dict[str, Any], prefix: str = "") -> list[str]:
    """Key paths the chart defines (objects with `properties`, not Kubernetes passthrough)."""
    paths = []
    for name, child in schema.get("properties", {}).items():
        path = f"{prefix}{name}"
        paths.append(path)
        paths += _schema_paths(child, f"{path}.")
    return paths


def test_every_value_is_documented_and_in_the_schema() -> None:
    schema = json.loads((CHART / "values.schema.json").read_text())
    documented = _documented_keys((CHART / "values.yaml").read_text())
    defined = _schema_paths(schema)
    assert [p for p in defined if p not in documented] == [], "in the schema, not in values.yaml"
    assert [p for p in defined if not documented[p]] == [], "values without a comment"
    passthrough = {"podSecurityContext", "securityContext", "resources"}
    undefined = [p for p in documented if p not in defined and p.split(".")[0] not in passthrough]
    assert undefined == [], "in values.yaml, not in the schema"

    def closed(node: dict[str, Any], path: str) -> None:
        if "properties" in node:
            assert node.get("additionalProperties") is False, path
            for name, child in node["properties"].items():
                closed(child, f"{path}.{name}")

    closed(schema, "")


def test_deployment_is_hardened_and_elects_a_leader(helm_offline: Helm) -> None:
    objects = documents(helm_offline.template())
    (deployment,) = find(objects, "Deployment")
    spec = deployment["spec"]
    assert spec["replicas"] == 1
    assert spec["strategy"]["rollingUpdate"] == {"maxSurge": 1, "maxUnavailable": 0}
    pod = spec["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    (container,) = pod["containers"]
    security = container["securityContext"]
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"] == {"drop": ["ALL"]}
    assert {"requests", "limits"} <= container["resources"].keys()
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["KUBETUNE_LIVENESS_ENDPOINT"] == "http://0.0.0.0:8080/healthz"
    assert env["KUBETUNE_LEADER_ELECTION"] == "true"
    assert env["KUBETUNE_LEASE_NAME"] == "kubetune"
    (lease_role,) = find(objects, "Role", "kubetune-system")
    assert _rules(lease_role) == LEADER_ELECTION
    (named,) = [r for r in lease_role["rules"] if "resourceNames" in r]
    assert named["resourceNames"] == ["kubetune"] and "create" not in named["verbs"]
    for probe in ("livenessProbe", "readinessProbe"):
        assert container[probe]["httpGet"] == {"path": "/healthz", "port": "health"}
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"health": 8080, "metrics": 9090}
    assert container["image"] == "ghcr.io/kubetune/operator:0.1.0"
    assert env["KUBETUNE_TRAINER_IMAGE"] == "ghcr.io/kubetune/trainer:0.1.0"
    # Cluster-wide, the trainer account exists only where listed: no default.
    assert "KUBETUNE_TRAINER_SERVICE_ACCOUNT" not in env
    (service,) = find(objects, "Service")
    assert service["spec"]["ports"][0]["targetPort"] == "metrics"
    assert not find(objects, "PodDisruptionBudget")
    assert not find(objects, "ServiceMonitor")
    assert not find(objects, "CustomResourceDefinition")


def test_standby_replicas_get_a_disruption_budget(helm_offline: Helm) -> None:
    objects = documents(helm_offline.template("--set", "replicaCount=2"))
    (deployment,) = find(objects, "Deployment")
    assert deployment["spec"]["replicas"] == 2
    (budget,) = find(objects, "PodDisruptionBudget")
    assert budget["spec"]["minAvailable"] == 1
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert budget["spec"]["selector"]["matchLabels"].items() <= labels.items()


def _rules(role: dict[str, Any]) -> set[tuple[str, str, str]]:
    return {
        (group, resource, verb)
        for rule in role["rules"]
        for group in rule["apiGroups"]
        for resource in rule["resources"]
        for verb in rule["verbs"]
    }


WORKLOAD = {
    ("kubetune.dev", "tunedmodels", "get"),
    ("kubetune.dev", "tunedmodels", "list"),
    ("kubetune.dev", "tunedmodels", "watch"),
    ("kubetune.dev", "tunedmodels", "patch"),
    ("kubetune.dev", "finetuningtasks", "get"),
    ("kubetune.dev", "finetuningtasks", "list"),
    ("kubetune.dev", "finetuningtasks", "watch"),
    ("kubetune.dev", "tunedmodels/status", "patch"),
    ("kubetune.dev", "finetuningtasks/status", "patch"),
    ("kubetune.dev", "finetuningtasks/finalizers", "update"),
    ("batch", "jobs", "list"),
    ("batch", "jobs", "watch"),
    ("batch", "jobs", "create"),
    ("batch", "jobs", "delete"),
    ("", "pods", "list"),
    ("", "secrets", "get"),
    ("", "events", "create"),
    ("", "events", "list"),
}
"""What the operator may do where it works; tests/helm/test_operator.py checks it against
the audit log of a real run."""
CRD_DISCOVERY = {
    ("apiextensions.k8s.io", "customresourcedefinitions", "list"),
    ("apiextensions.k8s.io", "customresourcedefinitions", "watch"),
}
NAMESPACE_DISCOVERY = {("", "namespaces", "list"), ("", "namespaces", "watch")}
LEADER_ELECTION = {
    ("coordination.k8s.io", "leases", "create"),
    ("coordination.k8s.io", "leases", "get"),
    ("coordination.k8s.io", "leases", "patch"),
}
"""In the release's namespace only."""


def test_cluster_wide_rbac_is_one_cluster_role(helm_offline: Helm) -> None:
    objects = documents(helm_offline.template())
    (role,) = find(objects, "ClusterRole")
    assert _rules(role) == WORKLOAD | CRD_DISCOVERY
    assert [r["metadata"]["namespace"] for r in find(objects, "Role")] == ["kubetune-system"]
    assert [b["metadata"]["namespace"] for b in find(objects, "RoleBinding")] == ["kubetune-system"]
    (binding,) = find(objects, "ClusterRoleBinding")
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": "kubetune", "namespace": "kubetune-system"}
    ]


def test_namespaced_rbac_has_a_role_per_namespace(helm_offline: Helm) -> None:
    values = {"watch": {"namespaces": NAMESPACES}, "rbac": {"secretNames": ["s3-credentials"]}}
    objects = documents(helm_offline.template(*values_args(values)))
    (cluster_role,) = find(objects, "ClusterRole")
    assert _rules(cluster_role) == CRD_DISCOVERY | NAMESPACE_DISCOVERY
    for namespace in NAMESPACES:
        (role,) = find(objects, "Role", namespace)
        assert _rules(role) == WORKLOAD
        (secrets,) = [r for r in role["rules"] if r["resources"] == ["secrets"]]
        assert secrets["resourceNames"] == ["s3-credentials"]
        (binding,) = find(objects, "RoleBinding", namespace)
        assert binding["roleRef"]["name"] == role["metadata"]["name"]
        (trainer,) = find(objects, "ServiceAccount", namespace)
        assert trainer["metadata"]["name"] == "kubetune-trainer"
        assert trainer["automountServiceAccountToken"] is False
    bound = {s["name"] for b in find(objects, "RoleBinding") for s in b["subjects"]}
    assert "kubetune-trainer" not in bound
    (deployment,) = find(objects, "Deployment")
    env = {
        e["name"]: e.get("value")
        for e in deployment["spec"]["template"]["spec"]["containers"][0]["env"]
    }
    assert env["KUBETUNE_NAMESPACES"] == ",".join(NAMESPACES)
    assert env["KUBETUNE_TRAINER_SERVICE_ACCOUNT"] == "kubetune-trainer"


def _without_chart_metadata(crd: dict[str, Any]) -> dict[str, Any]:
    crd = json.loads(json.dumps(crd))
    crd["metadata"].pop("labels")
    crd["metadata"].pop("annotations", None)
    return dict(crd)


@pytest.mark.parametrize("keep", [True, False])
def test_managed_crds_are_the_chart_crds_with_keep_policy(helm_offline: Helm, keep: bool) -> None:
    objects = documents(
        helm_offline.template(*values_args({"crds": {"manage": True, "keep": keep}}))
    )
    rendered = {c["metadata"]["name"]: c for c in find(objects, "CustomResourceDefinition")}
    files = {
        d["metadata"]["name"]: d
        for path in sorted((CHART / "crds").glob("*.yaml"))
        for d in [yaml.safe_load(path.read_text())]
    }
    assert rendered.keys() == files.keys()
    for name, crd in rendered.items():
        assert _without_chart_metadata(crd) == files[name]
        annotations = crd["metadata"].get("annotations", {})
        assert (annotations.get("helm.sh/resource-policy") == "keep") is keep


def test_service_monitor_is_optional(helm_offline: Helm) -> None:
    values = {"metrics": {"serviceMonitor": {"enabled": True, "labels": {"release": "prom"}}}}
    objects = documents(helm_offline.template(*values_args(values)))
    (monitor,) = find(objects, "ServiceMonitor")
    assert monitor["metadata"]["labels"]["release"] == "prom"
    assert monitor["spec"]["endpoints"][0]["port"] == "metrics"
    disabled = {"metrics": {"enabled": False, "serviceMonitor": {"enabled": True}}}
    objects = documents(helm_offline.template(*values_args(disabled)))
    assert not find(objects, "ServiceMonitor") and not find(objects, "Service")


def _selectors(expr: object) -> list[promql_parser.VectorSelector]:
    """Every vector selector in a parsed PromQL expression."""
    if isinstance(expr, promql_parser.VectorSelector):
        return [expr]
    children: list[object] = []
    for attribute in ("lhs", "rhs", "expr", "vector_selector", "param"):
        children.append(getattr(expr, attribute, None))
    children += list(getattr(expr, "args", None) or [])
    return [s for child in children if child is not None for s in _selectors(child)]


def _exposed_series() -> set[str]:
    """The series names the operator's metrics expose, labelled ones included."""
    suffixes = {"counter": ["_total"], "gauge": [""], "histogram": ["_bucket", "_count", "_sum"]}
    families = OperatorMetrics().registry.collect()
    return {f.name + suffix for f in families for suffix in suffixes[f.type]}


def test_alerts_are_optional_and_query_the_operators_own_metrics(helm_offline: Helm) -> None:
    rule_values = {"enabled": True, "labels": {"release": "prom"}, "alertLabels": {"team": "ml"}}
    objects = documents(
        helm_offline.template(*values_args({"metrics": {"prometheusRule": rule_values}}))
    )
    (rule,) = find(objects, "PrometheusRule")
    assert rule["metadata"]["labels"]["release"] == "prom"
    exposed = _exposed_series() | {"up"}
    scope = {("namespace", "kubetune-system"), ("service", "kubetune-metrics")}
    alerts = rule["spec"]["groups"][0]["rules"]
    assert len(alerts) == 6
    for alert in alerts:
        selectors = _selectors(promql_parser.parse(alert["expr"]))  # raises on bad PromQL
        assert selectors, alert["alert"]
        for selector in selectors:
            assert selector.name in exposed, (alert["alert"], selector.name)
            matchers = {(m.name, m.value) for m in selector.matchers.matchers}
            assert scope <= matchers, (alert["alert"], matchers)
        assert alert["labels"]["team"] == "ml"
        assert alert["labels"]["severity"] in {"critical", "warning", "info"}
        assert alert["annotations"]["summary"] and alert["annotations"]["description"]
    assert not find(documents(helm_offline.template()), "PrometheusRule")
    disabled = {"metrics": {"enabled": False, "prometheusRule": {"enabled": True}}}
    assert not find(documents(helm_offline.template(*values_args(disabled))), "PrometheusRule")
