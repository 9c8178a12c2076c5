"""A second devcluster whose pods run the stand-in trainer (`bench/standin`: the trainer's
contract, a 1-5 s sleep instead of training), for faults that need many tasks at once or
that break the control plane itself, away from the suite's shared cluster."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import pytest
import yaml

from bench.operator_scale import lineage
from devcluster import cluster, crds
from devcluster.state import ClusterInfo
from tests.conftest import Kubectl
from tests.e2e.fixtures import STORAGE_BUCKET, OperatorProcess, credentials_secret

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
        objects = [
            {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}},
            credentials_secret(self.info, namespace),
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
    return lineage(f"{index:02d}", INPUTS, trials, trials)


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
        crds.install(info, REPO / "crds")
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
