"""Shared fixtures: one devcluster per test run, a namespace and a bucket per test.

The cluster starts only when a test asks for it, so unit tests stay fast. Nothing here
skips: a component that cannot start fails the tests that need it, with its log.
"""

from __future__ import annotations

import os
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import boto3
import pytest
from kubernetes import client, config
from xdist.scheduler import LoadScopeScheduling

from devcluster import build, cluster
from devcluster.state import ClusterInfo

# The operator, CRDs and data fixtures of the e2e suite, shared by every directory that
# needs them (e2e, helm, faults): one plugin, so one operator per session.
pytest_plugins = ["tests.e2e.fixtures"]


def pytest_configure(config: pytest.Config) -> None:
    """Each xdist worker gets its share of the cores for PyTorch's threads (set before any
    test imports torch): a thread per core in every worker oversubscribes them. Triton
    kernels run in its interpreter."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // workers)))
    # Triton's interpreter runs Triton kernels on CPU tensors, where tests call them (the
    # trainer runs its own on CUDA only). Triton reads this when it is imported, and
    # transformers imports it, so it is set before any test module is.
    os.environ.setdefault("TRITON_INTERPRET", "1")


@pytest.fixture(scope="session")
def devcluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ClusterInfo]:
    state_dir = Path(
        os.environ.get("KUBETUNE_TEST_STATE_DIR") or tmp_path_factory.mktemp("devcluster")
    )
    info = cluster.up(state_dir, quiet=True)
    try:
        yield info
    finally:
        cluster.down(state_dir)


@pytest.fixture(scope="session")
def kube_api(devcluster: ClusterInfo) -> client.ApiClient:
    return config.new_client_from_config(config_file=str(devcluster.kubeconfig))


@pytest.fixture(scope="session")
def core(kube_api: client.ApiClient) -> client.CoreV1Api:
    return client.CoreV1Api(kube_api)


@pytest.fixture(scope="session")
def batch(kube_api: client.ApiClient) -> client.BatchV1Api:
    return client.BatchV1Api(kube_api)


@pytest.fixture
def namespace(core: client.CoreV1Api, request: pytest.FixtureRequest) -> Iterator[str]:
    name = f"t-{request.node.name[:40].lower().replace('_', '-').strip('-')}-{uuid.uuid4().hex[:6]}"
    core.create_namespace({"metadata": {"name": name}})
    yield name
    core.delete_namespace(name, propagation_policy="Background")


@pytest.fixture(scope="session")
def s3(devcluster: ClusterInfo):  # type: ignore[no-untyped-def]
    return boto3.client(
        "s3",
        endpoint_url=devcluster.s3_endpoint,
        aws_access_key_id=devcluster.s3_access_key,
        aws_secret_access_key=devcluster.s3_secret_key,
        region_name=devcluster.s3_region,
    )


@pytest.fixture
def bucket(s3) -> str:  # type: ignore[no-untyped-def]
    name = f"test-{uuid.uuid4().hex[:12]}"
    s3.create_bucket(Bucket=name)
    return name


class Kubectl:
    """kubectl from the devcluster's cache, pointed at the test cluster."""

    def __init__(self, info: ClusterInfo) -> None:
        self.binary = str(build.KUBERNETES.path("kubectl"))
        self.env = {**os.environ, **info.env()}

    def __call__(
        self, *args: str, input: str | None = None, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [self.binary, *args],
            input=input,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        if check and result.returncode != 0:
            raise AssertionError(f"kubectl {' '.join(args)} failed: {result.stderr}")
        return result


@pytest.fixture(scope="session")
def kubectl(devcluster: ClusterInfo) -> Kubectl:
    return Kubectl(devcluster)


SHARED_CLUSTER_GROUPS = ("demo", "helm", "faults")
"""Test directories whose tests share a cluster of their own (package-scoped fixtures):
under pytest-xdist each runs whole on one worker, and first, as they are the longest."""
SHARED_FIXTURE_MODULES = ("tests/trainer/test_training.py",)
"""Test modules whose tests share a costly module-scoped fixture (a whole trial): on one
worker the fixture runs once, not once per worker."""
IMAGE_MODULES = ("tests/trainer_image/test_image.py", "tests/operator/test_image.py")
"""Test modules that build images: one worker runs them all, so that two builds never
share (and prune) buildah's store at once."""
IMAGE_GROUP = "images"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Tests that use the cluster are e2e tests, so `-m "not e2e"` selects the fast ones."""
    for item in items:
        if "devcluster" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.e2e)
    groups = (*SHARED_CLUSTER_GROUPS, IMAGE_GROUP, *SHARED_FIXTURE_MODULES)
    order = {group: rank for rank, group in enumerate(groups)}
    items.sort(key=lambda item: order.get(worker_group(item.nodeid) or "", len(order)))


def worker_group(nodeid: str) -> str | None:
    """The tests that must share one worker: `helm` for `tests/helm/test_x.py::test_y`, the
    module for a test of `SHARED_FIXTURE_MODULES`, `images` for those of `IMAGE_MODULES`;
    None for a test that may go anywhere."""
    module = nodeid.split("::", 1)[0]
    if module in SHARED_FIXTURE_MODULES:
        return module
    if module in IMAGE_MODULES:
        return IMAGE_GROUP
    parts = module.split("/")
    in_tests = len(parts) > 2 and parts[0] == "tests"
    return parts[1] if in_tests and parts[1] in SHARED_CLUSTER_GROUPS else None


class SharedScopeScheduling(LoadScopeScheduling):
    """Each group of `worker_group` goes whole to one worker; every other test on its own.
    (pytest-xdist's `loadgroup` cannot be used: it renames items to group them, which
    pytest 9 ignores.)"""

    def _split_scope(self, nodeid: str) -> str:
        return worker_group(nodeid) or nodeid


# optional: `-p no:xdist` runs the suite without xdist, and so without this hook
@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log: object) -> SharedScopeScheduling:
    return SharedScopeScheduling(config, log)
