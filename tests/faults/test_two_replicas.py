"""Two operator replicas at once: only the Lease holder acts; when it is killed -9 in the
middle of a task, the standby takes over within the lease duration and finishes the task,
with each Job created once; a clean shutdown hands the Lease back at once. (Stand-in
trainer: the trials are short, the election is what is tested.)"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from tests.conftest import Kubectl
from tests.e2e.fixtures import OperatorProcess
from tests.faults.checks import assert_recovered
from tests.faults.conftest import StandinCluster, standin_lineage
from tests.support import wait_for

LEASE = "kubetune-ha"
LEASE_SECONDS = 6


def _holder(kubectl: Kubectl, namespace: str) -> str:
    result = kubectl("get", "lease", LEASE, "-n", namespace, "-o", "json", check=False)
    if result.returncode != 0:
        return ""
    return str(json.loads(result.stdout)["spec"].get("holderIdentity") or "")


TENANT = "two-replicas"


@pytest.fixture
def replicas(standin: StandinCluster, tmp_path: Path) -> Iterator[dict[str, OperatorProcess]]:
    """Replicas `a` and `b` in place of the cluster's operator, electing through a Lease in
    the tenant namespace (a short lease, so the takeover fits a test)."""
    standin.operator.stop()
    standin.tenant(TENANT)
    started: dict[str, OperatorProcess] = {}
    for name in ("a", "b"):
        process = OperatorProcess(standin.info, tmp_path / f"replica-{name}.log")
        process.env.update(
            KUBETUNE_LEADER_ELECTION="true",
            KUBETUNE_OPERATOR_NAMESPACE=TENANT,
            KUBETUNE_LEASE_NAME=LEASE,
            KUBETUNE_POD_NAME=f"replica-{name}",
            KUBETUNE_LEASE_DURATION_SECONDS=str(LEASE_SECONDS),
        )
        started[name] = process
    try:
        yield started
    finally:
        for process in started.values():
            process.kill()
        standin.operator.start()


def test_standby_takes_over_from_a_killed_leader(
    replicas: dict[str, OperatorProcess], standin: StandinCluster
) -> None:
    kubectl, tenant = standin.kubectl, TENANT
    leader, standby = replicas["a"], replicas["b"]
    leader.start()
    wait_for(lambda: _holder(kubectl, tenant).startswith("replica-a_"), "a to lead", 60)
    standby.start()
    wait_for(lambda: "waiting for the lease" in standby.log(), "b to stand by", 60)

    model, task = standin_lineage(0, 4)
    task["spec"]["hyperparameters"]["parallelTrials"] = 1  # four trials in turn: a longer run
    kubectl("apply", "-n", tenant, "-f", "-", input=yaml.safe_dump_all([model, task]))
    wait_for(
        lambda: kubectl("get", "jobs", "-n", tenant, "-o", "name").stdout.strip(),
        "the leader's first Job",
        300,
    )
    assert _holder(kubectl, tenant).startswith("replica-a_")
    assert "acquired the lease" not in standby.log()

    leader.kill()
    killed_at = time.monotonic()
    wait_for(lambda: _holder(kubectl, tenant).startswith("replica-b_"), "b to take over", 60)
    takeover = time.monotonic() - killed_at
    # b waits out the lease from when it last saw a change, so at most a lease and a poll.
    assert takeover < LEASE_SECONDS + 5, takeover

    assert_recovered(kubectl, standin.s3(), standin.info, tenant, "task-00", "m-00")
    transitions = json.loads(kubectl("get", "lease", LEASE, "-n", tenant, "-o", "json").stdout)[
        "spec"
    ]["leaseTransitions"]
    assert transitions == 1

    standby.stop()
    assert _holder(kubectl, tenant) == "", "a clean shutdown releases the lease"
    assert "released the lease" in standby.log()
