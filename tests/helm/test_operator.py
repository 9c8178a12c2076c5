"""The chart's operator at work: installed with `helm install` in namespaced mode and run
as the release's ServiceAccount (a TokenRequest token), it takes every example to
Succeeded. Its rights are enough (no request was refused) and no more than it uses (the
audit log), and it cannot reach beyond its namespaces (`kubectl auth can-i`)."""

from __future__ import annotations

import json
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from devcluster.nodeagent.pods import find_log
from devcluster.state import ClusterInfo
from tests.conftest import Kubectl
from tests.helm.conftest import EXAMPLE_SOURCES, EXAMPLES, ChartRun
from tests.helm.test_chart import CRD_DISCOVERY, LEADER_ELECTION, NAMESPACE_DISCOVERY, WORKLOAD

EXAMPLE_TASKS = ("minilm-first", "support-search-lr-sweep", "ci-docs-search-weekly")
EXAMPLE_MODELS = ("minilm", "support-search", "ci-docs-search")
NOT_EXERCISED = {
    ("kubetune.dev", "finetuningtasks/finalizers", "update"): "checked by the "
    "OwnerReferencesPermissionEnforcement admission plugin when a Job sets "
    "blockOwnerDeletion; the devcluster does not enable it, real clusters (OpenShift) do",
}
"""Granted rights a run cannot show in the audit log, and why they are granted."""


def _latest(run: ChartRun, kind: str, name: str) -> dict[str, Any]:
    versions = [s for s in run.snapshots if s["kind"] == kind and s["metadata"]["name"] == name]
    return max(versions, key=lambda s: int(s["metadata"]["resourceVersion"]))


def test_every_example_succeeds(chart_run: ChartRun) -> None:
    for name in EXAMPLE_TASKS:
        status = _latest(chart_run, "FineTuningTask", name)["status"]
        assert status["phase"] == "Succeeded", (name, status)
        assert status["promotedUri"].startswith("s3://kubetune-models/")
    for name in EXAMPLE_MODELS:
        model = _latest(chart_run, "TunedModel", name)
        assert model["status"]["currentIteration"]["iteration"] == 1, model["status"]
    full = _latest(chart_run, "FineTuningTask", "support-search-lr-sweep")["status"]
    assert full["promotedUri"].startswith("s3://kubetune-models/teams/support/")
    assert len(full["trials"]) == 2
    assert _latest(chart_run, "FineTuningTask", "health-failed")["status"]["phase"] == "Failed"


def test_a_trial_refused_its_pod_says_why(chart_run: ChartRun, kubectl: Kubectl) -> None:
    """The namespace's quota allows no MIG slice: the trial that asks for one stays Pending,
    with the apiserver's refusal in its status and in a Warning on the task."""
    status = _latest(chart_run, "FineTuningTask", "health-waiting")["status"]
    (trial,) = status["trials"]
    assert (trial["phase"], trial["reason"]) == ("Pending", "FailedCreate"), trial
    assert "exceeded quota: no-mig-slices" in trial["message"], trial
    events = json.loads(
        kubectl(
            "get",
            "events",
            "-n",
            chart_run.tenant,
            "--field-selector",
            "involvedObject.name=health-waiting,reason=TrialWaiting",
            "-o",
            "json",
        ).stdout
    )["items"]
    assert [e["type"] for e in events] == ["Warning"], events
    assert "exceeded quota: no-mig-slices" in events[0]["message"]


def test_a_trial_past_its_deadline_while_waiting_fails_saying_why(chart_run: ChartRun) -> None:
    status = _latest(chart_run, "FineTuningTask", "health-deadline")["status"]
    (trial,) = status["trials"]
    assert (trial["phase"], trial["reason"]) == ("Failed", "DeadlineExceeded"), trial
    assert "while its Pod waited: FailedCreate:" in trial["message"], trial
    assert "exceeded quota: no-mig-slices" in trial["message"], trial
    assert status["phase"] == "Failed"


def test_a_trial_whose_image_is_absent_says_why(chart_run: ChartRun) -> None:
    status = _latest(chart_run, "FineTuningTask", "health-no-image")["status"]
    (trial,) = status["trials"]
    assert (trial["phase"], trial["reason"]) == ("Pending", "ErrImageNeverPull"), trial
    assert "localhost/kubetune-absent:none" in trial["message"], trial


def test_trials_run_under_the_trainer_account(chart_run: ChartRun, kubectl: Kubectl) -> None:
    jobs = json.loads(kubectl("get", "jobs", "-n", chart_run.tenant, "-o", "json").stdout)
    pod_specs = {
        j["metadata"]["labels"]["kubetune.dev/task"]: j["spec"]["template"]["spec"]
        for j in jobs["items"]
    }
    assert pod_specs["support-search-lr-sweep"]["serviceAccountName"] == "kubetune-trainer"
    # A task that names no account gets the chart's default (namespaced mode), no token.
    assert pod_specs["minilm-first"]["serviceAccountName"] == "kubetune-trainer"
    assert pod_specs["minilm-first"]["automountServiceAccountToken"] is False


def _audit(info: ClusterInfo, user: str) -> list[dict[str, Any]]:
    entries = []
    with (Path(info.state_dir) / "logs" / "audit.log").open() as log:
        for line in log:
            if user in line:
                entry = json.loads(line)
                if entry["user"]["username"] == user and "objectRef" in entry:
                    entries.append(entry)
    return entries


def test_rights_are_sufficient_and_all_used(chart_run: ChartRun, devcluster: ClusterInfo) -> None:
    release = chart_run.release
    user = f"system:serviceaccount:{release.namespace}:{release.service_account}"
    entries = [
        e
        for e in _audit(devcluster, user)
        if e["objectRef"].get("apiGroup") != "authorization.k8s.io"  # `kubectl auth can-i`
    ]
    refused = {(e["verb"], e["requestURI"]) for e in entries if e["responseStatus"]["code"] == 403}
    assert not refused, refused
    used = set()
    for entry in entries:
        ref = entry["objectRef"]
        resource = ref["resource"] + (f"/{ref['subresource']}" if ref.get("subresource") else "")
        used.add((ref.get("apiGroup", ""), resource, entry["verb"]))
        if ref.get("namespace") and ref["resource"] == "leases":
            assert ref["namespace"] == release.namespace, entry["requestURI"]
        elif ref.get("namespace"):
            assert ref["namespace"] == chart_run.tenant, entry["requestURI"]
    granted = WORKLOAD | CRD_DISCOVERY | NAMESPACE_DISCOVERY | LEADER_ELECTION
    assert used <= granted
    unused = granted - used - set(NOT_EXERCISED)
    assert unused == set(), "granted but never used"


def _can_i(kubectl: Kubectl, kubeconfig: Path, *args: str) -> bool:
    result = kubectl("--kubeconfig", str(kubeconfig), "auth", "can-i", *args, check=False)
    assert result.stdout.strip() in ("yes", "no"), result.stderr
    return result.stdout.strip() == "yes"


def test_account_cannot_reach_beyond_its_namespaces(chart_run: ChartRun, kubectl: Kubectl) -> None:
    config, tenant, other = chart_run.kubeconfig, chart_run.tenant, chart_run.other
    for allowed in (
        ["get", "secrets/s3-credentials", "-n", tenant],
        ["create", "jobs.batch", "-n", tenant],
        ["patch", "finetuningtasks.kubetune.dev", "--subresource=status", "-n", tenant],
        ["watch", "customresourcedefinitions.apiextensions.k8s.io"],
    ):
        assert _can_i(kubectl, config, *allowed), allowed
    for refused in (
        ["get", "secrets/s3-credentials", "-n", other],
        ["get", "secrets", "-n", chart_run.release.namespace],
        ["get", "secrets", "-n", "kube-system"],
        ["list", "secrets", "-n", tenant],
        ["create", "pods", "-n", tenant],
        ["create", "pods", "-n", other],
        ["delete", "customresourcedefinitions.apiextensions.k8s.io"],
        ["update", "customresourcedefinitions.apiextensions.k8s.io"],
        ["create", "jobs.batch", "-n", other],
        ["list", "jobs.batch", "--all-namespaces"],
        ["update", "finetuningtasks.kubetune.dev", "-n", tenant],
        ["delete", "finetuningtasks.kubetune.dev", "-n", tenant],
        ["delete", "namespaces"],
        ["create", "serviceaccounts/token", "-n", tenant],
    ):
        assert not _can_i(kubectl, config, *refused), refused


def test_trainer_account_has_no_rights(chart_run: ChartRun, kubectl: Kubectl) -> None:
    account = f"system:serviceaccount:{chart_run.tenant}:kubetune-trainer"
    for verb, resource in (
        ("get", "secrets"),
        ("list", "pods"),
        ("get", "finetuningtasks.kubetune.dev"),
        ("create", "jobs.batch"),
        ("get", "configmaps"),
    ):
        result = kubectl(
            "auth", "can-i", verb, resource, "-n", chart_run.tenant, "--as", account, check=False
        )
        assert result.stdout.strip() == "no", (verb, resource)


def _http(port: int, path: str) -> tuple[int, str]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as response:
        return response.status, response.read().decode()


def test_health_and_metrics_endpoints(chart_run: ChartRun) -> None:
    code, body = _http(chart_run.health_port, "/healthz")
    assert code == 200, body
    code, body = _http(chart_run.metrics_port, "/metrics")
    assert code == 200
    assert "kubetune" in body
    # health-waiting's and health-no-image's trials wait
    assert 'kubetune_trials_waiting{reason="FailedCreate"} 1.0' in body
    assert 'kubetune_trials_waiting{reason="ErrImageNeverPull"} 1.0' in body
    assert 'kubetune_build_info{version="' in body
    # the examples' trials were seen from start to end
    assert 'kubetune_trial_duration_seconds_count{outcome="succeeded"}' in body


def test_the_operator_logs_json_lines_that_name_their_object(chart_run: ChartRun) -> None:
    # The chart run sets operator.logFormat=json (and DEBUG, so kopf logs every handler run).
    lines = chart_run.operator.log().splitlines()
    entries = [json.loads(line) for line in lines if line]
    assert all({"time", "level", "logger", "message"} <= entry.keys() for entry in entries)
    about = {(o["kind"], o["namespace"], o["name"]) for e in entries if (o := e.get("object"))}
    for task in EXAMPLE_TASKS:
        assert ("FineTuningTask", chart_run.tenant, task) in about, task


def test_trainers_log_json_lines_in_the_operators_format(
    chart_run: ChartRun, devcluster: ClusterInfo
) -> None:
    # No library output outside the log's format: no progress bars, no MLflow URL prints,
    # no GitPython notices.
    log = find_log(Path(devcluster.state_dir), chart_run.tenant, "minilm-first-t0-*")
    assert log is not None
    entries = [json.loads(line) for line in log.read_text().splitlines() if line]
    messages = [e["message"] for e in entries]
    assert any(m.startswith("ok ndcg@10=") for m in messages), messages
    assert any(m.startswith("MLflow run: http") for m in messages), messages
    assert any({"step", "loss", "samples_per_second"} <= e.keys() for e in entries), entries


def test_install_notes_say_what_to_apply_next(chart_run: ChartRun) -> None:
    notes = chart_run.notes
    assert f"The operator serves only these namespaces: {chart_run.tenant}." in notes
    assert "kubectl apply -n <namespace> -f examples/minimal/" in notes
    assert "create secret generic s3-credentials" in notes


def _jobs(kubectl: Kubectl, namespace: str) -> set[tuple[str, str]]:
    listing = json.loads(kubectl("get", "jobs", "-n", namespace, "-o", "json").stdout)
    return {(j["metadata"]["name"], j["metadata"]["uid"]) for j in listing["items"]}


def _versions(kubectl: Kubectl, namespace: str) -> dict[str, str]:
    listing = json.loads(
        kubectl("get", "tunedmodels,finetuningtasks", "-n", namespace, "-o", "json").stdout
    )
    return {
        i["metadata"]["name"]: i["metadata"]["resourceVersion"]
        for i in listing["items"]
        if i["metadata"]["name"] in EXAMPLE_TASKS + EXAMPLE_MODELS
    }


@pytest.mark.parametrize(("flag", "path"), EXAMPLE_SOURCES)
def test_reapplying_an_example_changes_and_starts_nothing(
    chart_run: ChartRun, kubectl: Kubectl, flag: str, path: str
) -> None:
    tenant, source = chart_run.tenant, str(EXAMPLES / path)
    jobs, versions = _jobs(kubectl, tenant), _versions(kubectl, tenant)
    diff = kubectl("diff", "-n", tenant, flag, source, check=False)
    assert diff.returncode == 0, diff.stdout + diff.stderr
    applied = kubectl("apply", "-n", tenant, flag, source).stdout.splitlines()
    assert applied and all(line.endswith(" unchanged") for line in applied), applied
    time.sleep(12)  # longer than the release's resync period (10 s)
    assert _jobs(kubectl, tenant) == jobs
    assert _versions(kubectl, tenant) == versions
