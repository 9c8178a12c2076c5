"""Operator scale benchmark: N FineTuningTasks of 8 trials each on a devcluster.

Why: a shared cluster runs hundreds of tasks and thousands of Jobs; this measures what the
operator itself costs as N grows, with training replaced by a stand-in
(`bench/standin/kubetune_trainer`, same contract, sleeps 1-5 s) so the figures are the
operator's, not PyTorch's. Per round of N tasks it reports:

- apply -> first Job of each task (p50, p99): audit-log timestamps of the task's create
  and of the operator's first Job create for it (microsecond resolution);
- last trial's end -> promotion (p50, p99): the task's latest `trials[].finishedAt` to its
  `Succeeded` condition (both whole seconds, so +-1 s);
- operator CPU seconds and peak RSS (VmHWM) of a fresh operator process per round;
- apiserver requests per trial made by the operator: the operator runs as its own
  ServiceAccount, so the audit log attributes its requests exactly;
- every task Succeeded, and no Job created twice (audit log).

Each trial asks for one GPU and the node has `--gpus` of them (64 by default), so trials
queue for GPUs as on a real cluster instead of all running at once: at 300 tasks, 1,200
stand-ins at once left the two cores to none of them.

    ~/.cache/kubetune/venv/bin/python bench/operator_scale.py --tasks 10 100
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
import urllib.request
from collections import Counter
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import boto3
import psutil
import yaml

from devcluster import build, cluster, crds
from devcluster.audit import events, successful_creates
from devcluster.state import ClusterInfo, free_port

REPO = Path(__file__).resolve().parents[1]
STANDIN = REPO / "bench" / "standin"
BUCKET = "kubetune-scale"
SECRET = "s3-credentials"
OPERATOR_NAMESPACE = "kubetune-system"
OPERATOR_ACCOUNT = "kubetune-operator"
OPERATOR_USER = f"system:serviceaccount:{OPERATOR_NAMESPACE}:{OPERATOR_ACCOUNT}"
LEARNING_RATES = [1e-5, 2e-5, 3e-5, 5e-5, 7e-5, 1e-4, 2e-4, 3e-4]


class Kubectl:
    def __init__(self, kubeconfig: Path) -> None:
        self.binary = str(build.KUBERNETES.path("kubectl"))
        self.env = {**os.environ, "KUBECONFIG": str(kubeconfig)}

    def __call__(self, *args: str, input: str | None = None) -> str:
        result = subprocess.run(
            [self.binary, *args], input=input, env=self.env, capture_output=True, text=True
        )
        if result.returncode != 0:
            raise RuntimeError(f"kubectl {' '.join(args[:3])}: {result.stderr}")
        return result.stdout


def operator_kubeconfig(info: ClusterInfo, kubectl: Kubectl) -> Path:
    """A kubeconfig with a ServiceAccount token, so audit events name the operator."""
    kubectl(
        "apply",
        "-f",
        "-",
        input=yaml.safe_dump_all(
            [
                {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": OPERATOR_NAMESPACE}},
                {
                    "apiVersion": "v1",
                    "kind": "ServiceAccount",
                    "metadata": {"name": OPERATOR_ACCOUNT, "namespace": OPERATOR_NAMESPACE},
                },
                {
                    "apiVersion": "rbac.authorization.k8s.io/v1",
                    "kind": "ClusterRoleBinding",
                    "metadata": {"name": OPERATOR_ACCOUNT},
                    "roleRef": {
                        "apiGroup": "rbac.authorization.k8s.io",
                        "kind": "ClusterRole",
                        "name": "cluster-admin",
                    },
                    "subjects": [
                        {
                            "kind": "ServiceAccount",
                            "name": OPERATOR_ACCOUNT,
                            "namespace": OPERATOR_NAMESPACE,
                        }
                    ],
                },
            ]
        ),
    )
    token = kubectl(
        "create", "token", OPERATOR_ACCOUNT, "-n", OPERATOR_NAMESPACE, "--duration=24h"
    ).strip()
    config = json.loads(info.kubeconfig.read_text())
    config["users"][0]["user"] = {"token": token}
    path = Path(info.state_dir) / "operator.kubeconfig"
    path.write_text(json.dumps(config))
    path.chmod(0o600)
    return path


class Operator:
    """`python -m kubetune` as the Helm chart runs it, with its resource use sampled."""

    def __init__(self, info: ClusterInfo, kubeconfig: Path, log: Path) -> None:
        self.liveness = f"http://127.0.0.1:{free_port()}/healthz"
        env = {
            **os.environ,
            **info.env(),
            "KUBECONFIG": str(kubeconfig),
            "PYTHONPATH": os.pathsep.join([str(REPO / "operator"), str(REPO)]),
            "KUBETUNE_S3_BUCKET": BUCKET,
            "KUBETUNE_S3_ENDPOINT": info.s3_endpoint,
            "KUBETUNE_S3_CREDENTIALS_SECRET": SECRET,
            "KUBETUNE_TRAINER_IMAGE": "kubetune-trainer:standin",
            "KUBETUNE_LIVENESS_ENDPOINT": self.liveness,
        }
        for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_ENDPOINT_URL_S3"):
            env.pop(name)
        env.pop("MLFLOW_TRACKING_URI")
        with log.open("ab") as out:
            self.popen = subprocess.Popen(
                [sys.executable, "-m", "kubetune"],
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.process = psutil.Process(self.popen.pid)

    def wait_ready(self, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.popen.poll() is not None:
                raise RuntimeError("the operator exited; see its log")
            try:
                with urllib.request.urlopen(self.liveness, timeout=2):
                    return
            except OSError:
                time.sleep(0.5)
        raise RuntimeError("the operator never became live")

    def usage(self) -> tuple[float, float]:
        """CPU seconds so far, and peak RSS in MB (the kernel's high-water mark)."""
        cpu = self.process.cpu_times()
        status = Path(f"/proc/{self.popen.pid}/status").read_text()
        peak_kb = next(
            int(line.split()[1]) for line in status.splitlines() if line.startswith("VmHWM")
        )
        return cpu.user + cpu.system, peak_kb / 1024

    def stop(self) -> None:
        self.popen.terminate()
        try:
            self.popen.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            self.popen.wait()


def lineage(name: str, inputs: str, trials: int, parallel: int) -> list[dict[str, Any]]:
    """A TunedModel `m-NAME` and a FineTuningTask `task-NAME` of `trials` trials, `parallel`
    at a time, each on one GPU, training on the placeholder files under `inputs` (the
    stand-in never reads them)."""
    return [
        {
            "apiVersion": "kubetune.dev/v1alpha1",
            "kind": "TunedModel",
            "metadata": {"name": f"m-{name}"},
            "spec": {"baseModel": f"{inputs}/base/"},
        },
        {
            "apiVersion": "kubetune.dev/v1alpha1",
            "kind": "FineTuningTask",
            "metadata": {"name": f"task-{name}"},
            "spec": {
                "modelRef": {"name": f"m-{name}"},
                "dataset": {
                    "train": [f"{inputs}/train.jsonl"],
                    "validation": [f"{inputs}/dev.jsonl"],
                },
                "hyperparameters": {
                    "fixed": {"batchSize": 16, "maxSteps": 8, "maxSeqLength": 48},
                    "searchSpace": [
                        {"name": "learningRate", "categorical": {"values": LEARNING_RATES[:trials]}}
                    ],
                    "parallelTrials": parallel,
                },
                "trainer": {"resources": {"limits": {"nvidia.com/gpu": 1}}},
            },
        },
    ]


def task_objects(n: int, trials: int, parallel: int) -> list[dict[str, Any]]:
    """One TunedModel per task, so tasks are independent lineages."""
    inputs = f"s3://{BUCKET}"
    return [o for i in range(n) for o in lineage(f"{i:04d}", inputs, trials, parallel)]


def _time(stamp: str) -> datetime:
    return datetime.fromisoformat(stamp)


def _percentiles(values: list[float]) -> tuple[float, float]:
    if len(values) < 2:
        return (values[0], values[0]) if values else (float("nan"), float("nan"))
    cuts = statistics.quantiles(values, n=100, method="inclusive")
    return statistics.median(values), cuts[98]


@dataclass
class Round:
    tasks: int
    trials: int
    succeeded: int
    wall_seconds: float
    first_job: tuple[float, float]
    promotion: tuple[float, float]
    cpu_seconds: float
    peak_rss_mb: float
    requests: int
    requests_by_verb: Counter[str]
    user_agents: set[str]
    jobs_created: int
    duplicate_jobs: int
    load: tuple[float, float, float]


def analyse(
    state_dir: Path, namespace: str, since: datetime, tasks: list[dict[str, Any]]
) -> tuple[list[float], list[float], int, Counter[str], set[str]]:
    """Latencies from the audit log and the final tasks; the operator's requests since `since`."""
    created: dict[str, datetime] = {}
    first_job: dict[str, datetime] = {}
    seen: set[str] = set()
    by_verb: Counter[str] = Counter()
    agents: set[str] = set()
    for event in events(state_dir):
        if (
            event.get("stage") != "ResponseComplete"
            or _time(event["requestReceivedTimestamp"]) < since
        ):
            continue
        ref = event.get("objectRef") or {}
        ok = (event.get("responseStatus") or {}).get("code") == 201
        in_namespace = ref.get("namespace") == namespace and not ref.get("subresource")
        if event["verb"] == "create" and ok and in_namespace:
            if ref.get("resource") == "finetuningtasks":
                created[ref["name"]] = _time(event["stageTimestamp"])
            elif ref.get("resource") == "jobs":
                task = ref["name"].rsplit("-t", 1)[0]
                first_job.setdefault(task, _time(event["stageTimestamp"]))
        if event["user"]["username"] == OPERATOR_USER and event["auditID"] not in seen:
            seen.add(event["auditID"])
            resource = ref.get("resource", "-") + (
                f"/{ref['subresource']}" if ref.get("subresource") else ""
            )
            by_verb[f"{event['verb']} {resource}"] += 1
            agents.add(event.get("userAgent", "").split(" ")[0])
    to_first_job = [
        (first_job[n] - t).total_seconds() for n, t in created.items() if n in first_job
    ]
    to_promotion = []
    for task in tasks:
        status = task.get("status") or {}
        ends = [_time(t["finishedAt"]) for t in status.get("trials", []) if t.get("finishedAt")]
        done = [
            c
            for c in status.get("conditions", [])
            if c["type"] == "Succeeded" and c["status"] == "True"
        ]
        if ends and done:
            to_promotion.append((_time(done[0]["lastTransitionTime"]) - max(ends)).total_seconds())
    return to_first_job, to_promotion, len(seen), by_verb, agents


def run_round(
    info: ClusterInfo,
    kubectl: Kubectl,
    kubeconfig: Path,
    n: int,
    trials: int,
    parallel: int,
    timeout: float,
) -> Round:
    state_dir = Path(info.state_dir)
    namespace = f"scale-{n}"
    kubectl("create", "namespace", namespace)
    kubectl(
        "create", "secret", "generic", SECRET, "-n", namespace,
        f"--from-literal=AWS_ACCESS_KEY_ID={info.s3_access_key}",
        f"--from-literal=AWS_SECRET_ACCESS_KEY={info.s3_secret_key}",
    )  # fmt: skip
    operator = Operator(info, kubeconfig, state_dir / "logs" / f"operator-{n}.log")
    since = datetime.now().astimezone()
    operator.wait_ready()
    started = time.monotonic()
    kubectl(
        "apply",
        "-n",
        namespace,
        "-f",
        "-",
        input=yaml.safe_dump_all(task_objects(n, trials, parallel)),
    )
    peak_load = (0.0, 0.0, 0.0)
    tasks: list[dict[str, Any]] = []
    while time.monotonic() - started < timeout:
        time.sleep(5)
        peak_load = max(peak_load, os.getloadavg())
        tasks = json.loads(kubectl("get", "finetuningtasks", "-n", namespace, "-o", "json"))[
            "items"
        ]
        phases = Counter((t.get("status") or {}).get("phase", "-") for t in tasks)
        print(
            f"  {n} tasks, {time.monotonic() - started:5.0f}s: {dict(phases)} "
            f"load {os.getloadavg()[0]:.1f}",
            flush=True,
        )
        if phases["Succeeded"] + phases["Failed"] == n:
            break
    wall = time.monotonic() - started
    cpu, rss = operator.usage()
    operator.stop()
    first_job, promotion, requests, by_verb, agents = analyse(state_dir, namespace, since, tasks)
    creates = successful_creates(state_dir, "jobs", namespace)
    return Round(
        tasks=n,
        trials=n * trials,
        succeeded=sum(1 for t in tasks if (t.get("status") or {}).get("phase") == "Succeeded"),
        wall_seconds=wall,
        first_job=_percentiles(first_job),
        promotion=_percentiles(promotion),
        cpu_seconds=cpu,
        peak_rss_mb=rss,
        requests=requests,
        requests_by_verb=by_verb,
        user_agents=agents,
        jobs_created=sum(creates.values()),
        duplicate_jobs=sum(1 for count in creates.values() if count > 1),
        load=peak_load,
    )


def table(rounds: list[Round]) -> str:
    rows = [
        "| tasks | trials | Succeeded | wall s | apply→1st Job p50 / p99 s | last trial→promoted "
        "p50 / p99 s | operator CPU s | peak RSS MB | operator requests | requests/trial "
        "| Jobs created | duplicates | peak load avg (1/5/15 min) |",
        "|" + "---|" * 13,
    ]
    for r in rounds:
        rows.append(
            f"| {r.tasks} | {r.trials} | {r.succeeded} | {r.wall_seconds:.0f} "
            f"| {r.first_job[0]:.2f} / {r.first_job[1]:.2f} "
            f"| {r.promotion[0]:.0f} / {r.promotion[1]:.0f} "
            f"| {r.cpu_seconds:.0f} | {r.peak_rss_mb:.0f} | {r.requests} "
            f"| {r.requests / r.trials:.1f} "
            f"| {r.jobs_created} | {r.duplicate_jobs} | {' / '.join(f'{x:.1f}' for x in r.load)} |"
        )
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", type=int, nargs="+", default=[10, 100])
    parser.add_argument("--trials", type=int, default=8, choices=range(1, len(LEARNING_RATES) + 1))
    parser.add_argument("--parallel", type=int, default=4)
    parser.add_argument("--gpus", type=int, default=64, help="the node's nvidia.com/gpu")
    parser.add_argument("--state-dir", type=Path, default=Path("/tmp/kubetune-scale"))
    parser.add_argument("--timeout", type=float, default=3600, help="per round, seconds")
    parser.add_argument("--keep", action="store_true", help="leave the devcluster running")
    args = parser.parse_args()

    os.environ[cluster.POD_PYTHONPATH_ENV] = str(STANDIN)
    info = cluster.up(args.state_dir, gpus=args.gpus, quiet=True)
    try:
        kubectl = Kubectl(info.kubeconfig)
        crds.install(info, REPO / "crds")
        s3 = boto3.client(
            "s3",
            endpoint_url=info.s3_endpoint,
            aws_access_key_id=info.s3_access_key,
            aws_secret_access_key=info.s3_secret_key,
            region_name=info.s3_region,
        )
        s3.create_bucket(Bucket=BUCKET)
        for key in ("base/config.json", "train.jsonl", "dev.jsonl"):
            s3.put_object(Bucket=BUCKET, Key=key, Body=b"{}\n")
        kubeconfig = operator_kubeconfig(info, kubectl)
        rounds = []
        for n in args.tasks:
            rounds.append(
                run_round(info, kubectl, kubeconfig, n, args.trials, args.parallel, args.timeout)
            )
            print(table(rounds[-1:]), flush=True)
        print(table(rounds))
        for r in rounds:
            print(
                f"\n{r.tasks} tasks, operator user agents {sorted(r.user_agents)}; "
                "requests by kind:"
            )
            for kind, count in r.requests_by_verb.most_common():
                print(f"  {count:7d}  {count / r.trials:6.2f}/trial  {kind}")
    finally:
        if not args.keep:
            cluster.down(args.state_dir)


if __name__ == "__main__":
    main()
