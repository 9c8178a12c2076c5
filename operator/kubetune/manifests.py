"""The Kubernetes Job that runs one trial, as a pure function of the trial.

Names are deterministic (`<task>-t<index>`, or `<task>-a<attempt>-t<index>` after a
restart), so creating a Job is idempotent and a restarted operator finds its Jobs again.
The trial config travels as JSON in `KUBETUNE_TRIAL_CONFIG`; S3 credentials only as
`secretKeyRef` environment variables. Exit codes the trainer uses for failures that a retry
would repeat end the Job at once through its podFailurePolicy.
"""

from __future__ import annotations

import hashlib
import math
from decimal import Decimal
from typing import Any

from kubernetes.utils.quantity import parse_quantity

from kubetune.api import API_VERSION, FINE_TUNING_TASK, TrainerSpec
from kubetune.contract import (
    DEFAULT_TERMINATION_MESSAGE_PATH,
    EXIT_INTERNAL_ERROR,
    EXIT_OK,
    EXIT_REASONS,
    LOG_FORMAT_ENV,
    PROCESSES_ENV,
    RETRYABLE_EXIT_CODES,
    TERMINATION_MESSAGE_ENV,
    TRIAL_CONFIG_ENV,
    TrialConfig,
)
from kubetune.locations import ResolvedStorage

LABEL_TASK = "kubetune.dev/task"
LABEL_MODEL = "kubetune.dev/model"
LABEL_TRIAL = "kubetune.dev/trial"
LABEL_ATTEMPT = "kubetune.dev/attempt"
LABEL_MANAGED_BY = "app.kubernetes.io/managed-by"
LABEL_KUEUE_QUEUE = "kueue.x-k8s.io/queue-name"
THREADS_ENV = "OMP_NUM_THREADS"
SHARED_MEMORY_VOLUME = "shm"
CONTAINER = "trainer"
COMMAND = ("python", "-m", "kubetune_trainer")
NON_RETRYABLE_EXIT_CODES = tuple(
    sorted(set(EXIT_REASONS) - {EXIT_OK, EXIT_INTERNAL_ERROR} - RETRYABLE_EXIT_CODES)
)
"""Bad input and training failures: a retried Pod would fail the same way."""
_MAX_NAME = 63


def job_name(task: str, attempt: int, index: int) -> str:
    """The trial's Job name: a DNS label of at most 63 characters, unique per task,
    attempt and index; long task names are cut and made unique with a hash."""
    suffix = f"-t{index}" if attempt <= 1 else f"-a{attempt}-t{index}"
    if len(task) + len(suffix) <= _MAX_NAME:
        return task + suffix
    digest = hashlib.sha256(task.encode()).hexdigest()[:8]
    # A task name is a DNS subdomain: the cut may end in a dot, which must not be
    # followed by the hyphen before the digest (`a.-1f2e...` is not a valid name).
    head = task[: _MAX_NAME - len(suffix) - len(digest) - 1].rstrip("-.")
    return f"{head}-{digest}{suffix}"


def job_labels(task: str, model: str, attempt: int, index: int) -> dict[str, str]:
    return {
        LABEL_MANAGED_BY: "kubetune",
        LABEL_TASK: task,
        LABEL_MODEL: model,
        LABEL_ATTEMPT: str(attempt),
        LABEL_TRIAL: str(index),
    }


def _storage_env(storage: ResolvedStorage) -> list[dict[str, Any]]:
    env: list[dict[str, Any]] = []
    secret = storage.credentials_secret
    if secret is not None:
        for variable, key in (
            ("AWS_ACCESS_KEY_ID", secret.access_key_id_key),
            ("AWS_SECRET_ACCESS_KEY", secret.secret_access_key_key),
        ):
            env.append(
                {"name": variable, "valueFrom": {"secretKeyRef": {"name": secret.name, "key": key}}}
            )
    if storage.endpoint:
        env.append({"name": "AWS_ENDPOINT_URL_S3", "value": storage.endpoint})
    if storage.region:
        env.append({"name": "AWS_DEFAULT_REGION", "value": storage.region})
    return env


def cpu_threads(trainer: TrainerSpec) -> int | None:
    """The trainer's CPU thread count: its CPU limit, else its request, rounded up; None
    when it has neither. PyTorch otherwise starts a thread per core of the node, and in a
    Pod given fewer cores those threads mostly wait for each other."""
    resources = trainer.resources
    for values in (resources.limits, resources.requests) if resources else ():
        if values and "cpu" in values:
            cores: Decimal = parse_quantity(values["cpu"])
            return max(1, math.ceil(cores))
    return None


def gpu_count(trainer: TrainerSpec) -> int:
    """The GPUs the trainer container asks for (any `<vendor>/gpu` resource, its limit else
    its request); the trainer runs one process per GPU it is given."""
    resources = trainer.resources
    for values in (resources.limits, resources.requests) if resources else ():
        gpus = [quantity for name, quantity in (values or {}).items() if name.endswith("/gpu")]
        if gpus:
            return sum(math.ceil(parse_quantity(quantity)) for quantity in gpus)
    return 0


def _pod_spec(
    config: TrialConfig,
    trainer: TrainerSpec,
    image: str,
    storage: ResolvedStorage,
    tracking_uri: str | None,
    log_format: str,
) -> dict[str, Any]:
    env = [e.to_json() for e in trainer.env or []]
    if log_format != "text" and all(e["name"] != LOG_FORMAT_ENV for e in env):
        env.append({"name": LOG_FORMAT_ENV, "value": log_format})
    threads = cpu_threads(trainer)
    if threads is not None and all(e["name"] != THREADS_ENV for e in env):
        env.append({"name": THREADS_ENV, "value": str(threads)})
    if all(e["name"] != PROCESSES_ENV for e in env):
        # what Kubernetes gave the Pod, not what its container runtime happens to show it
        env.append({"name": PROCESSES_ENV, "value": str(max(1, gpu_count(trainer)))})
    env.append({"name": TRIAL_CONFIG_ENV, "value": config.model_dump_json(exclude_none=True)})
    # Said outright rather than left to the trainer's fallback (the default path when it is
    # writable): a runtime that maps the path elsewhere, as devcluster's node agent does,
    # rewrites this value, so the trainer's one-line message is what the trial reports.
    env.append({"name": TERMINATION_MESSAGE_ENV, "value": DEFAULT_TERMINATION_MESSAGE_PATH})
    env += _storage_env(storage)
    if tracking_uri:
        env.append({"name": "MLFLOW_TRACKING_URI", "value": tracking_uri})
    container: dict[str, Any] = {
        "name": CONTAINER,
        "image": image,
        "command": list(COMMAND),
        "env": env,
        "terminationMessagePath": DEFAULT_TERMINATION_MESSAGE_PATH,
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "capabilities": {"drop": ["ALL"]},
        },
    }
    if trainer.image_pull_policy:
        container["imagePullPolicy"] = trainer.image_pull_policy
    if trainer.resources is not None:
        # Quantities travel as strings, as the API serialises them (`1` -> "1").
        container["resources"] = {
            kind: {name: str(quantity) for name, quantity in values.items()}
            for kind, values in trainer.resources.to_json().items()
        }
    pod: dict[str, Any] = {
        "restartPolicy": "Never",
        "containers": [container],
        # The Pod Security Standards' "restricted" profile, with the container's settings:
        # the trainer image's numeric user (1000) passes runAsNonRoot.
        "securityContext": {"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}},
    }
    # The trainer never calls the Kubernetes API, whichever ServiceAccount it runs as.
    pod["automountServiceAccountToken"] = False
    if gpu_count(trainer) > 1:
        # one process per GPU, and NCCL between them uses shared memory, of which a
        # container's own /dev/shm has only 64 MiB
        pod["volumes"] = [{"name": SHARED_MEMORY_VOLUME, "emptyDir": {"medium": "Memory"}}]
        container["volumeMounts"] = [{"name": SHARED_MEMORY_VOLUME, "mountPath": "/dev/shm"}]
    if trainer.service_account_name:
        pod["serviceAccountName"] = trainer.service_account_name
    if trainer.node_selector:
        pod["nodeSelector"] = dict(trainer.node_selector)
    if trainer.tolerations:
        pod["tolerations"] = [t.to_json() for t in trainer.tolerations]
    if trainer.priority_class_name:
        pod["priorityClassName"] = trainer.priority_class_name
    return pod


def job_manifest(
    *,
    config: TrialConfig,
    task_uid: str,
    model: str,
    attempt: int,
    trainer: TrainerSpec,
    image: str,
    storage: ResolvedStorage,
    tracking_uri: str | None = None,
    log_format: str = "text",
) -> dict[str, Any]:
    """The batch/v1 Job for one trial; its name, namespace and task come from
    `config.trial`, which names the Job."""
    trial = config.trial
    labels = job_labels(trial.task, model, attempt, trial.index)
    if trainer.queue_name:
        labels[LABEL_KUEUE_QUEUE] = trainer.queue_name
    spec: dict[str, Any] = {
        "backoffLimit": trainer.backoff_limit,
        "podFailurePolicy": {
            "rules": [
                {
                    "action": "FailJob",
                    "onExitCodes": {
                        "containerName": CONTAINER,
                        "operator": "In",
                        "values": list(NON_RETRYABLE_EXIT_CODES),
                    },
                },
                {
                    "action": "Ignore",
                    "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}],
                },
            ]
        },
        "template": {
            "metadata": {"labels": dict(labels)},
            "spec": _pod_spec(config, trainer, image, storage, tracking_uri, log_format),
        },
    }
    if trainer.active_deadline_seconds:
        spec["activeDeadlineSeconds"] = trainer.active_deadline_seconds
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            "name": trial.name,
            "namespace": trial.namespace,
            "labels": labels,
            "ownerReferences": [
                {
                    "apiVersion": API_VERSION,
                    "kind": FINE_TUNING_TASK.kind,
                    "name": trial.task,
                    "uid": task_uid,
                    "controller": True,
                    "blockOwnerDeletion": True,
                }
            ],
        },
        "spec": spec,
    }
