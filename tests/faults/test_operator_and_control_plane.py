"""The operator killed -9 at random moments while 20 tasks run, and the control plane
(kube-apiserver and etcd) killed -9 and restarted mid-run: every task still Succeeds,
no Job is created twice, and every lineage points at a complete iteration. Trials run
the stand-in trainer, so the tasks are many and quick."""

from __future__ import annotations

import random
import time

import yaml

from devcluster import cluster
from tests.faults.checks import assert_recovered
from tests.faults.conftest import StandinCluster, standin_lineage
from tests.support import wait_for

TASKS = 20
TRIALS = 3


def _apply_lineages(standin: StandinCluster, namespace: str, count: int) -> None:
    standin.tenant(namespace)
    objects = [o for i in range(count) for o in standin_lineage(i, TRIALS)]
    standin.kubectl("apply", "-n", namespace, "-f", "-", input=yaml.safe_dump_all(objects))


def _all_recovered(standin: StandinCluster, namespace: str, count: int) -> None:
    wait_for(
        lambda: (
            (p := standin.phases(namespace))
            and all(v in ("Succeeded", "Failed") for v in p.values())
        ),
        "every task to finish",
        600,
        2,
    )
    for i in range(count):
        assert_recovered(standin.kubectl, standin.s3(), standin.info, namespace,
                         f"task-{i:02d}", f"m-{i:02d}")  # fmt: skip


def test_operator_killed_at_random_moments_during_20_tasks(standin: StandinCluster) -> None:
    namespace = "kill-operator"
    _apply_lineages(standin, namespace, TASKS)
    rng = random.Random(20261122)
    kills = 0
    while kills < 6 and not all(v == "Succeeded" for v in standin.phases(namespace).values()):
        time.sleep(rng.uniform(0.5, 6))
        standin.operator.kill()
        kills += 1
        time.sleep(rng.uniform(0, 2))
        standin.operator.start()
    assert kills >= 3, "the tasks finished before the operator was killed a few times"
    _all_recovered(standin, namespace, TASKS)


def test_control_plane_restarted_mid_run(standin: StandinCluster) -> None:
    namespace = "restart-control-plane"
    _apply_lineages(standin, namespace, 5)
    wait_for(
        lambda: standin.kubectl("get", "jobs", "-n", namespace, "-o", "name").stdout.strip(),
        "the first trial Jobs",
        120,
    )
    cluster.restart_control_plane(standin.info)
    _all_recovered(standin, namespace, 5)
    assert standin.operator.process is not None and standin.operator.process.poll() is None
