"""Jobs run through the real Job controller and the node agent, as local processes."""

from __future__ import annotations

import base64
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from kubernetes import client

from devcluster.nodeagent.cpu import POD_CPU_SHARES, POD_NICENESS, pod_cgroup
from devcluster.processes import is_alive
from devcluster.state import ClusterInfo
from tests.support import job_manifest, wait_for


def _job_condition(batch: client.BatchV1Api, namespace: str, name: str, kind: str) -> Any:
    job = batch.read_namespaced_job(name, namespace)
    for condition in job.status.conditions or []:
        if condition.type == kind and condition.status == "True":
            return condition
    return None


def _pods(core: client.CoreV1Api, namespace: str, job: str) -> list[client.V1Pod]:
    return core.list_namespaced_pod(namespace, label_selector=f"job-name={job}").items


def _devcluster_logs(info: ClusterInfo, namespace: str, pod: str) -> str:
    result = subprocess.run(
        [sys.executable, "-m", "devcluster", "logs", pod, "-n", namespace],
        env={**os.environ, **info.env()},
        capture_output=True,
        text=True,
        check=True,
    )
    return result.stdout


def _pid(pod: client.V1Pod) -> int:
    status = pod.status.container_statuses[0]
    return int(status.container_id.removeprefix("devcluster://"))


def test_pod_processes_run_below_the_control_plane(
    batch: client.BatchV1Api, core: client.CoreV1Api, namespace: str, devcluster: ClusterInfo
) -> None:
    script = "import os; print(os.nice(0)); print(open('/proc/self/cgroup').read())"
    batch.create_namespaced_job(namespace, job_manifest("niced", ["python", "-c", script]))
    wait_for(lambda: _job_condition(batch, namespace, "niced", "Complete"), "Job Complete")
    (pod,) = _pods(core, namespace, "niced")
    niceness, cgroups = _devcluster_logs(devcluster, namespace, pod.metadata.name).split("\n", 1)
    assert int(niceness) == POD_NICENESS
    cpu_cgroup = next(line for line in cgroups.splitlines() if line.split(":")[1] == "cpu")
    assert cpu_cgroup.endswith(f"/{pod_cgroup(Path(devcluster.state_dir)).name}")
    assert (pod_cgroup(Path(devcluster.state_dir)) / "cpu.shares").read_text().strip() == str(
        POD_CPU_SHARES
    )


def test_job_completes_and_its_log_is_readable(
    batch: client.BatchV1Api, core: client.CoreV1Api, namespace: str, devcluster: ClusterInfo
) -> None:
    batch.create_namespaced_job(
        namespace,
        job_manifest("hello", ["python", "-c", "print('hello from a pod'); print(6 * 7)"]),
    )
    wait_for(lambda: _job_condition(batch, namespace, "hello", "Complete"), "Job Complete")
    (pod,) = _pods(core, namespace, "hello")
    assert pod.status.phase == "Succeeded"
    terminated = pod.status.container_statuses[0].state.terminated
    assert terminated.exit_code == 0 and terminated.reason == "Completed"
    assert _devcluster_logs(devcluster, namespace, pod.metadata.name) == "hello from a pod\n42\n"


def test_failing_job_ends_failed_after_backoff_limit(
    batch: client.BatchV1Api, core: client.CoreV1Api, namespace: str
) -> None:
    script = (
        "import sys; open('/dev/termination-log', 'w').write('bad input: no data'); sys.exit(3)"
    )
    batch.create_namespaced_job(
        namespace, job_manifest("fails", ["python", "-c", script], backoff_limit=1)
    )
    condition = wait_for(
        lambda: _job_condition(batch, namespace, "fails", "Failed"), "Job Failed", timeout=120
    )
    assert condition.reason == "BackoffLimitExceeded"
    pods = _pods(core, namespace, "fails")
    assert len(pods) == 2  # the first try and one retry
    for pod in pods:
        terminated = pod.status.container_statuses[0].state.terminated
        assert pod.status.phase == "Failed"
        assert terminated.exit_code == 3
        assert terminated.reason == "Error"
        assert terminated.message == "bad input: no data"


def test_active_deadline_kills_a_sleeper(
    batch: client.BatchV1Api, core: client.CoreV1Api, namespace: str
) -> None:
    batch.create_namespaced_job(
        namespace,
        job_manifest(
            "sleeper", ["python", "-c", "import time; time.sleep(600)"], active_deadline=3
        ),
    )
    pod = wait_for(
        lambda: next(
            (p for p in _pods(core, namespace, "sleeper") if p.status.phase == "Running"), None
        ),
        "sleeper running",
    )
    pid = _pid(pod)
    assert is_alive(pid)
    condition = wait_for(
        lambda: _job_condition(batch, namespace, "sleeper", "Failed"), "Job Failed", timeout=60
    )
    assert condition.reason == "DeadlineExceeded"
    wait_for(lambda: not is_alive(pid), "sleeper process killed", timeout=40)


def test_deleting_a_running_job_kills_its_process_and_its_pods_go(
    batch: client.BatchV1Api, core: client.CoreV1Api, namespace: str
) -> None:
    batch.create_namespaced_job(
        namespace, job_manifest("doomed", ["python", "-c", "import time; time.sleep(600)"])
    )
    pod = wait_for(
        lambda: next(
            (p for p in _pods(core, namespace, "doomed") if p.status.phase == "Running"), None
        ),
        "pod running",
    )
    pid = _pid(pod)
    batch.delete_namespaced_job("doomed", namespace, propagation_policy="Background")
    wait_for(lambda: not is_alive(pid), "process killed", timeout=40)
    wait_for(lambda: not _pods(core, namespace, "doomed"), "pods garbage-collected", timeout=60)


def test_secret_config_map_and_field_refs_reach_the_process(
    batch: client.BatchV1Api, core: client.CoreV1Api, namespace: str, devcluster: ClusterInfo
) -> None:
    core.create_namespaced_secret(
        namespace,
        {
            "metadata": {"name": "creds"},
            "data": {
                "token": base64.b64encode(b"s3cr3t-value").decode(),
                "config.ini": base64.b64encode(b"[x]\na=1\n").decode(),
            },
        },
    )
    core.create_namespaced_config_map(
        namespace, {"metadata": {"name": "settings"}, "data": {"mode": "fast"}}
    )
    script = (
        "import os, pathlib;"
        "print(os.environ['TOKEN'], os.environ['MODE'], os.environ['POD_NS'],"
        " os.environ['POD_NAME'].startswith('envs-'));"
        "print(pathlib.Path('/etc/creds/config.ini').read_text().strip().replace(chr(10), '|'));"
        "pathlib.Path('/scratch/out').write_text('ok');"
        "print(pathlib.Path('/scratch/out').read_text(), os.environ['SCRATCH'])"
    )
    env = [
        {"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "creds", "key": "token"}}},
        {"name": "MODE", "valueFrom": {"configMapKeyRef": {"name": "settings", "key": "mode"}}},
        {"name": "POD_NS", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
        {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
        {"name": "SCRATCH", "value": "/scratch"},
    ]
    volumes = [
        {"name": "creds", "secret": {"secretName": "creds"}},
        {"name": "scratch", "emptyDir": {}},
    ]
    mounts = [
        {"name": "creds", "mountPath": "/etc/creds", "readOnly": True},
        {"name": "scratch", "mountPath": "/scratch"},
    ]
    batch.create_namespaced_job(
        namespace,
        job_manifest("envs", ["python", "-c", script], env=env, volumes=volumes, mounts=mounts),
    )
    wait_for(lambda: _job_condition(batch, namespace, "envs", "Complete"), "Job Complete")
    (pod,) = _pods(core, namespace, "envs")
    lines = _devcluster_logs(devcluster, namespace, pod.metadata.name).splitlines()
    assert lines[0] == f"s3cr3t-value fast {namespace} True"
    assert lines[1] == "[x]|a=1"
    assert lines[2].startswith("ok ") and lines[2] != "ok /scratch"  # remapped to a temp dir


def test_missing_secret_keeps_the_pod_waiting_with_a_reason(
    batch: client.BatchV1Api, core: client.CoreV1Api, namespace: str
) -> None:
    env = [{"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "absent", "key": "k"}}}]
    batch.create_namespaced_job(
        namespace, job_manifest("waits", ["python", "-c", "print(1)"], env=env)
    )

    def waiting_reason() -> str | None:
        pods = _pods(core, namespace, "waits")
        statuses = pods[0].status.container_statuses if pods else None
        waiting = statuses[0].state.waiting if statuses else None
        return f"{waiting.reason}: {waiting.message}" if waiting else None

    reason = wait_for(waiting_reason, "CreateContainerConfigError")
    assert reason == 'CreateContainerConfigError: secret "absent" not found'


_SPAWNS_A_SESSION_CHILD = """
import subprocess, sys, time
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"],
                         start_new_session=True)
print("child", child.pid, flush=True)
time.sleep(float(sys.argv[1]))
"""


def _session_child(info: ClusterInfo, core: client.CoreV1Api, namespace: str, job: str) -> int:
    """The pid of the child that a `_SPAWNS_A_SESSION_CHILD` pod printed in its log."""

    def printed() -> int | None:
        for pod in _pods(core, namespace, job):
            if pod.status.phase == "Pending":  # no log yet
                continue
            for line in _devcluster_logs(info, namespace, pod.metadata.name).splitlines():
                if line.startswith("child "):
                    return int(line.split()[1])
        return None

    return wait_for(printed, "the pod's child started")


def test_a_container_s_end_takes_the_processes_that_left_its_group(
    batch: client.BatchV1Api, core: client.CoreV1Api, namespace: str, devcluster: ClusterInfo
) -> None:
    """As a container's end takes every process in it: the child started its own session
    (as PyTorch's elastic launcher starts its ranks), so the process group's signals miss it."""
    command = ["python", "-c", _SPAWNS_A_SESSION_CHILD]
    batch.create_namespaced_job(namespace, job_manifest("ends", [*command, "4"]))
    ended = _session_child(devcluster, core, namespace, "ends")
    wait_for(lambda: _job_condition(batch, namespace, "ends", "Complete"), "Job Complete")
    wait_for(lambda: not is_alive(ended), "the ended container's child killed", timeout=40)

    batch.create_namespaced_job(namespace, job_manifest("deleted", [*command, "600"]))
    deleted = _session_child(devcluster, core, namespace, "deleted")
    assert is_alive(deleted)
    batch.delete_namespaced_job("deleted", namespace, propagation_policy="Background")
    wait_for(lambda: not is_alive(deleted), "the deleted container's child killed", timeout=40)
