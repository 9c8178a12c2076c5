"""CPU priority of pod processes: below the control plane's, as on a real node.

A node keeps CPU for Kubernetes' own components (kubelet puts pods under a `kubepods`
cgroup; kube-reserved is kept out of it), and an operator never shares its cores with
training pods. On one machine, without this, a burst of trainer processes starves the
apiserver and the operator. So pod processes go into a cgroup of their own whose CPU
weight, all pods together, is a tenth of one ordinary process's, and run at niceness 10.
The cgroup needs the v1 `cpu` controller writable (root); without it, niceness alone.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import time
from pathlib import Path

log = logging.getLogger(__name__)
CPU_CGROUP_ROOT = Path("/sys/fs/cgroup/cpu")
POD_CPU_SHARES = 102
"""The weight of all pods together; an ordinary process in the root group weighs 1024."""
POD_NICENESS = 10


def pod_cgroup(state_dir: Path) -> Path:
    """The cgroup of one devcluster's pods (several devclusters may run at once)."""
    digest = hashlib.sha256(str(state_dir.resolve()).encode()).hexdigest()[:12]
    return CPU_CGROUP_ROOT / f"devcluster-pods-{digest}"


class PodCpu:
    def __init__(self, state_dir: Path) -> None:
        self.cgroup: Path | None = pod_cgroup(state_dir)
        try:
            self.cgroup.mkdir(exist_ok=True)
            (self.cgroup / "cpu.shares").write_text(str(POD_CPU_SHARES))
        except OSError as error:
            log.info("pods run at niceness %d only, without a CPU cgroup: %s", POD_NICENESS, error)
            self.cgroup = None

    def lower(self, pid: int) -> None:
        """Put a just-started pod process (its children follow it) below the control plane."""
        with contextlib.suppress(ProcessLookupError):  # it may have ended already
            os.setpriority(os.PRIO_PROCESS, pid, POD_NICENESS)
        if self.cgroup is not None:
            with contextlib.suppress(OSError):
                (self.cgroup / "cgroup.procs").write_text(str(pid))


def remove_pod_cgroup(state_dir: Path) -> None:
    """After the pod processes were killed: they may take a moment to leave the cgroup,
    which cannot be removed before."""
    cgroup = pod_cgroup(state_dir)
    for _ in range(20):
        if not cgroup.exists():
            return
        try:
            cgroup.rmdir()
            return
        except OSError:
            time.sleep(0.1)
    log.warning("CPU cgroup %s still has processes; left in place", cgroup)
