"""Pod directories and processes on the host: volumes, logs, the termination-message file,
and the record of process groups that lets ``devcluster down`` kill every pod process,
even ones a crashed node agent left behind.

A container's end takes every process in it, also those that left its process group for a
session of their own (PyTorch's elastic launcher starts its ranks so). The agent therefore
remembers each running container's descendants (from one scan of the process table a
second, shared by all pods) and kills the ones still alive when the container's main process
ends or is killed.
"""

from __future__ import annotations

import base64
import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

from devcluster.images import remove_container
from devcluster.nodeagent.cpu import PodCpu
from devcluster.nodeagent.podspec import ProcessSpec


def pods_root(state_dir: Path) -> Path:
    return state_dir / "pods"


def pod_dir(state_dir: Path, namespace: str, name: str, uid: str) -> Path:
    return pods_root(state_dir) / f"{namespace}_{name}_{uid[:8]}"


def find_log(state_dir: Path, namespace: str, name: str) -> Path | None:
    """The newest log of a pod with this name (names are reused across pod incarnations)."""
    candidates = sorted(
        pods_root(state_dir).glob(f"{namespace}_{name}_*/container.log"),
        key=lambda p: p.stat().st_mtime,
    )
    return candidates[-1] if candidates else None


def prepare_volumes(
    directory: Path,
    pod: Mapping[str, Any],
    secrets: Mapping[str, Mapping[str, str] | None],
    config_maps: Mapping[str, Mapping[str, str] | None],
) -> dict[str, str]:
    """Materialise emptyDir, Secret and ConfigMap volumes; return mountPath -> host path."""
    volumes_dir = directory / "volumes"
    host_paths: dict[str, Path] = {}
    for volume in pod["spec"].get("volumes") or []:
        target = volumes_dir / volume["name"]
        target.mkdir(parents=True, exist_ok=True)
        if volume.get("secret"):
            _write_items(
                target,
                secrets.get(volume["secret"]["secretName"]) or {},
                volume["secret"].get("items"),
            )
        elif volume.get("configMap"):
            _write_items(
                target,
                config_maps.get(volume["configMap"]["name"]) or {},
                volume["configMap"].get("items"),
            )
        host_paths[volume["name"]] = target
    mounts: dict[str, str] = {}
    for mount in pod["spec"]["containers"][0].get("volumeMounts") or []:
        host = host_paths.get(mount["name"])
        if host is None:
            continue
        if mount.get("subPath"):
            host = host / mount["subPath"]
        mounts[mount["mountPath"].rstrip("/") or "/"] = str(host)
    return mounts


def _write_items(target: Path, data: Mapping[str, str], items: list[dict[str, Any]] | None) -> None:
    selected = {i["key"]: i["path"] for i in items} if items else {k: k for k in data}
    for key, relative in selected.items():
        if key in data:
            path = target / relative
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(data[key])


def decode_data(obj: Any, binary: bool) -> dict[str, str]:
    """Secret data is base64 on the wire; ConfigMap data is plain."""
    data = (obj.data or {}) if obj is not None else {}
    if binary:
        return {k: base64.b64decode(v).decode(errors="replace") for k, v in data.items()}
    return dict(data)


@dataclass
class PodProcess:
    """One pod's container process, across in-place restarts."""

    uid: str
    namespace: str
    name: str
    directory: Path
    start_time: str
    popen: subprocess.Popen[bytes] | None = None
    started_at: str = ""
    restarts: int = 0
    reported: str = ""
    finished: bool = False
    restart_after: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)
    descendants: list[psutil.Process] = field(default_factory=list)
    ended: bool = False
    container: str | None = None
    """The buildah working container of a start in an image, removed at its end."""

    @property
    def log_path(self) -> Path:
        return self.directory / "container.log"

    @property
    def termination_log(self) -> Path:
        return self.directory / "termination-log"

    def start(self, spec: ProcessSpec, now: str, cpu: PodCpu, container: str | None = None) -> None:
        """Starts the process; `container`, where the process runs one, is then the pod's
        to remove."""
        self.termination_log.write_text("")
        (self.directory / "home").mkdir(exist_ok=True)
        self.container = container
        if container is not None:
            (self.directory / "container").write_text(container)
        with self.log_path.open("ab") as log:
            self.popen = subprocess.Popen(
                spec.argv,
                env=spec.env,
                cwd=spec.cwd or str(self.directory / "home"),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        self.ended = False
        cpu.lower(self.popen.pid)
        (self.directory / "pgid").write_text(str(self.popen.pid))
        self.started_at = now

    def poll(self, children: Mapping[int, list[psutil.Process]] | None = None) -> int | None:
        """The main process's exit code, or None while it runs; once it has ended, what it
        left running is killed. `children` (from `process_children`) refreshes the
        descendants remembered."""
        if self.popen is None:
            return None
        exit_code = self.popen.poll()
        if exit_code is None:
            if children is not None:
                self.descendants = _descendants(self.popen.pid, children)
        else:
            self._kill_leftovers()
        return exit_code

    def kill(self, grace_seconds: float) -> None:
        """SIGTERM the pod's process group, SIGKILL after the grace period, keep the exit code."""
        if self.popen is not None and not self.ended:
            pgid = self.popen.pid
            self._remember_descendants()
            _signal_group(pgid, signal.SIGTERM)
            try:
                self.popen.wait(timeout=grace_seconds)
            except subprocess.TimeoutExpired:
                _signal_group(pgid, signal.SIGKILL)
                self.popen.wait()
            self._kill_leftovers()
        (self.directory / "pgid").unlink(missing_ok=True)

    def _remember_descendants(self) -> None:
        assert self.popen is not None
        with contextlib.suppress(psutil.Error):
            self.descendants = psutil.Process(self.popen.pid).children(recursive=True)

    def _kill_leftovers(self) -> None:
        """SIGKILL the process group and every remembered descendant still running (psutil
        checks that a pid still names the process it remembered). Once per start: later, the
        group's id may name another pod's group."""
        assert self.popen is not None
        if self.ended:
            return
        self.ended = True
        _signal_group(self.popen.pid, signal.SIGKILL)
        for process in self.descendants:
            with contextlib.suppress(psutil.Error):
                process.kill()
        self.descendants = []
        if self.container is not None:
            remove_container(self.container)
            (self.directory / "container").unlink(missing_ok=True)
            self.container = None

    def log_tail(self, max_bytes: int = 2048) -> str:
        if not self.log_path.exists():
            return ""
        with self.log_path.open("rb") as f:
            f.seek(max(0, self.log_path.stat().st_size - max_bytes))
            return f.read().decode(errors="replace")


def process_children() -> dict[int, list[psutil.Process]]:
    """Every process by its parent's pid: one pass over the process table."""
    children: dict[int, list[psutil.Process]] = {}
    for process in psutil.process_iter(["ppid"]):
        children.setdefault(process.info["ppid"], []).append(process)
    return children


def _descendants(pid: int, children: Mapping[int, list[psutil.Process]]) -> list[psutil.Process]:
    found: list[psutil.Process] = []
    parents = [pid]
    while parents:
        for child in children.get(parents.pop(), []):
            found.append(child)
            parents.append(child.pid)
    return found


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def kill_recorded_pods(state_dir: Path) -> None:
    """Kill every pod process group still recorded, and remove the working containers of
    those that ran in an image (used by down, and at agent start)."""
    root = pods_root(state_dir)
    if not root.exists():
        return
    for pgid_file in root.glob("*/pgid"):
        try:
            pgid = int(pgid_file.read_text().strip())
            os.killpg(pgid, signal.SIGKILL)
        except (ValueError, ProcessLookupError, PermissionError):
            pass
        pgid_file.unlink(missing_ok=True)
    time.sleep(0.1)
    for container_file in root.glob("*/container"):
        remove_container(container_file.read_text().strip())
        container_file.unlink(missing_ok=True)
