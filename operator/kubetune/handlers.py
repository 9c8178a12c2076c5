"""Thin kopf adapters: every event about a FineTuningTask, a TunedModel or a trial Job
asks for a reconcile of the object it concerns; `kubetune.workqueue` schedules them.

The handlers react to raw watch events (`kopf.on.event`) rather than kopf's
create/update/delete change detection, so kopf writes nothing onto the objects (no
annotations, no status fields): all progress lives in the status the reconciler writes.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import kopf
from kubernetes import config as kube_config
from kubernetes.client.exceptions import ApiException

from kubetune.api import FINE_TUNING_TASK, GROUP, TUNED_MODEL, VERSION
from kubetune.api.conditions import TERMINAL_PHASES
from kubetune.clients.events import EventRecorder
from kubetune.clients.kube import USER_AGENT, Kube
from kubetune.clients.lease import Leases
from kubetune.clients.s3 import Storage
from kubetune.config import OperatorConfig
from kubetune.effects import Effects
from kubetune.leadership import LeaderElector
from kubetune.manifests import LABEL_TASK
from kubetune.reconcile import Reconciler
from kubetune.workqueue import Priority, Workers, WorkQueue

log = logging.getLogger("kubetune")
JOB_EVENT_DELAY_SECONDS = 1.0
"""A trial Job changes several times within a second as its Pod starts or ends (active,
ready, conditions, completion time); one reconcile a little later sees them all."""
EVENT_FLUSH_SECONDS = 5.0
"""At shutdown, how long Events still waiting may take to be posted."""


class Operator:
    """The wiring: configuration, clients, the reconciler and one queue per kind."""

    def __init__(self, config: OperatorConfig) -> None:
        # One connection per reconcile thread, plus the Event poster and the leader elector:
        # a smaller pool drops connections, and each new one costs a TLS handshake.
        api = _api_client(pool_size=config.workers + 2)
        kube = Kube(api)
        self.config = config
        self.events = EventRecorder(kube)
        self.reconciler = Reconciler(kube, Effects(kube), config, self.events.record)
        election = config.leader_election
        self.elector = (
            LeaderElector(Leases(api, election.namespace, election.lease_name), election)
            if election
            else None
        )
        gate = self.elector.wait_leader if self.elector else None
        # Reconciles mostly wait on the apiserver and S3, so many run at once.
        self.workers = Workers(config.workers)
        self.tasks = WorkQueue(FINE_TUNING_TASK.kind, self.reconciler.task, self.workers, gate)
        self.models = WorkQueue(TUNED_MODEL.kind, self.reconciler.model, self.workers, gate)

    def drain(self) -> None:
        """Start no reconcile and wait for those in flight (blocking): after this, the
        process writes nothing more, so a successor may take over."""
        self.workers.drain()
        self.events.close(EVENT_FLUSH_SECONDS)


def _api_client(pool_size: int) -> Any:
    try:
        kube_config.load_incluster_config()
    except kube_config.ConfigException:
        kube_config.load_kube_config()
    from kubernetes import client

    configuration = client.Configuration.get_default_copy()
    configuration.connection_pool_maxsize = pool_size
    api = client.ApiClient(configuration)
    api.user_agent = USER_AGENT
    return api


class NoDiffBase(kopf.DiffBaseStorage):
    """kopf keeps a deep copy of every object it sees, to diff it for change handlers. This
    operator has none (only raw event handlers), so nothing would ever read those copies."""

    def build(self, *, body: kopf.Body, extra_fields: Any = None) -> kopf.BodyEssence:
        return kopf.BodyEssence()

    def fetch(self, *, body: kopf.Body) -> kopf.BodyEssence | None:
        return None

    def store(self, *, body: kopf.Body, patch: kopf.Patch, essence: kopf.BodyEssence) -> None:
        return None


OPERATOR: Operator | None = None


def _operator() -> Operator:
    assert OPERATOR is not None, "the startup handler creates the operator"
    return OPERATOR


@kopf.on.startup()
async def startup(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    """Start the operator with the settings `python -m kubetune` checked (in `memo`)."""
    global OPERATOR
    config: OperatorConfig = memo.config
    OPERATOR = Operator(config)
    settings.posting.level = logging.INFO
    settings.watching.server_timeout = 300
    settings.persistence.diffbase_storage = NoDiffBase()
    OPERATOR.workers.start()
    OPERATOR.tasks.spawn(asyncio.to_thread(Storage.warm_up))
    if OPERATOR.elector is not None:
        OPERATOR.tasks.spawn(OPERATOR.elector.run())
    # Only tasks are resynced: they depend on Jobs and S3 results, whose events may be
    # missed; a TunedModel's decision depends on nothing but the object, so its own events
    # are enough.
    OPERATOR.tasks.spawn(OPERATOR.tasks.resync(config.resync_seconds))


@kopf.on.cleanup()
async def cleanup(**_: Any) -> None:
    if OPERATOR is None:
        return
    await asyncio.to_thread(OPERATOR.drain)
    if OPERATOR.elector is not None:
        try:
            await asyncio.to_thread(OPERATOR.elector.release)
        except (ApiException, OSError) as error:  # the standby then waits the lease out
            log.warning("lease not released: %s", error)


def _key(namespace: str | None, name: str) -> tuple[str, str]:
    assert namespace is not None, "the operator's kinds and trial Jobs are namespaced"
    return namespace, name


@kopf.on.event(GROUP, VERSION, FINE_TUNING_TASK.plural)
async def task_event(
    namespace: str | None, name: str, type: str | None, status: kopf.Status, **_: Any
) -> None:
    queue, key = _operator().tasks, _key(namespace, name)
    if type == "DELETED":
        queue.forget(key)
        return
    queue.settle(key, status.get("phase") in TERMINAL_PHASES)
    queue.request(key, Priority.EVENT if status.get("attempt") else Priority.NEW)


@kopf.on.event(GROUP, VERSION, TUNED_MODEL.plural)
async def model_event(namespace: str | None, name: str, type: str | None, **_: Any) -> None:
    queue, key = _operator().models, _key(namespace, name)
    if type == "DELETED":
        queue.forget(key)
    else:
        queue.request(key)


@kopf.on.event("batch", "v1", "jobs", labels={LABEL_TASK: kopf.PRESENT})
async def job_event(namespace: str | None, labels: kopf.Labels, **_: Any) -> None:
    _operator().tasks.request_after(_key(namespace, labels[LABEL_TASK]), JOB_EVENT_DELAY_SECONDS)
