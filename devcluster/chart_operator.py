"""Run the operator on this machine as the Helm chart's Deployment runs it in a cluster:
the container's command and environment, authenticated as the release's ServiceAccount
(so only the chart's RBAC stands between the operator and the API).

devcluster runs no Deployment controller, so the Deployment itself starts nothing; the
demo and the chart's tests start this process in its place.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

from devcluster import build
from devcluster.state import ClusterInfo

REPO = Path(__file__).resolve().parents[1]
CHART = REPO / "helm" / "kubetune"
OPERATOR_COMMAND = ["python", "-m", "kubetune"]
LOCAL_ONLY_ENV = ("KUBECONFIG", "AWS_", "MLFLOW_", "KUBETUNE_", "DEVCLUSTER_")
"""Variables of this machine's shell that a pod would not have, so they must not leak
into the operator (it must find S3 and MLflow only through the chart's values)."""


def service_account_kubeconfig(
    info: ClusterInfo, namespace: str, account: str, path: Path, duration: str = "2h"
) -> Path:
    """A kubeconfig that authenticates as the ServiceAccount with a TokenRequest token,
    as the kubelet would mount it into the operator's pod."""
    result = subprocess.run(
        [str(build.KUBERNETES.path("kubectl")), "create", "token", account, "-n", namespace,
         f"--duration={duration}"],
        env={**os.environ, **info.env()},
        capture_output=True,
        text=True,
        check=False,
    )  # fmt: skip
    if result.returncode != 0:
        raise RuntimeError(f"no token for {namespace}/{account}: {result.stderr.strip()}")
    admin = json.loads(info.kubeconfig.read_text())
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "devcluster", "cluster": admin["clusters"][0]["cluster"]}],
        "users": [{"name": account, "user": {"token": result.stdout.strip()}}],
        "contexts": [
            {
                "name": account,
                "context": {"cluster": "devcluster", "user": account, "namespace": namespace},
            }
        ],
        "current-context": account,
    }
    path.write_text(json.dumps(config))
    path.chmod(0o600)
    return path


def operator_environment(
    deployment: dict[str, Any], namespace: str, kubeconfig: Path, pod_name: str = ""
) -> dict[str, str]:
    """The operator container's environment (the downward API's namespace and pod name
    resolved), on top of this machine's environment less what a pod would not have."""
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    if container["command"] != OPERATOR_COMMAND:
        raise ValueError(f"the chart's operator runs {container['command']}, not the package")
    fields = {
        "metadata.namespace": namespace,
        "metadata.name": pod_name or f"{deployment['metadata']['name']}-local",
    }
    env = {k: v for k, v in os.environ.items() if not k.startswith(LOCAL_ONLY_ENV)}
    for variable in container["env"]:
        field_path = variable.get("valueFrom", {}).get("fieldRef", {}).get("fieldPath")
        if "value" in variable:
            env[variable["name"]] = variable["value"]
        elif field_path in fields:
            env[variable["name"]] = fields[field_path]
        else:
            raise ValueError(f"cannot resolve {variable['name']} outside a pod: {variable}")
    env["KUBECONFIG"] = str(kubeconfig)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO / "operator"), str(REPO)])
    return env
