"""How much memory the trainer's data may take, from the container's limit.

`data.load_data` holds every example in memory (training shuffles, sorts by length and
splits by anchor across the whole set), so a dataset larger than memory would get the Pod
OOM-killed, which Kubernetes retries and reports without a word about the data. Instead
the reader counts what it keeps against a `MemoryBudget` and stops with an `InputError`
(bad input, not retried) that says how much it read, where, and which limit applies.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from kubetune_trainer.errors import InputError

CGROUP_ROOT = Path("/sys/fs/cgroup")
DATA_SHARE = 0.5
"""Share of the memory limit the examples may take: the model, the optimizer state and
the tokenized batches need the rest."""
_UNLIMITED = 1 << 62
"""cgroup v1 reports "no limit" as a huge page-aligned number (about 2**63)."""
MIB = 1024 * 1024


@dataclass(frozen=True)
class MemoryLimit:
    """A memory limit in bytes and where it comes from (for the error message)."""

    bytes: int
    source: str


def _cgroup_limit(root: Path) -> MemoryLimit | None:
    for relative in ("memory.max", "memory/memory.limit_in_bytes"):
        path = root / relative
        try:
            text = path.read_text().strip()
        except OSError:
            continue
        if text == "max" or not text.isdigit() or int(text) >= _UNLIMITED:
            return None
        return MemoryLimit(int(text), f"the container's memory limit ({path})")
    return None


def detect_memory_limit(cgroup_root: Path = CGROUP_ROOT) -> MemoryLimit | None:
    """The container's cgroup limit (v2 `memory.max`, v1 `memory.limit_in_bytes`), else
    the machine's physical memory, else None when neither can be read."""
    limit = _cgroup_limit(cgroup_root)
    if limit is not None:
        return limit
    try:
        physical = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError):
        return None
    return MemoryLimit(physical, "the machine's physical memory") if physical > 0 else None


class MemoryBudget:
    """Counts the bytes the kept examples take; `add` raises once they exceed the share
    of the limit that data may use. Without a limit it only counts."""

    def __init__(self, limit: MemoryLimit | None, share: float = DATA_SHARE) -> None:
        self.limit = limit
        self.allowed = None if limit is None else int(limit.bytes * share)
        self.share = share
        self.used = 0

    def add(self, size: int, location: str) -> None:
        self.used += size
        if self.limit is None or self.allowed is None or self.used <= self.allowed:
            return
        raise InputError(
            f"{location}: the data read so far takes about {self.used / MIB:.1f} MiB in "
            f"memory, more than the {self.allowed / MIB:.1f} MiB ({self.share:.0%} of "
            f"{self.limit.bytes / MIB:.1f} MiB, {self.limit.source}) the examples may use; "
            "use fewer or smaller files, or raise the trainer's memory limit "
            "(spec.trainer.resources.limits.memory)"
        )
