"""A second devcluster whose pods run the stand-in trainer (`bench/standin`: the trainer's
contract, a 1-5 s sleep instead of training), for faults that need many tasks at once or
that break the control plane itself, away from the suite's shared cluster."""

from __future__ import annotations

import base64
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import pytest
import yaml

from devcluster import cluster
from devcluster.state import ClusterInfo
from tests.conftest import Kubectl
from tests.e2e.fixtures import CREDENTIALS_SECRET, STORAGE_BUCKET, OperatorProcess

REPO = Path(__file__).resolve().parents[2]
STANDIN = REPO / "bench" / "standin"
INPUTS = f"s3://{STORAGE_BUCKET}/inputs"


@dataclass
class StandinCluster:
    info: ClusterInfo
    operator: OperatorProcess
    kubectl: Kubectl

    def s3(self) -> Any:
        return boto3.client(
            "s3",
            endpoint_url=self.info.s3_endpoint,
            aws_access_key_id=self.info.s3_access_key,
            aws_secret_access_key=self.info.s3_secret_key,
            region_name=self.info.s3_region,
        )

    def tenant(self, namespace: str) -> None:
        key, secret = self.info.s3_access_key, self.info.s3_secret_key
        objects = [
            {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}},
            {
                "apiVersion": "v1",
                "kind": "Secret",
                "metadata": {"name": CREDENTIALS_SECRET, "namespace": namespace},
                "data": {
                    "AWS_ACCESS_KEY_ID": base64.b64encode(key.encode()).decode(),
                    "AWS_SECRET_ACCESS_KEY": base64.b64encode(secret.encode()).decode(),
                },
            },
        ]
        self.kubectl("apply", "-f", "-", input=yaml.safe_dump_all(objects))

    def phases(self, namespace: str) -> dict[str, str]:
        listing = self.kubectl("get", "finetuningtasks", "-n", namespace, "-o", "json").stdout
        return {
            t["metadata"]["name"]: (t.get("status") or {}).get("phase", "")
            for t in json.loads(listing)["items"]
        }


def standin_lineage(index: int, trials: int) -> list[dict[str, Any]]:
    """A TunedModel and one FineTuningTask of `trials` trials, all run at once."""
    model, task = f"m-{index:02d}", f"task-{index:02d}"
    rates = [1e-5 * (i + 1) for i in range(trials)]
    return [
        {
            "apiVersion": "kubetune.dev/v1alpha1",
            "kind": "TunedModel",
            "metadata": {"name": model},
            "spec": {"baseModel": f"{INPUTS}/base/"},
        },
        {
            "apiVersion": "kubetune.dev/v1alpha1",
            "kind": "FineTuningTask",
            "metadata": {"name": task},
            "spec": {
                "modelRef": {"name": model},
                "dataset": {
                    "train": [f"{INPUTS}/train.jsonl"],
                    "validation": [f"{INPUTS}/dev.jsonl"],
                },
                "hyperparameters": {
                    "fixed": {"batchSize": 16, "maxSteps": 8},
                    "searchSpace": [{"name": "learningRate", "categorical": {"values": rates}}],
                    "parallelTrials": trials,
                },
            },
        },
    ]


@pytest.fixture(scope="package")
def standin(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StandinCluster]:
    state_dir = tmp_path_factory.mktemp("standin") / "cluster"
    previous = os.environ.get(cluster.POD_PYTHONPATH_ENV)
    os.environ[cluster.POD_PYTHONPATH_ENV] = str(STANDIN)
    try:
        info = cluster.up(state_dir, gpus=1000, quiet=True)
    finally:
        if previous is None:
            os.environ.pop(cluster.POD_PYTHONPATH_ENV)
        else:
            os.environ[cluster.POD_PYTHONPATH_ENV] = previous
    try:
        operator = OperatorProcess(info, state_dir.parent / "operator.log")
        run = StandinCluster(info, operator, Kubectl(info))
        run.kubectl("apply", "--server-side", "-f", str(REPO / "crds"))
        run.kubectl("wait", "--for=condition=Established", "crd", "--all", "--timeout=60s")
        s3 = run.s3()
        s3.create_bucket(Bucket=STORAGE_BUCKET)
        prefix = INPUTS.removeprefix(f"s3://{STORAGE_BUCKET}/")
        for key in ("base/config.json", "train.jsonl", "dev.jsonl"):
            s3.put_object(Bucket=STORAGE_BUCKET, Key=f"{prefix}/{key}", Body=b"{}")
        operator.start()
        yield run
        operator.stop()
    finally:
        cluster.down(state_dir)
