"""Unit tests of the node agent's pure pod-to-process translation."""

from __future__ import annotations

import re
from typing import Any

import pytest

from devcluster.nodeagent import podspec


def _pod(container: dict[str, Any], **spec: Any) -> dict[str, Any]:
    return {
        "metadata": {"name": "p", "namespace": "ns", "uid": "u-1", "labels": {"app": "trainer"}},
        "spec": {"nodeName": "n", "containers": [{"name": "main", **container}], **spec},
    }


SECRETS = {"creds": {"key": "sv"}}
MAPS = {"cfg": {"mode": "fast", "level": "3"}}


def _secret(name: str) -> dict[str, str] | None:
    return SECRETS.get(name)


def _config_map(name: str) -> dict[str, str] | None:
    return MAPS.get(name)


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ([{"name": "A", "value": "x"}], {"A": "x"}),
        ([{"name": "A", "value": "x"}, {"name": "B", "value": "$(A)-y"}], {"A": "x", "B": "x-y"}),
        ([{"name": "B", "value": "$(MISSING) $$(A)"}], {"B": "$(MISSING) $(A)"}),
        (
            [{"name": "S", "valueFrom": {"secretKeyRef": {"name": "creds", "key": "key"}}}],
            {"S": "sv"},
        ),
        (
            [{"name": "M", "valueFrom": {"configMapKeyRef": {"name": "cfg", "key": "mode"}}}],
            {"M": "fast"},
        ),
        (
            [{"name": "N", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}}],
            {"N": "ns"},
        ),
        (
            [{"name": "L", "valueFrom": {"fieldRef": {"fieldPath": "metadata.labels['app']"}}}],
            {"L": "trainer"},
        ),
        (
            [
                {
                    "name": "O",
                    "valueFrom": {"secretKeyRef": {"name": "nope", "key": "k", "optional": True}},
                }
            ],
            {},
        ),
    ],
)
def test_resolve_env(env: list[dict[str, Any]], expected: dict[str, str]) -> None:
    pod = _pod({"env": env})
    assert (
        podspec.resolve_env(pod, pod["spec"]["containers"][0], _secret, _config_map, {}) == expected
    )


def test_env_from_with_prefix_then_env_overrides() -> None:
    container = {
        "envFrom": [{"configMapRef": {"name": "cfg"}, "prefix": "C_"}],
        "env": [{"name": "C_MODE", "value": "slow"}],
    }
    pod = _pod(container)
    assert podspec.resolve_env(pod, container, _secret, _config_map, {"PATH": "/bin"}) == {
        "PATH": "/bin",
        "C_mode": "fast",
        "C_level": "3",
        "C_MODE": "slow",
    }


@pytest.mark.parametrize(
    ("env", "message"),
    [
        (
            [{"name": "S", "valueFrom": {"secretKeyRef": {"name": "nope", "key": "k"}}}],
            'secret "nope" not found',
        ),
        (
            [{"name": "S", "valueFrom": {"secretKeyRef": {"name": "creds", "key": "other"}}}],
            "couldn't find key other in Secret creds",
        ),
    ],
)
def test_missing_references_are_config_errors(env: list[dict[str, Any]], message: str) -> None:
    pod = _pod({"env": env})
    with pytest.raises(podspec.PodConfigError, match=message):
        podspec.resolve_env(pod, pod["spec"]["containers"][0], _secret, _config_map, {})


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("/data", "/tmp/v/data"),
        ("/data/x/y.json", "/tmp/v/data/x/y.json"),
        ("--out=/data/x", "--out=/tmp/v/data/x"),
        ("/database", "/database"),
        ("a /data b", "a /tmp/v/data b"),
        ("/dev/termination-log", "/tmp/t"),
        ("open('/data/x')", "open('/tmp/v/data/x')"),
    ],
)
def test_remap_paths(value: str, expected: str) -> None:
    mounts = {"/data": "/tmp/v/data", "/dev/termination-log": "/tmp/t"}
    assert podspec.remap_paths(value, mounts) == expected


def test_process_spec_expands_and_remaps_command_and_args() -> None:
    pod = _pod(
        {
            "command": ["python", "-m", "trainer"],
            "args": ["--out", "$(OUT)"],
            "env": [{"name": "OUT", "value": "/scratch/ckpt"}],
            "terminationMessagePath": "/tmp/msg",
        }
    )
    spec = podspec.process_spec(pod, _secret, _config_map, {}, {"/scratch": "/h/s"}, "/h/term")
    assert spec.argv == ["python", "-m", "trainer", "--out", "/h/s/ckpt"]
    assert spec.env["OUT"] == "/h/s/ckpt"
    assert spec.termination_message_path == "/h/term"


def test_a_container_without_command_cannot_run() -> None:
    with pytest.raises(podspec.PodConfigError, match="no command"):
        podspec.process_spec(_pod({"image": "x"}), _secret, _config_map, {}, {}, "/t")


@pytest.mark.parametrize(
    ("written", "code", "policy", "expected"),
    [
        ("done", 0, "File", "done"),
        ("", 1, "File", ""),
        ("", 1, "FallbackToLogsOnError", "log tail"),
        ("", 0, "FallbackToLogsOnError", ""),
        ("x" * 5000, 1, "File", "x" * 4096),
    ],
)
def test_termination_message(written: str, code: int, policy: str, expected: str) -> None:
    assert podspec.termination_message(written, "log tail", code, policy) == expected


def test_terminated_status_reports_exit_code_and_message() -> None:
    pod = _pod({"command": ["x"]})
    status = podspec.terminated_status(pod, 3, "bad input", "t0", "t1", 42, 0, "t0")
    assert status["phase"] == "Failed"
    terminated = status["containerStatuses"][0]["state"]["terminated"]
    assert terminated == {
        "exitCode": 3,
        "reason": "Error",
        "startedAt": "t0",
        "finishedAt": "t1",
        "containerID": "devcluster://42",
        "message": "bad input",
    }


def test_gpu_request_and_restart_policy() -> None:
    pod = _pod({"resources": {"limits": {"nvidia.com/gpu": "2"}}}, restartPolicy="OnFailure")
    assert podspec.gpu_request(pod) == 2
    assert podspec.should_restart(pod, 1)
    assert not podspec.should_restart(pod, 0)


IMAGE_CONFIG = {
    "Entrypoint": ["python", "-m", "tool"],
    "Cmd": ["--help"],
    "Env": ["PATH=/opt/bin:/usr/bin", "MODE=image"],
    "User": "1000:1000",
}


@pytest.mark.parametrize(
    ("container", "argv"),
    [
        ({}, ["python", "-m", "tool", "--help"]),
        ({"args": ["--run", "$(MODE)"]}, ["python", "-m", "tool", "--run", "fast"]),
        ({"command": ["sh", "-c"], "args": ["true"]}, ["sh", "-c", "true"]),
        ({"command": ["env"]}, ["env"]),
    ],
)
def test_an_image_s_container_runs_command_over_entrypoint_and_args_over_cmd(
    container: dict[str, Any], argv: list[str]
) -> None:
    pod = _pod(
        {"image": "localhost/tool:dev", "env": [{"name": "MODE", "value": "fast"}], **container}
    )
    spec = podspec.container_spec(
        pod, "localhost/tool:dev", IMAGE_CONFIG, _secret, _config_map, {}, "/host/term"
    )
    assert spec.argv == argv
    # buildah puts the image's own environment under the container's.
    assert spec.env == {"HOSTNAME": "p", "MODE": "fast"}


def test_an_image_s_container_gets_its_volumes_user_and_a_termination_file_it_can_bind() -> None:
    pod = _pod(
        {
            "image": "localhost/tool:dev",
            "command": ["tool", "--message=/dev/termination-log"],
            "env": [
                {"name": "MESSAGE", "value": "/dev/termination-log"},
                {"name": "S", "valueFrom": {"secretKeyRef": {"name": "creds", "key": "key"}}},
            ],
            "securityContext": {"runAsUser": 2000},
            "workingDir": "/work",
        },
        securityContext={"runAsUser": 1500, "runAsGroup": 1500},
    )
    spec = podspec.container_spec(
        pod,
        "localhost/tool:dev",
        IMAGE_CONFIG,
        _secret,
        _config_map,
        {"/data": "/host/data"},
        "/host/term",
    )
    moved = podspec.IMAGE_TERMINATION_MESSAGE_PATH
    assert spec.argv == ["tool", f"--message={moved}"]
    assert spec.env["MESSAGE"] == moved
    assert spec.env["S"] == "sv"
    assert spec.mounts == {"/data": "/host/data", moved: "/host/term"}
    assert spec.user == "2000:1500"
    assert spec.working_dir == "/work"


def test_only_this_machine_s_images_run_in_an_image() -> None:
    assert podspec.local_image(_pod({"image": "localhost/kubetune-trainer:dev"})) == (
        "localhost/kubetune-trainer:dev"
    )
    assert podspec.local_image(_pod({"image": "ghcr.io/kubetune/trainer:0.1.0"})) is None
    assert podspec.local_image(_pod({})) is None


def test_an_image_without_entrypoint_and_a_container_without_command_cannot_run() -> None:
    with pytest.raises(podspec.PodConfigError, match="no entrypoint"):
        podspec.container_spec(
            _pod({"image": "localhost/x:1"}), "localhost/x:1", {}, _secret, _config_map, {}, "/t"
        )


@pytest.mark.parametrize(
    ("image_user", "context", "error"),
    [
        ("1000:1000", {}, None),
        ("", {"runAsUser": 1000}, None),
        ("", {}, "image will run as root"),
        ("0:0", {}, "image will run as root"),
        ("1000", {"runAsUser": 0}, "image will run as root"),
        ("kubetune", {}, "non-numeric user (kubetune)"),
    ],
)
def test_run_as_non_root_is_checked_as_kubelet_does(
    image_user: str, context: dict[str, Any], error: str | None
) -> None:
    pod = _pod(
        {"image": "localhost/x:1", "securityContext": context},
        securityContext={"runAsNonRoot": True},
    )
    config = {**IMAGE_CONFIG, "User": image_user}
    if error is None:
        podspec.container_spec(pod, "localhost/x:1", config, _secret, _config_map, {}, "/t")
    else:
        with pytest.raises(podspec.PodConfigError, match=re.escape(error)):
            podspec.container_spec(pod, "localhost/x:1", config, _secret, _config_map, {}, "/t")
