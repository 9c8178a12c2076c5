"""The node agent: scheduler and kubelet for one Node, running pods as local processes.

It registers a Node with CPU, memory and ``nvidia.com/gpu`` capacity, keeps a watch-fed
cache of pods, binds unscheduled pods that fit, runs each bound pod's container as a
process group (inside its image with buildah, for one of this machine's `localhost/`
images), and reports Running and then Succeeded/Failed with the exit code and
termination message. The Job, garbage-collector and namespace controllers of the real
kube-controller-manager do everything else.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import threading
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psutil
from kubernetes import client, config, watch
from kubernetes.client.exceptions import ApiException

from devcluster import images
from devcluster.nodeagent import podspec
from devcluster.nodeagent.cpu import PodCpu
from devcluster.nodeagent.pods import (
    PodProcess,
    decode_data,
    kill_recorded_pods,
    pod_dir,
    prepare_volumes,
    process_children,
)

log = logging.getLogger("devcluster.nodeagent")
TERMINAL = ("Succeeded", "Failed")


def now_rfc3339() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class PodCache:
    """Pods by uid, kept current by a list-then-watch loop on a background thread."""

    def __init__(self, core: client.CoreV1Api) -> None:
        self._core = core
        self._lock = threading.Lock()
        self._pods: dict[str, dict[str, Any]] = {}
        self.deleted: list[dict[str, Any]] = []
        self.synced = threading.Event()

    def snapshot(self) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        with self._lock:
            deleted, self.deleted = self.deleted, []
            return list(self._pods.values()), deleted

    def run(self) -> None:
        while True:
            try:
                self._list_and_watch()
            except Exception as error:  # noqa: BLE001 - the watch must survive apiserver restarts
                log.warning("pod watch interrupted: %s; relisting", error)
                time.sleep(1)

    def _list_and_watch(self) -> None:
        response = self._core.list_pod_for_all_namespaces(_preload_content=False)
        listing = json.loads(response.data)
        with self._lock:
            fresh = {p["metadata"]["uid"]: p for p in listing["items"]}
            self.deleted.extend(p for uid, p in self._pods.items() if uid not in fresh)
            self._pods = fresh
        self.synced.set()
        resource_version = listing["metadata"]["resourceVersion"]
        while True:
            stream = watch.Watch().stream(
                self._core.list_pod_for_all_namespaces,
                resource_version=resource_version,
                timeout_seconds=300,
                allow_watch_bookmarks=True,
                _request_timeout=330,
            )
            for event in stream:
                raw = event["raw_object"]
                if event["type"] == "ERROR":
                    return  # typically 410 Gone: relist
                resource_version = raw["metadata"]["resourceVersion"]
                if event["type"] == "BOOKMARK":
                    continue
                uid = raw["metadata"]["uid"]
                with self._lock:
                    if event["type"] == "DELETED":
                        self._pods.pop(uid, None)
                        self.deleted.append(raw)
                    else:
                        self._pods[uid] = raw


class NodeAgent:
    def __init__(
        self,
        core: client.CoreV1Api,
        state_dir: Path,
        node_name: str,
        gpus: int,
        cpus: int,
        memory_gib: int,
    ) -> None:
        self.core = core
        self.state_dir = state_dir
        self.node_name = node_name
        self.gpus = gpus
        self.cpus = cpus
        self.memory_gib = memory_gib
        self.cache = PodCache(core)
        self.cpu = PodCpu(state_dir)
        self.processes: dict[str, PodProcess] = {}
        self._next_process_scan = 0.0
        self.deleting: set[str] = set()
        self.config_retry_at: dict[str, float] = {}
        self._last_heartbeat = 0.0

    # -- node -------------------------------------------------------------------------
    def register(self) -> None:
        body = {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {
                "name": self.node_name,
                "labels": {
                    "kubernetes.io/hostname": self.node_name,
                    "kubernetes.io/os": "linux",
                    "kubernetes.io/arch": "amd64",
                    "nvidia.com/gpu.present": "true",
                },
            },
        }
        try:
            self.core.create_node(body)
        except ApiException as error:
            if error.status != 409:
                raise
        self.heartbeat(force=True)

    def heartbeat(self, force: bool = False) -> None:
        if not force and time.monotonic() - self._last_heartbeat < 10:
            return
        now = now_rfc3339()
        capacity = {
            "cpu": str(self.cpus),
            "memory": f"{self.memory_gib}Gi",
            "pods": "10000",
            "nvidia.com/gpu": str(self.gpus),
        }
        status = {
            "status": {
                "capacity": capacity,
                "allocatable": capacity,
                "addresses": [
                    {"type": "InternalIP", "address": "127.0.0.1"},
                    {"type": "Hostname", "address": self.node_name},
                ],
                "conditions": [
                    {
                        "type": "Ready",
                        "status": "True",
                        "reason": "KubeletReady",
                        "message": "devcluster node agent is posting ready status",
                        "lastHeartbeatTime": now,
                        "lastTransitionTime": now,
                    }
                ],
                "nodeInfo": {
                    "kubeletVersion": "devcluster",
                    "operatingSystem": "linux",
                    "architecture": "amd64",
                    "containerRuntimeVersion": "process://",
                    "kernelVersion": os.uname().release,
                    "osImage": "devcluster",
                    "kubeProxyVersion": "",
                    "machineID": "",
                    "systemUUID": "",
                    "bootID": "",
                },
            }
        }
        self.core.patch_node_status(self.node_name, status)
        self._last_heartbeat = time.monotonic()

    # -- loop -------------------------------------------------------------------------
    def run(self) -> None:
        kill_recorded_pods(self.state_dir)  # processes of a previous agent are unknown to us
        self.register()
        threading.Thread(target=self.cache.run, daemon=True, name="pod-watch").start()
        self.cache.synced.wait()
        while True:
            try:
                self.heartbeat()
                self.sync_once()
            except Exception:
                log.exception("sync failed")
                time.sleep(1)
            time.sleep(0.2)

    def sync_once(self) -> None:
        pods, deleted = self.cache.snapshot()
        for pod in deleted:
            self._forget(pod["metadata"]["uid"])
        used_gpus = sum(
            podspec.gpu_request(p)
            for p in pods
            if p["spec"].get("nodeName") == self.node_name
            and p.get("status", {}).get("phase") not in TERMINAL
        )
        children = self._process_children()
        for pod in sorted(pods, key=lambda p: p["metadata"].get("creationTimestamp", "")):
            node = pod["spec"].get("nodeName")
            if not node:
                used_gpus += self._schedule(pod, self.gpus - used_gpus)
            elif node == self.node_name:
                self._sync_pod(pod, children)

    def _process_children(self) -> dict[int, list[psutil.Process]] | None:
        """The process table by parent, at most once a second and only while a container
        runs: the pods' descendants, remembered from it, are killed when their container
        ends (`PodProcess.poll`)."""
        now = time.monotonic()
        if now < self._next_process_scan or all(p.finished for p in self.processes.values()):
            return None
        self._next_process_scan = now + 1.0
        return process_children()

    # -- scheduling -------------------------------------------------------------------
    def _schedule(self, pod: Mapping[str, Any], free_gpus: int) -> int:
        meta = pod["metadata"]
        if meta.get("deletionTimestamp"):
            return 0
        if pod["spec"].get("schedulerName", "default-scheduler") != "default-scheduler":
            return 0
        wanted = podspec.gpu_request(pod)
        if wanted > free_gpus:
            self._mark_unschedulable(pod, wanted)
            return 0
        binding = client.V1Binding(
            metadata=client.V1ObjectMeta(name=meta["name"]),
            target=client.V1ObjectReference(kind="Node", name=self.node_name, api_version="v1"),
        )
        try:
            self.core.create_namespaced_pod_binding(
                meta["name"], meta["namespace"], binding, _preload_content=False
            )
        except ApiException as error:
            if error.status not in (404, 409):
                raise
            return 0
        return wanted

    def _mark_unschedulable(self, pod: Mapping[str, Any], wanted: int) -> None:
        message = (
            f"0/1 nodes are available: 1 Insufficient nvidia.com/gpu (wants {wanted}, "
            f"node has {self.gpus})."
        )
        for condition in pod.get("status", {}).get("conditions") or []:
            if condition.get("type") == "PodScheduled" and condition.get("message") == message:
                return
        meta = pod["metadata"]
        self.core.patch_namespaced_pod_status(
            meta["name"],
            meta["namespace"],
            {
                "status": {
                    "conditions": [
                        {
                            "type": "PodScheduled",
                            "status": "False",
                            "reason": "Unschedulable",
                            "message": message,
                            "lastTransitionTime": now_rfc3339(),
                        }
                    ]
                }
            },
        )

    # -- kubelet ----------------------------------------------------------------------
    def _sync_pod(
        self, pod: dict[str, Any], children: dict[int, list[psutil.Process]] | None
    ) -> None:
        meta = pod["metadata"]
        uid = meta["uid"]
        phase = pod.get("status", {}).get("phase", "Pending")
        process = self.processes.get(uid)
        if meta.get("deletionTimestamp"):
            self._delete(pod, process)
            return
        if process is None:
            if phase == "Pending":
                self._start(pod)
            elif phase == "Running":
                self._report_lost(pod)
            return
        if process.finished:
            return
        exit_code = process.poll(children)
        if exit_code is None:
            if process.restart_after and time.monotonic() >= process.restart_after:
                process.restart_after = 0.0
                self._start(pod, process)
            return
        if process.restart_after:
            return
        self._finish(pod, process, exit_code)

    def _lookups(self, namespace: str) -> tuple[podspec.SecretLookup, podspec.SecretLookup]:
        def secret(name: str) -> dict[str, str] | None:
            try:
                return decode_data(self.core.read_namespaced_secret(name, namespace), True)
            except ApiException as error:
                if error.status == 404:
                    return None
                raise

        def config_map(name: str) -> dict[str, str] | None:
            try:
                return decode_data(self.core.read_namespaced_config_map(name, namespace), False)
            except ApiException as error:
                if error.status == 404:
                    return None
                raise

        return secret, config_map

    def _start(self, pod: dict[str, Any], process: PodProcess | None = None) -> None:
        meta = pod["metadata"]
        uid = meta["uid"]
        if time.monotonic() < self.config_retry_at.get(uid, 0.0):
            return
        directory = pod_dir(self.state_dir, meta["namespace"], meta["name"], uid)
        directory.mkdir(parents=True, exist_ok=True)
        secret, config_map = self._lookups(meta["namespace"])
        now = now_rfc3339()
        try:
            volume_secrets = {
                v["secret"]["secretName"]: secret(v["secret"]["secretName"])
                for v in pod["spec"].get("volumes") or []
                if v.get("secret")
            }
            volume_maps = {
                v["configMap"]["name"]: config_map(v["configMap"]["name"])
                for v in pod["spec"].get("volumes") or []
                if v.get("configMap")
            }
            missing = [n for n, d in {**volume_secrets, **volume_maps}.items() if d is None]
            if missing:
                raise podspec.PodConfigError(f"volume source {missing[0]!r} not found")
            mounts = prepare_volumes(directory, pod, volume_secrets, volume_maps)
            image = podspec.local_image(pod)
            if image is None:
                container = None
                spec = podspec.process_spec(
                    pod,
                    secret,
                    config_map,
                    self._base_env(pod, directory),
                    mounts,
                    str(directory / "termination-log"),
                )
            else:
                container, spec = self._in_image(pod, image, secret, config_map, mounts, directory)
        except podspec.PodConfigError as error:
            self.config_retry_at[uid] = time.monotonic() + 2
            self._patch_status(
                pod, podspec.waiting_status(pod, "CreateContainerConfigError", str(error), now)
            )
            return
        except images.ImageError as error:
            self.config_retry_at[uid] = time.monotonic() + 2
            self._patch_status(
                pod, podspec.waiting_status(pod, "ErrImageNeverPull", str(error), now)
            )
            return
        if process is None:
            process = PodProcess(
                uid=uid,
                namespace=meta["namespace"],
                name=meta["name"],
                directory=directory,
                start_time=now,
            )
            self.processes[uid] = process
        else:
            process.restarts += 1
        try:
            process.start(spec, now, self.cpu, container)
        except OSError as error:
            if container is not None:
                images.remove_container(container)
            process.finished = True
            self._patch_status(
                pod,
                podspec.terminated_status(
                    pod,
                    128,
                    f"failed to start {spec.argv[0]!r}: {error}",
                    now,
                    now,
                    None,
                    process.restarts,
                    process.start_time,
                    reason="StartError",
                ),
            )
            return
        assert process.popen is not None
        log.info(
            "started %s/%s pid %d: %s",
            meta["namespace"],
            meta["name"],
            process.popen.pid,
            " ".join(spec.argv),
        )
        self._patch_status(
            pod,
            podspec.running_status(
                pod, now, process.popen.pid, process.restarts, process.start_time
            ),
        )

    def _in_image(
        self,
        pod: Mapping[str, Any],
        image: str,
        secret: podspec.SecretLookup,
        config_map: podspec.SecretLookup,
        mounts: Mapping[str, str],
        directory: Path,
    ) -> tuple[str, podspec.ProcessSpec]:
        """A fresh working container of the pod's image, and the `buildah run` that runs
        the pod's container in it."""
        if not images.image_exists(image):
            raise images.ImageError(
                f"image {image} is not in this machine's store (never pulled): "
                "build it with python -m devcluster image"
            )
        termination_log = directory / "termination-log"
        spec = podspec.container_spec(
            pod, image, images.image_config(image), secret, config_map, mounts, str(termination_log)
        )
        # Volumes are writable by any user, as kubelet's emptyDir is; the image's user is
        # not this machine's.
        termination_log.touch()
        for host_path in map(Path, spec.mounts.values()):
            if host_path.is_dir():
                host_path.chmod(0o777)
            elif host_path.exists():
                host_path.chmod(0o666)
        container = images.create_container(image)
        argv = images.run_command(
            image,
            container,
            spec.argv,
            spec.env,
            [
                images.Mount(Path(host), target, read_only=False)
                for target, host in spec.mounts.items()
            ],
            user=spec.user,
            working_dir=spec.working_dir,
        )
        process_spec = podspec.ProcessSpec(
            argv=argv,
            env={"PATH": os.environ.get("PATH", "/usr/bin:/bin")},
            cwd=None,
            termination_message_path=str(termination_log),
        )
        return container, process_spec

    def _base_env(self, pod: Mapping[str, Any], directory: Path) -> dict[str, str]:
        python_bin = str(Path(sys.executable).parent)
        env = {
            "PATH": f"{python_bin}{os.pathsep}{os.environ.get('PATH', '/usr/bin:/bin')}",
            "HOME": str(directory / "home"),
            "HOSTNAME": pod["metadata"]["name"],
            "LANG": os.environ.get("LANG", "C.UTF-8"),
            "PYTHONUNBUFFERED": "1",
        }
        for passthrough in ("PYTHONPATH", "HF_HOME", "TMPDIR"):
            if passthrough in os.environ:
                env[passthrough] = os.environ[passthrough]
        return env

    def _finish(self, pod: dict[str, Any], process: PodProcess, exit_code: int) -> None:
        container = pod["spec"]["containers"][0]
        written = (
            process.termination_log.read_text(errors="replace")
            if process.termination_log.exists()
            else ""
        )
        message = podspec.termination_message(
            written, process.log_tail(), exit_code, container.get("terminationMessagePolicy")
        )
        now = now_rfc3339()
        (process.directory / "pgid").unlink(missing_ok=True)
        if podspec.should_restart(pod, exit_code):
            backoff = min(10 * 2**process.restarts, 300)
            process.restart_after = time.monotonic() + backoff
            log.info(
                "%s/%s exited %d; restarting in %ds",
                process.namespace,
                process.name,
                exit_code,
                backoff,
            )
            return
        process.finished = True
        log.info("%s/%s exited %d", process.namespace, process.name, exit_code)
        self._patch_status(
            pod,
            podspec.terminated_status(
                pod,
                exit_code,
                message,
                process.started_at,
                now,
                process.popen.pid if process.popen else None,
                process.restarts,
                process.start_time,
                reason="OOMKilled" if exit_code == 137 and "MemoryError" in message else None,
            ),
        )

    def _report_lost(self, pod: dict[str, Any]) -> None:
        """A Running pod whose process belonged to an earlier agent: it is gone now."""
        now = now_rfc3339()
        status = pod.get("status", {})
        self._patch_status(
            pod,
            podspec.terminated_status(
                pod,
                137,
                "the node agent restarted and the container's process was lost",
                now,
                now,
                None,
                0,
                status.get("startTime", now),
                reason="ContainerStatusUnknown",
            ),
        )

    def _delete(self, pod: dict[str, Any], process: PodProcess | None) -> None:
        meta = pod["metadata"]
        uid = meta["uid"]
        if uid in self.deleting:
            return
        self.deleting.add(uid)
        if process is not None and not process.finished:
            grace = min(int(meta.get("deletionGracePeriodSeconds") or 30), 30)
            process.kill(grace)
            process.finished = True
            exit_code = process.poll()
            now = now_rfc3339()
            self._patch_status(
                pod,
                podspec.terminated_status(
                    pod,
                    137 if exit_code is None or exit_code < 0 else exit_code,
                    "",
                    process.started_at,
                    now,
                    process.popen.pid if process.popen else None,
                    process.restarts,
                    process.start_time,
                ),
            )
        try:
            self.core.delete_namespaced_pod(
                meta["name"],
                meta["namespace"],
                grace_period_seconds=0,
                body=client.V1DeleteOptions(
                    grace_period_seconds=0, preconditions=client.V1Preconditions(uid=uid)
                ),
            )
        except ApiException as error:
            if error.status not in (404, 409):
                raise

    def _forget(self, uid: str) -> None:
        process = self.processes.pop(uid, None)
        if process is not None and not process.finished:
            process.kill(5)
        self.deleting.discard(uid)
        self.config_retry_at.pop(uid, None)

    def _patch_status(self, pod: Mapping[str, Any], status: dict[str, Any]) -> None:
        meta = pod["metadata"]
        try:
            self.core.patch_namespaced_pod_status(
                meta["name"], meta["namespace"], {"status": status}
            )
        except ApiException as error:
            if error.status != 404:
                raise


def main(argv: list[str] | None = None) -> None:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m devcluster.nodeagent")
    parser.add_argument("--kubeconfig", required=True)
    parser.add_argument("--state-dir", required=True, type=Path)
    parser.add_argument("--node-name", default="devcluster-node")
    parser.add_argument("--gpus", type=int, default=4)
    parser.add_argument("--cpus", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--memory-gib", type=int, default=32)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    api = config.new_client_from_config(config_file=args.kubeconfig)
    agent = NodeAgent(
        client.CoreV1Api(api), args.state_dir, args.node_name, args.gpus, args.cpus, args.memory_gib
    )
    agent.run()
