"""Where a running devcluster keeps its files, and what it records about itself.

Everything a devcluster writes (data, certificates, logs, the kubeconfig, the env file
and the list of processes it started) lives under one state directory, so ``down``
can stop every process and remove every file, and tests can run a cluster of their own
beside a developer's.
"""

from __future__ import annotations

import json
import os
import random
import socket
from dataclasses import asdict, dataclass, field
from pathlib import Path


def default_state_dir() -> Path:
    configured = os.environ.get("DEVCLUSTER_STATE_DIR")
    if configured:
        return Path(configured)
    xdg = os.environ.get("XDG_STATE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".local" / "state") / "kubetune" / "devcluster"


EPHEMERAL_RANGE_FILE = Path("/proc/sys/net/ipv4/ip_local_port_range")
_handed_out: set[int] = set()
# Not the global generator: a test that seeds it would give every worker the same ports.
_chooser = random.SystemRandom()


def ephemeral_ports() -> range:
    """The ports the kernel gives outgoing connections."""
    try:
        low, high = (int(p) for p in EPHEMERAL_RANGE_FILE.read_text().split())
    except (OSError, ValueError):
        low, high = 32768, 60999
    return range(low, high + 1)


def free_port() -> int:
    """A port nothing listens on, chosen outside the ephemeral range.

    A listener starts seconds after its port is chosen. A port from the ephemeral range
    can meanwhile become the local end of some client's connection (a watch lasts
    minutes), and the listener then fails with "Address already in use"."""
    ephemeral = ephemeral_ports()
    below = range(max(1024, ephemeral.start - 20_000), ephemeral.start)
    candidates = [*below, *range(ephemeral.stop, 65_536)]
    if not candidates:  # the whole range is ephemeral: take the kernel's choice, and the race
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind(("127.0.0.1", 0))
            return int(s.getsockname()[1])
    for _ in range(1000):
        port = _chooser.choice(candidates)
        if port in _handed_out:
            continue
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind(("0.0.0.0", port))
            except OSError:
                continue
        _handed_out.add(port)
        return port
    raise RuntimeError(f"no free port outside the ephemeral range {ephemeral}")


@dataclass
class ClusterInfo:
    """What ``up`` started: addresses, credentials for local use, and process ids."""

    state_dir: str
    kubernetes_version: str
    apiserver_url: str
    etcd_url: str
    s3_endpoint: str
    s3_access_key: str
    s3_secret_key: str
    s3_region: str
    mlflow_uri: str
    mlflow_artifacts_bucket: str
    node_name: str
    processes: dict[str, int] = field(default_factory=dict)
    etcd_peer_url: str = ""
    """Empty in state written before control-plane restarts existed."""

    @property
    def kubeconfig(self) -> Path:
        return Path(self.state_dir) / "kubeconfig"

    @property
    def env_file(self) -> Path:
        return Path(self.state_dir) / "env"

    def env(self) -> dict[str, str]:
        """Environment a client process needs to reach every component."""
        return {
            "KUBECONFIG": str(self.kubeconfig),
            "AWS_ENDPOINT_URL_S3": self.s3_endpoint,
            "AWS_ACCESS_KEY_ID": self.s3_access_key,
            "AWS_SECRET_ACCESS_KEY": self.s3_secret_key,
            "AWS_DEFAULT_REGION": self.s3_region,
            "MLFLOW_TRACKING_URI": self.mlflow_uri,
            "MLFLOW_S3_ENDPOINT_URL": self.s3_endpoint,
            "DEVCLUSTER_STATE_DIR": self.state_dir,
        }

    def save(self) -> None:
        path = Path(self.state_dir) / "cluster.json"
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(self), indent=2))
        tmp.replace(path)
        lines = [f"export {k}={v}" for k, v in sorted(self.env().items())]
        self.env_file.write_text("\n".join(lines) + "\n")

    @classmethod
    def load(cls, state_dir: Path) -> ClusterInfo | None:
        path = state_dir / "cluster.json"
        if not path.exists():
            return None
        return cls(**json.loads(path.read_text()))
