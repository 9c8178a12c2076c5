"""Read the apiserver's audit log: the ground truth of which requests reached the cluster.

Tests use it to prove that no Job was ever created twice, and benchmarks to count the
operator's requests per trial.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any


def events(state_dir: Path) -> Iterator[dict[str, Any]]:
    """Every completed request, oldest first (rotated files included)."""
    logs = state_dir / "logs"
    files = [*sorted(logs.glob("audit-*.log")), logs / "audit.log"]
    for path in files:
        if not path.exists():
            continue
        with path.open() as lines:
            for line in lines:
                if line.strip():
                    yield json.loads(line)


def successful_creates(state_dir: Path, resource: str, namespace: str) -> Counter[str]:
    """How many times each object name of `resource` was created in `namespace`."""
    created: Counter[str] = Counter()
    for event in events(state_dir):
        ref = event.get("objectRef") or {}
        if (
            event.get("verb") == "create"
            and ref.get("resource") == resource
            and ref.get("namespace") == namespace
            and not ref.get("subresource")
            and (event.get("responseStatus") or {}).get("code") == 201
        ):
            created[ref.get("name", "")] += 1
    return created
