"""The operator image, built from operator/Dockerfile with buildah and run as the Helm
chart's Deployment runs it: its entrypoint, as its non-root user, against the devcluster's
kube-apiserver, watching one namespace."""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from devcluster import images
from devcluster.chart_operator import OPERATOR_COMMAND
from devcluster.state import ClusterInfo, free_port
from tests.conftest import Kubectl
from tests.e2e.fixtures import CREDENTIALS_SECRET, STORAGE_BUCKET, apply, get, tuned_model
from tests.support import built_image, secret_like_env, wait_for

KUBECONFIG_PATH = "/run/kubetune/kubeconfig"


@pytest.fixture(scope="module")
def operator_image(tmp_path_factory: pytest.TempPathFactory) -> str:
    return built_image(images.OPERATOR, tmp_path_factory.mktemp("image") / "build.log")


def test_the_image_runs_the_chart_s_command_as_a_non_root_user(operator_image: str) -> None:
    config = images.image_config(operator_image)
    assert config["Entrypoint"] == OPERATOR_COMMAND
    assert config["User"] == "65532:65532"
    env = dict(variable.split("=", 1) for variable in config["Env"])
    assert env["MPLCONFIGDIR"].startswith("/tmp/")  # the user has no home to write in
    assert secret_like_env(config) == []
    # No pip and no torch: the runtime stage has only the operator's environment.
    probe = "import importlib.util as u; print(u.find_spec('pip'), u.find_spec('torch'))"
    completed = images.run_in_image(operator_image, ["python", "-c", probe], {})
    assert (completed.returncode, completed.stdout.split()) == (0, ["None", "None"])


def self_contained(kubeconfig: dict[str, Any]) -> dict[str, Any]:
    """The kubeconfig with its CA certificate inline: the container sees no host paths."""
    for entry in kubeconfig["clusters"]:
        cluster = entry["cluster"]
        if "certificate-authority" in cluster:
            ca = Path(cluster.pop("certificate-authority")).read_bytes()
            cluster["certificate-authority-data"] = base64.b64encode(ca).decode()
    return kubeconfig


@dataclass(frozen=True)
class ImageOperator:
    process: subprocess.Popen[bytes]
    log_path: Path
    liveness_port: int

    def healthy(self) -> bool:
        if self.process.poll() is not None:
            raise AssertionError(
                f"the operator exited {self.process.returncode}:\n"
                f"{self.log_path.read_text(errors='replace')[-4000:]}"
            )
        url = f"http://127.0.0.1:{self.liveness_port}/healthz"
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                return bool(response.status == 200)
        except (urllib.error.URLError, ConnectionError):
            return False


@pytest.fixture
def image_operator(
    operator_image: str, devcluster: ClusterInfo, crds: None, namespace: str, tmp_path: Path
) -> Iterator[ImageOperator]:
    """The operator image running against the devcluster, watching `namespace`."""
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(json.dumps(self_contained(json.loads(devcluster.kubeconfig.read_text()))))
    kubeconfig.chmod(0o644)  # the image's user is not this machine's
    liveness_port = free_port()
    env = {
        "KUBECONFIG": KUBECONFIG_PATH,
        "KUBETUNE_NAMESPACES": namespace,
        "KUBETUNE_LIVENESS_ENDPOINT": f"http://127.0.0.1:{liveness_port}/healthz",
        "KUBETUNE_METRICS_PORT": str(free_port()),
        "KUBETUNE_S3_BUCKET": STORAGE_BUCKET,
        "KUBETUNE_S3_ENDPOINT": devcluster.s3_endpoint,
        "KUBETUNE_S3_CREDENTIALS_SECRET": CREDENTIALS_SECRET,
        "KUBETUNE_MLFLOW_TRACKING_URI": devcluster.mlflow_uri,
    }
    log_path = tmp_path / "operator.log"
    with images.container_of(operator_image) as container, log_path.open("wb") as log:
        command = images.run_command(
            operator_image,
            container,
            OPERATOR_COMMAND,
            env,
            mounts=[images.Mount(kubeconfig, KUBECONFIG_PATH)],
        )
        process = subprocess.Popen(
            command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        try:
            yield ImageOperator(process, log_path, liveness_port)
        finally:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
                try:
                    process.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    os.killpg(process.pid, signal.SIGKILL)
                    process.wait()


def test_the_operator_in_its_image_reconciles_a_tuned_model(
    image_operator: ImageOperator, kubectl: Kubectl, namespace: str
) -> None:
    wait_for(image_operator.healthy, "the operator's liveness endpoint", timeout=120)
    apply(kubectl, namespace, tuned_model("from-image", "s3://models/base/"))

    def reconciled() -> dict[str, Any] | None:
        assert image_operator.healthy()
        status: dict[str, Any] = get(kubectl, namespace, "tunedmodel", "from-image").get(
            "status", {}
        )
        return status if status.get("observedGeneration") == 1 else None

    status = wait_for(reconciled, "the TunedModel's status", timeout=120)
    assert status["conditions"], status
    # Nothing in the image wants to write where its user may not (its home, the root).
    assert "Permission denied" not in image_operator.log_path.read_text(errors="replace")
