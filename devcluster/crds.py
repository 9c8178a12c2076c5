"""Install CustomResourceDefinitions and wait until the apiserver serves them.

`kubectl wait --for=condition=Established crd --all` fails outright, rather than waiting,
when it reads a CRD whose status has no conditions yet, which happens right after the
apply. So readiness is polled here from the objects themselves.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

from devcluster import build
from devcluster.processes import wait_until
from devcluster.state import ClusterInfo


def _kubectl(info: ClusterInfo, *args: str) -> str:
    result = subprocess.run(
        [str(build.KUBERNETES.path("kubectl")), *args],
        env={**os.environ, **info.env()},
        capture_output=True,
        text=True,
        timeout=120,
    )
    if result.returncode != 0:
        raise RuntimeError(f"kubectl {' '.join(args)} failed: {result.stderr.strip()}")
    return result.stdout


def _established(crd: dict[str, Any]) -> bool:
    conditions = (crd.get("status") or {}).get("conditions") or []
    return any(c["type"] == "Established" and c["status"] == "True" for c in conditions)


def install(info: ClusterInfo, directory: Path, timeout: float = 60) -> None:
    """Server-side apply every CRD in `directory`, then wait for each to be Established."""
    _kubectl(info, "apply", "--server-side", "-f", str(directory))

    def all_established() -> bool:
        listed = json.loads(_kubectl(info, "get", "-f", str(directory), "-o", "json"))
        return all(_established(crd) for crd in listed["items"])

    wait_until(all_established, f"the CRDs of {directory}", timeout)
