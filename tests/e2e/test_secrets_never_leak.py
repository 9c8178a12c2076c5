"""The S3 credentials reach the trainer only through `secretKeyRef`: after a task has run
through the operator (one trial succeeding, one failing), neither key appears anywhere a
user or another tenant could read it: the custom resources (spec and status), the
namespace's Events, Jobs and Pods, the operator's log, the trainers' logs, or MLflow
(experiment tags, and every run's parameters, tags and metric names). The operator reads
the Secret at most once per `STORAGE_CACHE_SECONDS`, not once per trial and launch."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from kubernetes import client
from mlflow.tracking import MlflowClient

from devcluster.audit import events
from devcluster.nodeagent.pods import pods_root
from devcluster.state import ClusterInfo
from kubetune.clients.kube import USER_AGENT
from kubetune.effects import STORAGE_CACHE_SECONDS
from tests.conftest import Kubectl
from tests.e2e.fixtures import (
    CREDENTIALS_SECRET,
    E2eData,
    OperatorProcess,
    apply,
    fine_tuning_task,
    get,
    tuned_model,
)
from tests.support import wait_for

CREDENTIAL_VARIABLES = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")


def _leaks(texts: dict[str, str], secrets: dict[str, str]) -> list[str]:
    return [
        f"{secret} in {where}"
        for where, text in texts.items()
        for secret, value in secrets.items()
        if value in text
    ]


def _mlflow_texts(tracking_uri: str, experiment_id: str) -> dict[str, str]:
    tracking = MlflowClient(tracking_uri)
    experiment = tracking.get_experiment(experiment_id)
    texts = {f"MLflow experiment {experiment.name} tags": json.dumps(experiment.tags)}
    runs = tracking.search_runs([experiment_id])
    assert runs, f"no MLflow runs in experiment {experiment_id}"
    for run in runs:
        data = run.data
        texts[f"MLflow run {run.info.run_name}"] = json.dumps(
            {"params": data.params, "tags": data.tags, "metrics": sorted(data.metrics)}
        )
    return texts


def _credential_env_is_referenced(job: dict[str, Any]) -> list[str]:
    """Problems with how a Job's containers get the credentials (there must be none)."""
    problems = []
    for container in job["spec"]["template"]["spec"]["containers"]:
        env = {e["name"]: e for e in container.get("env") or []}
        for name in CREDENTIAL_VARIABLES:
            entry = env.get(name)
            if (
                entry is None
                or "value" in entry
                or "secretKeyRef" not in entry.get("valueFrom", {})
            ):
                problems.append(f"{job['metadata']['name']}/{container['name']} {name}: {entry}")
    return problems


def _secret_reads(state_dir: Path, namespace: str, name: str, before: datetime) -> int:
    """The operator's GETs of the Secret that reached the apiserver before `before`."""
    return sum(
        1
        for event in events(state_dir)
        if event.get("stage") == "ResponseComplete"
        and event.get("userAgent") == USER_AGENT
        and event.get("verb") == "get"
        and event.get("objectRef", {}).get("resource") == "secrets"
        and event["objectRef"].get("namespace") == namespace
        and event["objectRef"].get("name") == name
        and datetime.fromisoformat(event["requestReceivedTimestamp"]) < before
    )


def test_credentials_never_leave_the_secret(
    kubectl: Kubectl,
    tenant: str,
    e2e_data: E2eData,
    operator: OperatorProcess,
    devcluster: ClusterInfo,
    batch: client.BatchV1Api,
    core: client.CoreV1Api,
) -> None:
    task = fine_tuning_task("leaks", "minilm", e2e_data, [1e-4])
    # fp16 needs a CUDA device: that trial fails with a message, the other succeeds.
    task["spec"]["hyperparameters"]["searchSpace"].append(
        {"name": "precision", "categorical": {"values": ["fp32", "fp16"]}}
    )
    apply(kubectl, tenant, tuned_model("minilm", e2e_data.base_model), task)
    # The promotion deletes the losing trials' Jobs: record every Job while it exists.
    jobs: dict[str, dict[str, Any]] = {}

    def finished() -> dict[str, Any] | None:
        for job in batch.list_namespaced_job(tenant).items:
            jobs.setdefault(job.metadata.name, batch.api_client.sanitize_for_serialization(job))
        task = get(kubectl, tenant, "finetuningtask", "leaks")
        return task if task.get("status", {}).get("phase") in ("Succeeded", "Failed") else None

    status = wait_for(finished, "the task to finish", timeout=600, interval=1)["status"]
    assert status["phase"] == "Succeeded", status
    assert {t["phase"] for t in status["trials"]} == {"Succeeded", "Failed"}, status["trials"]
    secrets = {
        "the access key": devcluster.s3_access_key,
        "the secret key": devcluster.s3_secret_key,
    }

    texts: dict[str, str] = {}
    for kind in ("finetuningtasks", "tunedmodels", "events", "jobs", "pods"):
        texts[kind] = kubectl("get", kind, "-n", tenant, "-o", "json").stdout
    texts["operator log"] = operator.log()
    trainer_logs = sorted(pods_root(Path(devcluster.state_dir)).glob(f"{tenant}_*/container.log"))
    assert len(trainer_logs) >= 2, trainer_logs  # both trials ran and logged
    for path in trainer_logs:
        texts[f"trainer log {path.parent.name}"] = path.read_text(errors="replace")
    experiment_id = status["mlflow"]["experimentId"]
    texts |= _mlflow_texts(devcluster.mlflow_uri, experiment_id)

    assert not _leaks(texts, secrets), _leaks(texts, secrets)
    # Loads of the cached credentials are at least STORAGE_CACHE_SECONDS apart.
    read_at = datetime.now(UTC)
    created = datetime.fromisoformat(
        get(kubectl, tenant, "finetuningtask", "leaks")["metadata"]["creationTimestamp"]
    )
    reads = _secret_reads(Path(devcluster.state_dir), tenant, CREDENTIALS_SECRET, read_at)
    assert 1 <= reads <= (read_at - created).total_seconds() // STORAGE_CACHE_SECONDS + 1, reads
    # Not vacuous: the same search finds both keys where they belong, in the Secret.
    stored = core.read_namespaced_secret(CREDENTIALS_SECRET, tenant).data
    decoded = {key: base64.b64decode(value).decode() for key, value in stored.items()}
    assert len(_leaks({"the Secret": json.dumps(decoded)}, secrets)) == 2

    assert sorted(jobs) == ["leaks-t0", "leaks-t1"], sorted(jobs)
    texts = {f"Job {name}": json.dumps(job) for name, job in jobs.items()}
    assert not _leaks(texts, secrets), _leaks(texts, secrets)
    problems = [p for job in jobs.values() for p in _credential_env_is_referenced(job)]
    assert not problems, problems
