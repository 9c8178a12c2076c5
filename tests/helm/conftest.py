"""Fixtures for tests of the Helm chart, the examples and the GitOps health check: the
helm binary, chart rendering, a release's ServiceAccount as a kubeconfig, and the
operator run as the chart's Deployment would run it.

The e2e suite's operator (admin credentials, every namespace) is held stopped while the
chart's operator runs (the package-scoped `chart_run`), so only the latter can make a
task succeed.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from devcluster import build
from devcluster.chart_operator import CHART, operator_environment, service_account_kubeconfig
from devcluster.state import ClusterInfo, free_port
from tests.conftest import Kubectl
from tests.e2e.fixtures import DATA_BUCKET, OperatorProcess

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "examples"
KUBE_VERSION = "1.36.3"
"""The devcluster's version; `helm template` otherwise assumes v1.20 (below kubeVersion)."""


class Helm:
    """helm from the devcluster's cache, pointed at the test cluster when there is one."""

    def __init__(self, env: dict[str, str]) -> None:
        self.binary = str(build.HELM.path("helm"))
        self.env = {**os.environ, **env}

    def __call__(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [self.binary, *args], env=self.env, capture_output=True, text=True, timeout=180
        )
        if check and result.returncode != 0:
            raise AssertionError(f"helm {' '.join(args)} failed: {result.stderr}")
        return result

    def template(self, *set_args: str, namespace: str = "kubetune-system") -> str:
        return self(
            "template", "kubetune", str(CHART), "--namespace", namespace,
            "--kube-version", KUBE_VERSION, *set_args,
        ).stdout  # fmt: skip


def documents(text: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(text) if d]


def find(objects: list[dict[str, Any]], kind: str, namespace: str | None = None) -> list[dict]:
    return [
        o
        for o in objects
        if o["kind"] == kind and (namespace is None or o["metadata"].get("namespace") == namespace)
    ]


def values_args(values: dict[str, Any]) -> list[str]:
    """`--set-json` arguments, one per top-level key."""
    args: list[str] = []
    for key, value in values.items():
        args += ["--set-json", f"{key}={json.dumps(value)}"]
    return args


@pytest.fixture(scope="session")
def helm_offline() -> Helm:
    """helm for commands that need no cluster (lint, template)."""
    return Helm({})


@pytest.fixture(scope="session")
def helm(devcluster: ClusterInfo) -> Helm:
    return Helm(devcluster.env())


@dataclass(frozen=True)
class Release:
    name: str
    namespace: str

    @property
    def service_account(self) -> str:
        return f"{self.name}-kubetune"


def operator_from_deployment(
    deployment: dict[str, Any],
    release: Release,
    kubeconfig: Path,
    log_path: Path,
    info: ClusterInfo,
) -> OperatorProcess:
    """`python -m kubetune` with exactly the container's command and environment,
    authenticated as the release's ServiceAccount."""
    process = OperatorProcess(info, log_path)
    process.env = operator_environment(deployment, release.namespace, kubeconfig)
    return process


def free_ports(count: int) -> list[int]:
    ports: set[int] = set()
    while len(ports) < count:
        ports.add(free_port())
    return sorted(ports)


EXAMPLES_BUCKET = "kubetune-examples"
MODELS_BUCKET = "kubetune-models"
EXAMPLE_DATA = {
    "models/minilm/": "models/all-MiniLM-L6-v2/",
    "debian/train.jsonl.gz": "datasets/debian/train.jsonl.gz",
    "debian/dev.jsonl": "datasets/debian/dev.jsonl",
}
"""Keys of the e2e data bucket -> where the examples expect them."""
EXAMPLE_SOURCES = (
    ("-f", "minimal"),
    ("-f", "full"),
    ("-k", "kustomize/overlays/ci"),
)
"""Every example as `kubectl apply` takes it."""


def stage_example_data(s3, data_bucket: str) -> None:  # type: ignore[no-untyped-def]
    """Copy the e2e model and data to the URIs written in examples/."""
    for bucket in (EXAMPLES_BUCKET, MODELS_BUCKET):
        with contextlib.suppress(s3.exceptions.BucketAlreadyOwnedByYou):
            s3.create_bucket(Bucket=bucket)
    for source, target in EXAMPLE_DATA.items():
        pages = s3.get_paginator("list_objects_v2").paginate(Bucket=data_bucket, Prefix=source)
        for page in pages:
            for item in page.get("Contents", []):
                key = target + item["Key"][len(source) :]
                s3.copy_object(
                    Bucket=EXAMPLES_BUCKET,
                    Key=key,
                    CopySource={"Bucket": data_bucket, "Key": item["Key"]},
                )


@dataclass
class ChartRun:
    """A release in namespaced mode whose operator, running as the release's
    ServiceAccount, took every example (and a few failure scenarios) to the end."""

    release: Release
    tenant: str
    other: str
    kubeconfig: Path
    manifest: list[dict[str, Any]]
    operator: OperatorProcess
    health_port: int
    metrics_port: int
    notes: str
    """What `helm install` printed (NOTES.txt)."""
    snapshots: list[dict[str, Any]]
    """Every distinct version of the tenant's TunedModels and FineTuningTasks seen."""


def _credentials_secret(kubectl: Kubectl, namespace: str, name: str, info: ClusterInfo) -> None:
    kubectl(
        "create", "secret", "generic", name, "-n", namespace,
        f"--from-literal=AWS_ACCESS_KEY_ID={info.s3_access_key}",
        f"--from-literal=AWS_SECRET_ACCESS_KEY={info.s3_secret_key}",
    )  # fmt: skip


MIG_SLICE = "nvidia.com/mig-1g.10gb"
ABSENT_IMAGE = "localhost/kubetune-absent:none"
NO_MIG_SLICES = {
    "apiVersion": "v1",
    "kind": "ResourceQuota",
    "metadata": {"name": "no-mig-slices"},
    "spec": {"hard": {f"requests.{MIG_SLICE}": "0"}},
}
"""The tenant's quota: whole GPUs (the examples ask for one), but no MIG slice. Quota
admission enforces it once the quota controller has filled in its status."""


def scenario_objects() -> list[dict[str, Any]]:
    """Tasks that end in the other health states, cheaply (one runs a failing trial)."""
    minimal = yaml.safe_load((EXAMPLES / "minimal" / "finetuningtask.yaml").read_text())

    def task(name: str, model: str, **spec: Any) -> dict[str, Any]:
        body = json.loads(json.dumps(minimal))
        body["metadata"]["name"] = name
        body["spec"]["modelRef"]["name"] = model
        body["spec"].update(spec)
        return dict(body)

    def model(name: str, **spec: Any) -> dict[str, Any]:
        base_model = f"s3://{EXAMPLES_BUCKET}/{EXAMPLE_DATA['models/minilm/']}"
        return {
            "apiVersion": "kubetune.dev/v1alpha1",
            "kind": "TunedModel",
            "metadata": {"name": name},
            "spec": {"baseModel": base_model, **spec},
        }

    # Their own lineages: tasks of one lineage reserve its iteration numbers in turn.
    return [
        model("health"),
        task("health-suspended", "health", suspend=True),
        task("health-no-model", "does-not-exist"),
        model("health-bad-secret", storage={"credentialsSecret": {"name": "absent"}}),
        task("health-bad-secret", "health-bad-secret"),
        task(
            "health-failed",
            "health",
            dataset={"train": [f"s3://{EXAMPLES_BUCKET}/datasets/missing.jsonl"]},
        ),
        # A trial that asks for a MIG slice where the namespace's quota (`NO_MIG_SLICES`)
        # allows none: the Job controller is refused its Pod, and the task says so.
        model("health-waiting"),
        task("health-waiting", "health-waiting", trainer={"resources": {"limits": {MIG_SLICE: 1}}}),
        # The same, with a deadline: the trial fails, naming what it waited for.
        model("health-deadline"),
        task(
            "health-deadline",
            "health-deadline",
            trainer={"resources": {"limits": {MIG_SLICE: 1}}, "activeDeadlineSeconds": 40},
        ),
        # A trainer image this machine does not have: its Pod waits, and the task says why.
        model("health-no-image"),
        task("health-no-image", "health-no-image", trainer={"image": ABSENT_IMAGE}),
    ]


def _condition(body: dict[str, Any], type_: str) -> dict[str, Any]:
    for condition in body.get("status", {}).get("conditions", []):
        if condition["type"] == type_:
            return dict(condition)
    return {}


def _settled(task: dict[str, Any]) -> bool:
    """The state each task of the run ends in."""
    name, status = task["metadata"]["name"], task.get("status", {})
    if name == "health-suspended":
        return _condition(task, "Running").get("reason") == "Suspended"
    if name == "health-no-model":
        return _condition(task, "InputsReady").get("reason") == "ModelNotFound"
    if name == "health-bad-secret":
        return _condition(task, "InputsReady").get("reason") == "ActionFailed"
    if name == "health-waiting":
        return [t.get("reason") for t in status.get("trials", [])] == ["FailedCreate"]
    if name == "health-no-image":
        return [t.get("reason") for t in status.get("trials", [])] == ["ErrImageNeverPull"]
    return status.get("phase") in ("Succeeded", "Failed", "Canceled")


@pytest.fixture(scope="package")
def chart_run(
    request: pytest.FixtureRequest,
    devcluster: ClusterInfo,
    kubectl: Kubectl,
    helm: Helm,
    s3,  # type: ignore[no-untyped-def]
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[ChartRun]:
    shared: OperatorProcess = request.getfixturevalue("operator")
    shared.stop()
    suffix = uuid.uuid4().hex[:6]
    release = Release(f"kt-{suffix}", f"kubetune-system-{suffix}")
    tenant, other = f"tenant-{suffix}", f"other-{suffix}"
    for namespace in (release.namespace, tenant, other):
        kubectl("create", "namespace", namespace)
    request.getfixturevalue("e2e_data")
    stage_example_data(s3, DATA_BUCKET)
    _credentials_secret(kubectl, tenant, "s3-credentials", devcluster)
    _credentials_secret(kubectl, other, "s3-credentials", devcluster)
    health_port, metrics_port = free_ports(2)
    values = {
        "watch": {"namespaces": [tenant]},
        "operator": {
            "healthPort": health_port,
            "resyncSeconds": 10,
            "logLevel": "DEBUG",
            "logFormat": "json",
        },
        "metrics": {"port": metrics_port},
        "storage": {
            "bucket": MODELS_BUCKET,
            "endpoint": devcluster.s3_endpoint,
            "credentialsSecret": "s3-credentials",
        },
        "mlflow": {"trackingUri": devcluster.mlflow_uri},
        "trainer": {"image": {"repository": "kubetune-trainer", "tag": "e2e"}},
    }
    notes = helm(
        "install", release.name, str(CHART), "-n", release.namespace, *values_args(values)
    ).stdout
    manifest = documents(helm("get", "manifest", release.name, "-n", release.namespace).stdout)
    work = tmp_path_factory.mktemp("chart-run")
    kubeconfig = service_account_kubeconfig(
        devcluster, release.namespace, release.service_account, work / "kubeconfig"
    )
    process = operator_from_deployment(
        find(manifest, "Deployment")[0], release, kubeconfig, work / "operator.log", devcluster
    )
    process.start()
    run = ChartRun(
        release, tenant, other, kubeconfig, manifest, process, health_port, metrics_port, notes, []
    )
    try:
        kubectl("apply", "-n", tenant, "-f", "-", input=yaml.safe_dump(NO_MIG_SLICES))
        hard = f"requests.{MIG_SLICE}".replace(".", "\\.")
        kubectl(
            "wait",
            "-n",
            tenant,
            f"--for=jsonpath={{.status.hard.{hard}}}=0",
            "resourcequota/no-mig-slices",
            "--timeout=60s",
        )
        for flag, path in EXAMPLE_SOURCES:
            kubectl("apply", "-n", tenant, flag, str(EXAMPLES / path))
        kubectl("apply", "-n", tenant, "-f", "-", input=yaml.safe_dump_all(scenario_objects()))
        _follow(kubectl, run, timeout=900)
        yield run
    finally:
        process.stop()
        helm("uninstall", release.name, "-n", release.namespace, check=False)
        for namespace in (tenant, other, release.namespace):
            kubectl("delete", "namespace", namespace, "--wait=false", check=False)
        shared.start()
        shared.wait_serving()


def _follow(kubectl: Kubectl, run: ChartRun, timeout: float) -> None:
    """Record every version of the tenant's objects until every task has settled."""
    seen: set[tuple[str, str, str]] = set()
    deadline = time.monotonic() + timeout
    tasks: list[dict[str, Any]] = []
    while time.monotonic() < deadline:
        listing = json.loads(
            kubectl("get", "tunedmodels,finetuningtasks", "-n", run.tenant, "-o", "json").stdout
        )
        for item in listing["items"]:
            meta = item["metadata"]
            key = (item["kind"], meta["name"], meta["resourceVersion"])
            if key not in seen:
                seen.add(key)
                run.snapshots.append(item)
        tasks = [i for i in listing["items"] if i["kind"] == "FineTuningTask"]
        promoted = [
            i
            for i in listing["items"]
            if i["kind"] == "TunedModel" and i.get("status", {}).get("currentIteration")
        ]
        if (
            tasks
            and all(_settled(t) for t in tasks)
            and all(_condition(m, "Ready").get("status") == "True" for m in promoted)
        ):
            return
        if run.operator.process is not None and run.operator.process.poll() is not None:
            break
        time.sleep(1)
    unsettled = {t["metadata"]["name"]: t.get("status") for t in tasks if not _settled(t)}
    raise AssertionError(f"tasks did not settle: {unsettled}\n{run.operator.log()[-5000:]}")
