"""Pure translations between a Pod object and a local process: environment, paths, status.

The node agent plays kubelet. A container of one of this machine's images (`localhost/`)
runs in its image (`container_spec`); any other becomes a process on this machine
(`process_spec`). These functions decide what that container or process gets (its
environment with Secret, ConfigMap and field references resolved; volumes; for a process,
container paths remapped to the pod's directories) and what the pod's status says about
it. No I/O here.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

DEFAULT_TERMINATION_MESSAGE_PATH = "/dev/termination-log"
TERMINATION_MESSAGE_LIMIT = 4096
_VAR_REFERENCE = re.compile(r"\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)|\$\$")


class PodConfigError(ValueError):
    """The pod references something missing (a Secret, a key); kubelet's
    CreateContainerConfigError. The pod waits and is retried."""


SecretLookup = Callable[[str], Mapping[str, str] | None]


@dataclass(frozen=True)
class ProcessSpec:
    """What to run for a pod's (first) container."""

    argv: list[str]
    env: dict[str, str]
    cwd: str | None
    termination_message_path: str


def _expand(value: str, env: Mapping[str, str]) -> str:
    """Kubernetes' $(VAR) expansion: known names are replaced, $$ escapes, others stay."""

    def replace(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        name = match.group(1)
        return env.get(name, match.group(0))

    return _VAR_REFERENCE.sub(replace, value)


def _field_ref(pod: Mapping[str, Any], path: str) -> str:
    metadata = pod.get("metadata", {})
    values = {
        "metadata.name": metadata.get("name", ""),
        "metadata.namespace": metadata.get("namespace", ""),
        "metadata.uid": metadata.get("uid", ""),
        "spec.nodeName": pod.get("spec", {}).get("nodeName", ""),
        "spec.serviceAccountName": pod.get("spec", {}).get("serviceAccountName", ""),
        "status.podIP": "127.0.0.1",
        "status.hostIP": "127.0.0.1",
    }
    label = re.fullmatch(r"metadata\.(labels|annotations)\['(.+)'\]", path)
    if label:
        return str(metadata.get(label.group(1), {}).get(label.group(2), ""))
    if path not in values:
        raise PodConfigError(f"unsupported fieldRef {path!r}")
    return str(values[path])


def _key_ref(kind: str, ref: Mapping[str, Any], lookup: SecretLookup) -> str | None:
    data = lookup(ref["name"])
    optional = bool(ref.get("optional", False))
    if data is None:
        if optional:
            return None
        raise PodConfigError(f'{kind.lower()} "{ref["name"]}" not found')
    if ref["key"] not in data:
        if optional:
            return None
        raise PodConfigError(f"couldn't find key {ref['key']} in {kind} {ref['name']}")
    return data[ref["key"]]


def resolve_env(
    pod: Mapping[str, Any],
    container: Mapping[str, Any],
    secrets: SecretLookup,
    config_maps: SecretLookup,
    base: Mapping[str, str],
) -> dict[str, str]:
    """The container's environment as kubelet builds it: envFrom first, then env in order."""
    env = dict(base)
    for source in container.get("envFrom") or []:
        prefix = source.get("prefix", "")
        for kind, key, lookup in (
            ("Secret", "secretRef", secrets),
            ("ConfigMap", "configMapRef", config_maps),
        ):
            ref = source.get(key)
            if ref is None:
                continue
            data = lookup(ref["name"])
            if data is None:
                if ref.get("optional"):
                    continue
                raise PodConfigError(f'{kind.lower()} "{ref["name"]}" not found')
            env.update({prefix + k: v for k, v in data.items()})
    for var in container.get("env") or []:
        name = var["name"]
        if "valueFrom" not in var or var["valueFrom"] is None:
            env[name] = _expand(var.get("value") or "", env)
            continue
        source = var["valueFrom"]
        value: str | None
        if source.get("secretKeyRef"):
            value = _key_ref("Secret", source["secretKeyRef"], secrets)
        elif source.get("configMapKeyRef"):
            value = _key_ref("ConfigMap", source["configMapKeyRef"], config_maps)
        elif source.get("fieldRef"):
            value = _field_ref(pod, source["fieldRef"]["fieldPath"])
        else:
            raise PodConfigError(f"env {name}: unsupported valueFrom {sorted(source)}")
        if value is not None:
            env[name] = value
    return env


def remap_paths(value: str, mounts: Mapping[str, str]) -> str:
    """Rewrite container paths (mount points, the termination log) to their host places.

    A path is rewritten where it starts the value or follows '=', ':', ',', a space or a
    quote, so `--out=/data/x`, `open('/data/x')` and `/data` map, while `/database` does not
    match `/data`.
    """
    for container_path in sorted(mounts, key=len, reverse=True):
        host_path = mounts[container_path]
        pattern = re.compile(r"(^|[=:, '\"])" + re.escape(container_path) + r"(?=/|$|[ ,:'\"])")
        value = pattern.sub(lambda m, h=host_path: m.group(1) + h, value)
    return value


def process_spec(
    pod: Mapping[str, Any],
    secrets: SecretLookup,
    config_maps: SecretLookup,
    base_env: Mapping[str, str],
    mounts: Mapping[str, str],
    termination_log: str,
) -> ProcessSpec:
    container = pod["spec"]["containers"][0]
    argv_raw = list(container.get("command") or []) + list(container.get("args") or [])
    if not argv_raw:
        raise PodConfigError(
            "container has no command: the node agent cannot run an "
            "image's entrypoint; set command/args"
        )
    message_path = container.get("terminationMessagePath") or DEFAULT_TERMINATION_MESSAGE_PATH
    all_mounts = {**mounts, message_path: termination_log}
    env = resolve_env(pod, container, secrets, config_maps, base_env)
    env = {k: remap_paths(v, all_mounts) for k, v in env.items()}
    argv = [remap_paths(_expand(a, env), all_mounts) for a in argv_raw]
    working_dir = container.get("workingDir")
    return ProcessSpec(
        argv=argv,
        env=env,
        cwd=remap_paths(working_dir, all_mounts) if working_dir else None,
        termination_message_path=termination_log,
    )


LOCAL_IMAGE_PREFIX = "localhost/"
"""Images of this name live in buildah's store on this machine (`python -m devcluster
image` builds them there); the agent runs containers of such images in the image."""
IMAGE_TERMINATION_MESSAGE_PATH = "/run/devcluster/termination-log"
"""Where an image's container finds its termination-message file. buildah's chroot
isolation gives a container this machine's /dev, read-only, so the file cannot be bound at
kubelet's default /dev/termination-log; that path is rewritten to this one."""


def local_image(pod: Mapping[str, Any]) -> str | None:
    """The first container's image where it is one of this machine's, else None."""
    image = str(pod["spec"]["containers"][0].get("image") or "")
    return image if image.startswith(LOCAL_IMAGE_PREFIX) else None


@dataclass(frozen=True)
class ContainerSpec:
    """What to run for a pod's (first) container inside its image."""

    image: str
    argv: list[str]
    env: dict[str, str]
    mounts: dict[str, str]
    """Container path -> host path."""
    user: str | None
    working_dir: str | None


def _user(pod: Mapping[str, Any], container: Mapping[str, Any], image_user: str) -> str | None:
    """runAsUser/runAsGroup, the container's over the pod's, as buildah's `uid[:gid]`;
    with runAsNonRoot, kubelet's check that the user is a number other than 0."""
    pod_context = pod["spec"].get("securityContext") or {}
    container_context = container.get("securityContext") or {}

    def setting(name: str) -> Any:
        return container_context.get(name, pod_context.get(name))

    uid, gid = setting("runAsUser"), setting("runAsGroup")
    user = None if uid is None else f"{uid}:{gid}" if gid is not None else str(uid)
    if setting("runAsNonRoot"):
        effective = (user or image_user or "0").split(":", 1)[0]
        if not effective.isdigit():
            raise PodConfigError(
                f"container has runAsNonRoot and image has non-numeric user ({effective}), "
                "cannot verify user is non-root"
            )
        if int(effective) == 0:
            raise PodConfigError("container has runAsNonRoot and image will run as root")
    return user


def container_spec(
    pod: Mapping[str, Any],
    image: str,
    image_config: Mapping[str, Any],
    secrets: SecretLookup,
    config_maps: SecretLookup,
    mounts: Mapping[str, str],
    termination_log: str,
) -> ContainerSpec:
    """The container as kubelet would run it from its image: `command` replaces the image's
    entrypoint and `args` its cmd; the pod's user and working directory, where set, replace
    the image's. buildah puts the image's environment under `env`."""
    container = pod["spec"]["containers"][0]
    command = list(container.get("command") or [])
    args = list(container.get("args") or [])
    if command:
        argv_raw = command + args
    else:
        argv_raw = list(image_config.get("Entrypoint") or []) + (
            args or list(image_config.get("Cmd") or [])
        )
    if not argv_raw:
        raise PodConfigError(f"image {image} has no entrypoint and the container no command")
    message_path = container.get("terminationMessagePath") or DEFAULT_TERMINATION_MESSAGE_PATH
    env = resolve_env(pod, container, secrets, config_maps, {"HOSTNAME": pod["metadata"]["name"]})
    moved = {message_path: IMAGE_TERMINATION_MESSAGE_PATH}
    return ContainerSpec(
        image=image,
        argv=[remap_paths(_expand(a, env), moved) for a in argv_raw],
        env={k: remap_paths(v, moved) for k, v in env.items()},
        mounts={**mounts, IMAGE_TERMINATION_MESSAGE_PATH: termination_log},
        user=_user(pod, container, str(image_config.get("User") or "")),
        working_dir=container.get("workingDir"),
    )


def termination_message(written: str, log_tail: str, exit_code: int, policy: str | None) -> str:
    """What kubelet reports: the file's content, or the log's tail when the policy says so."""
    message = written
    if not message.strip() and exit_code != 0 and policy == "FallbackToLogsOnError":
        message = log_tail
    encoded = message.encode()[-TERMINATION_MESSAGE_LIMIT:]
    return encoded.decode(errors="ignore")


def gpu_request(pod: Mapping[str, Any]) -> int:
    total = 0
    for container in pod.get("spec", {}).get("containers", []):
        resources = container.get("resources") or {}
        amount = (resources.get("limits") or {}).get("nvidia.com/gpu") or (
            resources.get("requests") or {}
        ).get("nvidia.com/gpu")
        total += int(amount or 0)
    return total


def _conditions(now: str, ready: bool) -> list[dict[str, Any]]:
    status = "True" if ready else "False"
    return [
        {"type": "PodScheduled", "status": "True", "lastTransitionTime": now},
        {"type": "Initialized", "status": "True", "lastTransitionTime": now},
        {"type": "ContainersReady", "status": status, "lastTransitionTime": now},
        {"type": "Ready", "status": status, "lastTransitionTime": now},
    ]


def _container_status(
    container: Mapping[str, Any], state: dict[str, Any], restarts: int, pid: int | None, ready: bool
) -> dict[str, Any]:
    return {
        "name": container["name"],
        "image": container.get("image") or "local",
        "imageID": "",
        "containerID": f"devcluster://{pid}" if pid else "",
        "ready": ready,
        "started": "running" in state,
        "restartCount": restarts,
        "state": state,
    }


def running_status(
    pod: Mapping[str, Any], started_at: str, pid: int, restarts: int, start_time: str
) -> dict[str, Any]:
    container = pod["spec"]["containers"][0]
    return {
        "phase": "Running",
        "hostIP": "127.0.0.1",
        "podIP": "127.0.0.1",
        "startTime": start_time,
        "conditions": _conditions(started_at, True),
        "containerStatuses": [
            _container_status(
                container, {"running": {"startedAt": started_at}}, restarts, pid, True
            )
        ],
    }


def terminated_status(
    pod: Mapping[str, Any],
    exit_code: int,
    message: str,
    started_at: str,
    finished_at: str,
    pid: int | None,
    restarts: int,
    start_time: str,
    reason: str | None = None,
) -> dict[str, Any]:
    container = pod["spec"]["containers"][0]
    terminated = {
        "exitCode": exit_code,
        "reason": reason or ("Completed" if exit_code == 0 else "Error"),
        "startedAt": started_at,
        "finishedAt": finished_at,
        "containerID": f"devcluster://{pid}" if pid else "",
    }
    if message:
        terminated["message"] = message
    return {
        "phase": "Succeeded" if exit_code == 0 else "Failed",
        "hostIP": "127.0.0.1",
        "podIP": "127.0.0.1",
        "startTime": start_time,
        "conditions": _conditions(finished_at, False),
        "containerStatuses": [
            _container_status(container, {"terminated": terminated}, restarts, pid, False)
        ],
    }


def waiting_status(pod: Mapping[str, Any], reason: str, message: str, now: str) -> dict[str, Any]:
    container = pod["spec"]["containers"][0]
    return {
        "phase": "Pending",
        "hostIP": "127.0.0.1",
        "startTime": now,
        "conditions": _conditions(now, False),
        "containerStatuses": [
            _container_status(
                container, {"waiting": {"reason": reason, "message": message}}, 0, None, False
            )
        ],
    }


def should_restart(pod: Mapping[str, Any], exit_code: int) -> bool:
    policy = pod["spec"].get("restartPolicy", "Always")
    return policy == "Always" or (policy == "OnFailure" and exit_code != 0)
