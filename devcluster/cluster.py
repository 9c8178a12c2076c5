"""Bring a devcluster up and down: etcd, kube-apiserver, kube-controller-manager,
versitygw (S3), an MLflow tracking server and the node agent, all on loopback.

``up`` is idempotent: a cluster whose processes are all alive is reused. ``down`` stops
every process group it recorded, kills pod processes the node agent left behind, and
removes the state directory.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import ssl
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from devcluster import build
from devcluster.processes import kill_group, spawn, stop_group, wait_until
from devcluster.state import ClusterInfo, free_port

NODE_NAME = "devcluster-node"
MLFLOW_BUCKET = "mlflow-artifacts"
ADMIN_USER = "devcluster-admin"


def _require_openssl() -> str:
    openssl = shutil.which("openssl")
    if openssl is None:
        raise build.MissingPrerequisiteError(
            "openssl is not installed: install it (Debian: `apt-get install openssl`); "
            "devcluster uses it to make the apiserver's certificates and keys."
        )
    return openssl


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run([_require_openssl(), *args], cwd=cwd, check=True, capture_output=True)


def _make_pki(pki: Path) -> None:
    """A CA, an apiserver serving certificate signed by it, and the service-account key."""
    pki.mkdir(parents=True, exist_ok=True)
    _openssl(
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "ca.key",
        "-out",
        "ca.crt",
        "-days",
        "3650",
        "-subj",
        "/CN=devcluster-ca",
        cwd=pki,
    )
    _openssl(
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "apiserver.key",
        "-out",
        "apiserver.csr",
        "-subj",
        "/CN=kube-apiserver",
        cwd=pki,
    )
    (pki / "san.ext").write_text(
        "subjectAltName=IP:127.0.0.1,IP:10.0.0.1,DNS:localhost,DNS:kubernetes,"
        "DNS:kubernetes.default,DNS:kubernetes.default.svc\n"
    )
    _openssl(
        "x509",
        "-req",
        "-in",
        "apiserver.csr",
        "-CA",
        "ca.crt",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "apiserver.crt",
        "-days",
        "3650",
        "-extfile",
        "san.ext",
        cwd=pki,
    )
    _openssl("genrsa", "-out", "sa.key", "2048", cwd=pki)
    _openssl("rsa", "-in", "sa.key", "-pubout", "-out", "sa.pub", cwd=pki)


def _write_kubeconfig(path: Path, server: str, ca: Path, token: str) -> None:
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {"name": "devcluster", "cluster": {"server": server, "certificate-authority": str(ca)}}
        ],
        "users": [{"name": ADMIN_USER, "user": {"token": token}}],
        "contexts": [
            {
                "name": "devcluster",
                "context": {"cluster": "devcluster", "user": ADMIN_USER, "namespace": "default"},
            }
        ],
        "current-context": "devcluster",
    }
    path.write_text(json.dumps(config, indent=2))
    path.chmod(0o600)


def _https_get(url: str, ca: Path, token: str) -> bytes:
    context = ssl.create_default_context(cafile=str(ca))
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(request, context=context, timeout=5) as response:
        return bytes(response.read())


def _http_ok(url: str) -> bool:
    with urllib.request.urlopen(url, timeout=5) as response:
        return bool(response.status == 200)


def is_running(info: ClusterInfo) -> bool:
    from devcluster.processes import is_alive

    return bool(info.processes) and all(is_alive(pid) for pid in info.processes.values())


def up(state_dir: Path, gpus: int = 4, quiet: bool = False) -> ClusterInfo:
    existing = ClusterInfo.load(state_dir)
    if existing is not None:
        if is_running(existing):
            return existing
        down(state_dir)
    binaries = build.ensure_all(progress=not quiet)
    state_dir.mkdir(parents=True, exist_ok=True)
    logs = state_dir / "logs"
    pki = state_dir / "pki"
    _make_pki(pki)
    token = secrets.token_hex(24)
    (pki / "tokens.csv").write_text(f'{token},{ADMIN_USER},{ADMIN_USER},"system:masters"\n')
    # Random like the secret key: tests grep statuses, Events and logs for both, and a
    # fixed word would turn up in paths and names everywhere.
    s3_access = f"devcluster-{secrets.token_hex(8)}"
    s3_secret = secrets.token_hex(16)

    etcd_port, etcd_peer = free_port(), free_port()
    api_port, s3_port, mlflow_port = free_port(), free_port(), free_port()
    info = ClusterInfo(
        state_dir=str(state_dir),
        kubernetes_version=build.KUBERNETES_VERSION,
        apiserver_url=f"https://127.0.0.1:{api_port}",
        etcd_url=f"http://127.0.0.1:{etcd_port}",
        etcd_peer_url=f"http://127.0.0.1:{etcd_peer}",
        s3_endpoint=f"http://127.0.0.1:{s3_port}",
        s3_access_key=s3_access,
        s3_secret_key=s3_secret,
        s3_region="us-east-1",
        mlflow_uri=f"http://127.0.0.1:{mlflow_port}",
        mlflow_artifacts_bucket=MLFLOW_BUCKET,
        node_name=NODE_NAME,
    )
    # Record each process as soon as it starts, so a failure half-way is cleaned by down().
    info.save()
    try:
        _start_all(info, binaries, logs, pki, token, gpus)
    except BaseException:
        down(state_dir)
        raise
    info.save()
    return info


def _start_etcd(info: ClusterInfo, binaries: Path, logs: Path) -> None:
    """etcd on the recorded ports and data directory (a restart keeps every object)."""
    state_dir = Path(info.state_dir)
    peer = info.etcd_peer_url
    etcd = spawn(
        "etcd",
        [
            str(binaries / "etcd"),
            "--name",
            "devcluster",
            "--data-dir",
            str(state_dir / "etcd"),
            "--listen-client-urls",
            info.etcd_url,
            "--advertise-client-urls",
            info.etcd_url,
            "--listen-peer-urls",
            peer,
            "--initial-advertise-peer-urls",
            peer,
            "--initial-cluster",
            f"devcluster={peer}",
            "--unsafe-no-fsync",
            "--quota-backend-bytes",
            str(4 * 1024**3),
        ],
        logs,
    )
    _record(info, "etcd", etcd.pid)
    wait_until(lambda: _http_ok(f"{info.etcd_url}/health"), "etcd", 30, etcd, logs / "etcd.log")


def _start_apiserver(info: ClusterInfo, binaries: Path, logs: Path, pki: Path, token: str) -> None:
    api_port = info.apiserver_url.rsplit(":", 1)[1]
    pki_ca = pki / "ca.crt"
    apiserver = spawn(
        "kube-apiserver",
        [
            str(binaries / "kube-apiserver"),
            "--etcd-servers",
            info.etcd_url,
            "--secure-port",
            api_port,
            "--bind-address",
            "127.0.0.1",
            "--advertise-address",
            "127.0.0.1",
            "--tls-cert-file",
            str(pki / "apiserver.crt"),
            "--tls-private-key-file",
            str(pki / "apiserver.key"),
            "--client-ca-file",
            str(pki / "ca.crt"),
            "--token-auth-file",
            str(pki / "tokens.csv"),
            "--service-cluster-ip-range",
            "10.0.0.0/24",
            "--service-account-issuer",
            "https://kubernetes.default.svc",
            "--service-account-key-file",
            str(pki / "sa.pub"),
            "--service-account-signing-key-file",
            str(pki / "sa.key"),
            "--authorization-mode",
            "RBAC",
            "--allow-privileged=true",
            "--disable-admission-plugins",
            "ServiceAccount",
            "--endpoint-reconciler-type",
            "none",
            "--audit-policy-file",
            str(_write_audit_policy(pki)),
            "--audit-log-path",
            str(logs / "audit.log"),
            "--audit-log-maxsize",
            "200",
        ],
        logs,
    )
    _record(info, "kube-apiserver", apiserver.pid)
    wait_until(
        lambda: _https_get(f"{info.apiserver_url}/readyz", pki_ca, token) == b"ok",
        "kube-apiserver",
        90,
        apiserver,
        logs / "kube-apiserver.log",
    )


def _start_all(
    info: ClusterInfo,
    binaries: dict[str, Path],
    logs: Path,
    pki: Path,
    token: str,
    gpus: int,
) -> None:
    state_dir = Path(info.state_dir)
    _start_etcd(info, binaries["etcd"], logs)
    _start_apiserver(info, binaries["kubernetes"], logs, pki, token)
    ca = pki / "ca.crt"
    _write_kubeconfig(info.kubeconfig, info.apiserver_url, ca, token)

    controller_manager = spawn(
        "kube-controller-manager",
        [
            str(binaries["kubernetes"] / "kube-controller-manager"),
            "--kubeconfig",
            str(info.kubeconfig),
            "--leader-elect=false",
            "--secure-port=0",
            "--controllers=job-controller,garbage-collector-controller,namespace-controller,"
            "ttl-after-finished-controller,serviceaccount-controller,resourcequota-controller",
            "--concurrent-job-syncs",
            "20",
        ],
        logs,
    )
    _record(info, "kube-controller-manager", controller_manager.pid)

    s3_data = state_dir / "s3" / "data"
    s3_meta = state_dir / "s3" / "meta"
    s3_data.mkdir(parents=True, exist_ok=True)
    s3_meta.mkdir(parents=True, exist_ok=True)
    s3_port = info.s3_endpoint.rsplit(":", 1)[1]
    versitygw = spawn(
        "versitygw",
        [
            str(binaries["versitygw"] / "versitygw"),
            "--port",
            f"127.0.0.1:{s3_port}",
            "posix",
            "--sidecar",
            str(s3_meta),
            str(s3_data),
        ],
        logs,
        env={"ROOT_ACCESS_KEY": info.s3_access_key, "ROOT_SECRET_KEY": info.s3_secret_key},
    )
    _record(info, "versitygw", versitygw.pid)
    wait_until(
        lambda: _s3_create_bucket(info, MLFLOW_BUCKET),
        "versitygw",
        30,
        versitygw,
        logs / "versitygw.log",
    )

    mlflow_port = info.mlflow_uri.rsplit(":", 1)[1]
    (state_dir / "mlflow").mkdir(exist_ok=True)
    mlflow = spawn(
        "mlflow",
        [
            sys.executable,
            "-m",
            "mlflow",
            "server",
            "--host",
            "127.0.0.1",
            "--port",
            mlflow_port,
            "--workers",
            "1",
            "--backend-store-uri",
            f"sqlite:///{state_dir / 'mlflow' / 'mlflow.db'}",
            "--artifacts-destination",
            f"s3://{MLFLOW_BUCKET}/",
        ],
        logs,
        env={
            # The job runner serves MLflow's GenAI jobs, which Kubetune does not use; it
            # starts eight more Python processes that poll (30 CPU seconds to start, then
            # about 6% of a core).
            "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
            "MLFLOW_S3_ENDPOINT_URL": info.s3_endpoint,
            "AWS_ACCESS_KEY_ID": info.s3_access_key,
            "AWS_SECRET_ACCESS_KEY": info.s3_secret_key,
            "AWS_DEFAULT_REGION": info.s3_region,
        },
    )
    _record(info, "mlflow", mlflow.pid)

    agent = spawn(
        "node-agent",
        [
            sys.executable,
            "-m",
            "devcluster.nodeagent",
            "--kubeconfig",
            str(info.kubeconfig),
            "--state-dir",
            str(state_dir),
            "--node-name",
            info.node_name,
            "--gpus",
            str(gpus),
        ],
        logs,
        env={"PYTHONPATH": _devcluster_pythonpath()},
    )
    _record(info, "node-agent", agent.pid)
    wait_until(
        lambda: _http_ok(f"{info.mlflow_uri}/health"), "mlflow", 120, mlflow, logs / "mlflow.log"
    )
    wait_until(
        lambda: _node_ready(info, ca, token), "node agent", 60, agent, logs / "node-agent.log"
    )
    wait_until(
        lambda: _default_service_account(info, ca, token),
        "kube-controller-manager",
        60,
        controller_manager,
        logs / "kube-controller-manager.log",
    )


POD_PYTHONPATH_ENV = "DEVCLUSTER_POD_PYTHONPATH"
"""Directories put before everything else on the pods' PYTHONPATH: the scale benchmark
shadows `kubetune_trainer` with a stand-in this way, without touching the operator."""


def _devcluster_pythonpath() -> str:
    """This checkout's packages first, so pods run the code under test, not an install."""
    root = Path(__file__).resolve().parent.parent
    paths = [str(root), str(root / "operator"), str(root / "trainer_image")]
    override = os.environ.get(POD_PYTHONPATH_ENV)
    if override:
        paths.insert(0, override)
    existing = os.environ.get("PYTHONPATH")
    return os.pathsep.join([*paths, existing] if existing else paths)


def _write_audit_policy(pki: Path) -> Path:
    """Metadata-level audit of every request: the scale benchmark counts requests here."""
    policy = pki / "audit-policy.yaml"
    policy.write_text(
        "apiVersion: audit.k8s.io/v1\nkind: Policy\nomitStages: [RequestReceived]\n"
        "rules:\n- level: Metadata\n"
    )
    return policy


def _record(info: ClusterInfo, name: str, pid: int) -> None:
    info.processes[name] = pid
    info.save()


def _s3_create_bucket(info: ClusterInfo, bucket: str) -> bool:
    import boto3
    from botocore.exceptions import ClientError

    client = boto3.client(
        "s3",
        endpoint_url=info.s3_endpoint,
        aws_access_key_id=info.s3_access_key,
        aws_secret_access_key=info.s3_secret_key,
        region_name=info.s3_region,
    )
    try:
        client.create_bucket(Bucket=bucket)
    except ClientError as error:
        if error.response["Error"]["Code"] not in (
            "BucketAlreadyOwnedByYou",
            "BucketAlreadyExists",
        ):
            raise
    return True


def _node_ready(info: ClusterInfo, ca: Path, token: str) -> bool:
    node = json.loads(_https_get(f"{info.apiserver_url}/api/v1/nodes/{info.node_name}", ca, token))
    conditions = node.get("status", {}).get("conditions", [])
    return any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)


def _default_service_account(info: ClusterInfo, ca: Path, token: str) -> bool:
    _https_get(f"{info.apiserver_url}/api/v1/namespaces/default/serviceaccounts/default", ca, token)
    return True


def down(state_dir: Path) -> None:
    """Stop everything a devcluster in ``state_dir`` started and remove its files."""
    from devcluster.nodeagent.cpu import remove_pod_cgroup
    from devcluster.nodeagent.pods import kill_recorded_pods

    info = ClusterInfo.load(state_dir)
    if info is not None:
        # Node agent first, so it stops no pod twice; then clients before their servers.
        order = [
            "node-agent",
            "mlflow",
            "kube-controller-manager",
            "kube-apiserver",
            "versitygw",
            "etcd",
        ]
        names = sorted(info.processes, key=lambda n: order.index(n) if n in order else -1)
        for name in names:
            stop_group(info.processes[name])
    kill_recorded_pods(state_dir)
    remove_pod_cgroup(state_dir)
    if state_dir.exists():
        shutil.rmtree(state_dir, ignore_errors=True)


def restart_control_plane(info: ClusterInfo) -> None:
    """Kill -9 kube-apiserver and etcd, then start them again on the same ports and data,
    as after a control-plane node's crash; clients must ride it out on their own."""
    for name in ("kube-apiserver", "etcd"):
        kill_group(info.processes[name])
    binaries = build.ensure_all(progress=False)
    state_dir = Path(info.state_dir)
    pki = state_dir / "pki"
    _start_etcd(info, binaries["etcd"], state_dir / "logs")
    _start_apiserver(info, binaries["kubernetes"], state_dir / "logs", pki, _admin_token(info))


def wait_for_version(info: ClusterInfo, timeout: float = 10) -> dict[str, str]:
    token = _admin_token(info)
    deadline = time.monotonic() + timeout
    while True:
        try:
            body = _https_get(
                f"{info.apiserver_url}/version", Path(info.state_dir) / "pki" / "ca.crt", token
            )
            return dict(json.loads(body))
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def _admin_token(info: ClusterInfo) -> str:
    line = (Path(info.state_dir) / "pki" / "tokens.csv").read_text().splitlines()[0]
    return line.split(",", 1)[0]
