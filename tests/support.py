"""Small helpers shared by tests: polling with a clear failure message, Job manifests, image
builds that fail with their log."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest

from devcluster import images

T = TypeVar("T")


def wait_for(
    probe: Callable[[], T | None], what: str, timeout: float = 60, interval: float = 0.3
) -> T:
    """Call ``probe`` until it returns something truthy; fail naming ``what`` otherwise."""
    deadline = time.monotonic() + timeout
    last: T | None = None
    while time.monotonic() < deadline:
        last = probe()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what} (last: {last!r})")


def job_manifest(
    name: str,
    command: list[str],
    *,
    backoff_limit: int = 0,
    active_deadline: int | None = None,
    env: list[dict[str, Any]] | None = None,
    volumes: list[dict[str, Any]] | None = None,
    mounts: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    container: dict[str, Any] = {
        "name": "main",
        "image": "python:3.11",
        "command": command,
        "env": env or [],
        "volumeMounts": mounts or [],
    }
    spec: dict[str, Any] = {
        "backoffLimit": backoff_limit,
        "template": {
            "spec": {"restartPolicy": "Never", "containers": [container], "volumes": volumes or []}
        },
    }
    if active_deadline is not None:
        spec["activeDeadlineSeconds"] = active_deadline
    return {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": name}, "spec": spec}


def built_image(recipe: images.ImageRecipe, log_path: Path) -> str:
    """Builds the image (cached layers make a rebuild quick); a failure shows the end of
    the build's log."""
    with log_path.open("w") as log:
        try:
            return images.build_image(recipe, log=log)
        except images.ImageError as error:
            tail = log_path.read_text()[-6000:]
            pytest.fail(f"{error}\n--- build log (end) ---\n{tail}")


SECRET_WORDS = ("SECRET", "PASSWORD", "TOKEN", "ACCESS_KEY", "CREDENTIAL")


def secret_like_env(image_config: dict[str, Any]) -> list[str]:
    """Names in an image's baked-in environment that look like credentials or S3 settings:
    those must come from the pod, never from the image."""
    names = [variable.split("=", 1)[0] for variable in image_config.get("Env") or []]
    return [
        name
        for name in names
        if name.startswith("AWS_") or any(word in name for word in SECRET_WORDS)
    ]
