"""The trial Job: name, labels, owner, config, credentials and failure policy."""

from __future__ import annotations

import json

import pytest

from kubetune.api import CredentialsSecretRef, TrainerSpec
from kubetune.api.finetuningtask import RESERVED_ENV_NAMES
from kubetune.contract import (
    LOG_FORMAT_ENV,
    PROCESSES_ENV,
    TERMINATION_MESSAGE_ENV,
    TRIAL_CONFIG_ENV,
    TrialConfig,
)
from kubetune.decide.trialconfig import build_trial_config
from kubetune.locations import ResolvedStorage
from kubetune.manifests import gpu_count, job_manifest, job_name
from tests.operator.builders import task_spec

STORAGE = ResolvedStorage(
    bucket="models",
    endpoint="http://minio:9000",
    region="us-east-1",
    credentials_secret=CredentialsSecretRef(name="s3-creds"),
)


@pytest.mark.parametrize(
    ("task", "attempt", "index", "expected"),
    [
        ("tune", 1, 0, "tune-t0"),
        ("tune", 3, 12, "tune-a3-t12"),
        ("x" * 63, 1, 5, None),
        ("a" * 55 + "-" + "b" * 7, 2, 255, None),
    ],
)
def test_job_name(task, attempt, index, expected):
    name = job_name(task, attempt, index)
    if expected is not None:
        assert name == expected
    assert len(name) <= 63
    assert name[0].isalnum() and name[-1].isalnum()
    assert name == job_name(task, attempt, index)
    assert name != job_name(task, attempt, index + 1)


def config(spec=None) -> TrialConfig:
    return build_trial_config(
        spec=spec or task_spec(),
        namespace="team",
        task="tune",
        model="minilm",
        iteration=4,
        index=1,
        name="tune-t1",
        parameters={"learningRate": 5e-5, "batchSize": 64},
        starting_model="/models/all-MiniLM-L6-v2",
        checkpoint_uri="s3://models/team/minilm/runs/4/trial-1/model/",
        experiment="team/minilm/iteration-4",
    )


def manifest(trainer: TrainerSpec, log_format: str = "text") -> dict:
    return job_manifest(
        config=config(),
        task_uid="uid-1",
        model="minilm",
        attempt=1,
        trainer=trainer,
        image="trainer:1",
        storage=STORAGE,
        tracking_uri="http://mlflow:5000",
        log_format=log_format,
    )


def test_trial_config_carries_parameters_and_identity():
    trial = config()
    assert trial.hyperparameters.learning_rate == 5e-5 and trial.hyperparameters.batch_size == 64
    assert (trial.trial.iteration, trial.trial.index, trial.trial.lineage) == (4, 1, "minilm")
    assert trial.output.result_uri == "s3://models/team/minilm/runs/4/trial-1/result.json"
    assert trial.mlflow.experiment == "team/minilm/iteration-4"


def test_fixed_lora_and_loss_settings_reach_the_trainer():
    spec = task_spec(
        method={"type": "lora", "lora": {"r": 8}},
        loss={"name": "mnrl_symmetric", "scale": 30},
        hyperparameters={"fixed": {"epochs": 2, "precision": "bf16"}, "seed": 5},
    )
    trial = config(spec)
    assert (trial.method, trial.lora.r, trial.loss.name, trial.loss.scale) == (
        "lora",
        8,
        "mnrl_symmetric",
        30.0,
    )
    assert (trial.hyperparameters.epochs, trial.hyperparameters.seed) == (2, 5)


def test_job_manifest():
    trainer = TrainerSpec.model_validate(
        {
            "resources": {"limits": {"nvidia.com/gpu": 1, "memory": "16Gi"}},
            "nodeSelector": {"gpu": "h100"},
            "tolerations": [{"key": "gpu", "operator": "Exists", "effect": "NoSchedule"}],
            "serviceAccountName": "trainer",
            "env": [{"name": "HF_HUB_OFFLINE", "value": "1"}],
            "priorityClassName": "training",
            "queueName": "gpus",
            "activeDeadlineSeconds": 3600,
        }
    )
    job = manifest(trainer)
    meta = job["metadata"]
    assert (meta["name"], meta["namespace"]) == ("tune-t1", "team")
    assert meta["labels"] == {
        "app.kubernetes.io/managed-by": "kubetune",
        "kubetune.dev/task": "tune",
        "kubetune.dev/model": "minilm",
        "kubetune.dev/attempt": "1",
        "kubetune.dev/trial": "1",
        "kueue.x-k8s.io/queue-name": "gpus",
    }
    assert meta["ownerReferences"] == [
        {
            "apiVersion": "kubetune.dev/v1alpha1",
            "kind": "FineTuningTask",
            "name": "tune",
            "uid": "uid-1",
            "controller": True,
            "blockOwnerDeletion": True,
        }
    ]
    spec = job["spec"]
    assert "ttlSecondsAfterFinished" not in spec
    assert spec["activeDeadlineSeconds"] == 3600 and spec["backoffLimit"] == 0
    fail_job = spec["podFailurePolicy"]["rules"][0]
    assert fail_job["action"] == "FailJob" and 2 in fail_job["onExitCodes"]["values"]
    pod = spec["template"]["spec"]
    assert pod["restartPolicy"] == "Never"
    # The Pod Security Standards' restricted profile.
    assert pod["securityContext"] == {
        "runAsNonRoot": True,
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    assert pod["containers"][0]["securityContext"] == {
        "allowPrivilegeEscalation": False,
        "capabilities": {"drop": ["ALL"]},
    }
    assert pod["nodeSelector"] == {"gpu": "h100"} and pod["serviceAccountName"] == "trainer"
    assert pod["priorityClassName"] == "training" and pod["tolerations"][0]["key"] == "gpu"
    container = pod["containers"][0]
    assert container["command"] == ["python", "-m", "kubetune_trainer"]
    assert container["terminationMessagePolicy"] == "FallbackToLogsOnError"
    assert container["resources"] == {"limits": {"nvidia.com/gpu": "1", "memory": "16Gi"}}
    env = {e["name"]: e for e in container["env"]}
    assert TrialConfig.model_validate(json.loads(env[TRIAL_CONFIG_ENV]["value"])) == config()
    assert env["AWS_SECRET_ACCESS_KEY"] == {
        "name": "AWS_SECRET_ACCESS_KEY",
        "valueFrom": {"secretKeyRef": {"name": "s3-creds", "key": "AWS_SECRET_ACCESS_KEY"}},
    }
    assert env["AWS_ENDPOINT_URL_S3"]["value"] == "http://minio:9000"
    assert env["HF_HUB_OFFLINE"]["value"] == "1"
    # The trainer writes its one-line message where the container's field says.
    assert env[TERMINATION_MESSAGE_ENV]["value"] == container["terminationMessagePath"]
    assert env[PROCESSES_ENV]["value"] == "1"  # one per GPU; the task's env may say otherwise
    assert set(env) - {"HF_HUB_OFFLINE", PROCESSES_ENV} <= set(RESERVED_ENV_NAMES)


def test_no_secret_values_and_no_token_without_service_account():
    job = manifest(TrainerSpec())
    text = json.dumps(job)
    assert 'value": "AWS' not in text
    pod = job["spec"]["template"]["spec"]
    assert pod["automountServiceAccountToken"] is False
    assert "kueue.x-k8s.io/queue-name" not in job["metadata"]["labels"]


def test_operator_defaults_fill_pull_policy_and_trainer_account() -> None:
    from dataclasses import replace

    from kubetune.decide import CreateJob, decide_task
    from tests.operator.builders import DEFAULTS, NOW, model, task

    defaults = replace(
        DEFAULTS, trainer_image_pull_policy="IfNotPresent", trainer_service_account="trainer"
    )
    current, lineage = task(), model()
    for _ in range(5):
        decision = decide_task(current, lineage, [], defaults, NOW)
        jobs = [a.manifest for a in decision.actions if isinstance(a, CreateJob)]
        if jobs:
            break
        current = replace(current, status=decision.status)
        lineage = replace(
            lineage,
            status=lineage.status.model_copy(update={"last_iteration": decision.status.iteration}),
        )
    pod = jobs[0]["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == "trainer"
    assert pod["containers"][0]["imagePullPolicy"] == "IfNotPresent"
    # The trials of the iteration share one baseline evaluation, under its scratch prefix.
    env = {e["name"]: e.get("value") for e in pod["containers"][0]["env"]}
    trial = TrialConfig.model_validate_json(env[TRIAL_CONFIG_ENV])
    assert trial.output.baseline_uri == f"{current.status.scratch_uri}baseline.json"


@pytest.mark.parametrize(
    ("resources", "env", "expected"),
    [
        ({"limits": {"cpu": "2", "nvidia.com/gpu": 1}, "requests": {"cpu": "1"}}, [], "2"),
        ({"requests": {"cpu": "1500m"}}, [], "2"),
        ({"requests": {"cpu": "250m"}}, [], "1"),
        ({"requests": {"cpu": 3}}, [], "3"),
        ({"requests": {"cpu": "4"}}, [{"name": "OMP_NUM_THREADS", "value": "8"}], "8"),
        ({"limits": {"nvidia.com/gpu": 1}}, [], None),
        (None, [], None),
    ],
)
def test_threads_follow_the_cpu_limit_else_request(resources, env, expected) -> None:
    trainer = TrainerSpec.model_validate({"resources": resources, "env": env})
    container = manifest(trainer)["spec"]["template"]["spec"]["containers"][0]
    values = [e["value"] for e in container["env"] if e["name"] == "OMP_NUM_THREADS"]
    assert values == ([expected] if expected else [])


@pytest.mark.parametrize(
    ("resources", "gpus"),
    [
        ({"limits": {"nvidia.com/gpu": 2}}, 2),
        ({"limits": {"cpu": "4"}, "requests": {"amd.com/gpu": "4"}}, 4),
        ({"limits": {"nvidia.com/gpu": 1}}, 1),
        ({"requests": {"cpu": "2"}}, 0),
        (None, 0),
    ],
)
def test_a_trainer_with_several_gpus_runs_a_process_on_each_with_shared_memory(
    resources, gpus
) -> None:
    trainer = TrainerSpec.model_validate({"resources": resources})
    assert gpu_count(trainer) == gpus
    pod = manifest(trainer)["spec"]["template"]["spec"]
    env = {e["name"]: e.get("value") for e in pod["containers"][0]["env"]}
    assert env[PROCESSES_ENV] == str(max(1, gpus))
    mounts = pod["containers"][0].get("volumeMounts", [])
    if gpus > 1:
        assert pod["volumes"] == [{"name": "shm", "emptyDir": {"medium": "Memory"}}]
        assert mounts == [{"name": "shm", "mountPath": "/dev/shm"}]
    else:
        assert "volumes" not in pod and mounts == []


def test_the_tasks_env_sets_the_process_count_over_the_gpus() -> None:
    trainer = TrainerSpec.model_validate(
        {
            "resources": {"limits": {"nvidia.com/gpu": 4}},
            "env": [{"name": PROCESSES_ENV, "value": "2"}],
        }
    )
    env = manifest(trainer)["spec"]["template"]["spec"]["containers"][0]["env"]
    assert [e["value"] for e in env if e["name"] == PROCESSES_ENV] == ["2"]


@pytest.mark.parametrize(
    ("operator_format", "task_env", "expected"),
    [
        ("text", [], []),
        ("json", [], ["json"]),
        ("json", [{"name": LOG_FORMAT_ENV, "value": "text"}], ["text"]),
    ],
)
def test_trainers_log_in_the_operators_format_unless_the_task_says(
    operator_format: str, task_env: list[dict[str, str]], expected: list[str]
) -> None:
    trainer = TrainerSpec.model_validate({"env": task_env})
    env = manifest(trainer, operator_format)["spec"]["template"]["spec"]["containers"][0]["env"]
    assert [e["value"] for e in env if e["name"] == LOG_FORMAT_ENV] == expected
