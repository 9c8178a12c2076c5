"""Thin kopf adapters: every event about a FineTuningTask, a TunedModel or a trial Job
asks for a reconcile of the object it concerns; `WorkQueue` runs them.

The handlers react to raw watch events (`kopf.on.event`) rather than kopf's
create/update/delete change detection, so kopf writes nothing onto the objects (no
annotations, no status fields): all progress lives in the status the reconciler writes.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import kopf
from kubernetes import config as kube_config
from kubernetes.client.rest import ApiException

from kubetune.api import FINE_TUNING_TASK, GROUP, TUNED_MODEL, VERSION
from kubetune.clients.kube import Kube
from kubetune.clients.lease import Leases
from kubetune.config import OperatorConfig
from kubetune.effects import Effects
from kubetune.leadership import LeaderElector
from kubetune.manifests import LABEL_TASK
from kubetune.metrics import METRICS
from kubetune.reconcile import Reconciler

log = logging.getLogger("kubetune")
Key = tuple[str, str]
ERROR_RETRY_SECONDS = 5.0


class WorkQueue:
    """At most one reconcile per object at a time; requests that arrive meanwhile are
    coalesced into one more run; requeues are timers (lost on restart, which relists).
    Every run first passes `gate` (a standby replica waits there for leadership)."""

    def __init__(
        self,
        kind: str,
        reconcile: Callable[[str, str], float | None],
        executor: ThreadPoolExecutor | None = None,
        gate: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self.kind = kind
        self.reconcile = reconcile
        self.executor = executor
        self.gate = gate
        self._running: set[Key] = set()
        self._dirty: set[Key] = set()
        self._timers: dict[Key, asyncio.TimerHandle] = {}
        self.known: set[Key] = set()
        self._background: set[asyncio.Task[None]] = set()
        self.closed = False

    def spawn(self, coroutine: Coroutine[Any, Any, None]) -> None:
        """Run in the background, holding a reference so the task is not collected."""
        task = asyncio.get_running_loop().create_task(coroutine)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def request(self, key: Key) -> None:
        self.known.add(key)
        self.spawn(self._run(key))

    def forget(self, key: Key) -> None:
        self.known.discard(key)
        timer = self._timers.pop(key, None)
        if timer is not None:
            timer.cancel()

    async def resync(self, interval: float) -> None:
        """Reconcile every known object periodically: a safety net for missed events."""
        while True:
            await asyncio.sleep(interval)
            for key in list(self.known):
                self.request(key)

    async def _run(self, key: Key) -> None:
        if key in self._running:
            self._dirty.add(key)
            return
        self._running.add(key)
        delay: float | None = None
        try:
            if self.gate is not None:
                await self.gate()
            while not self.closed:  # shutting down: no new reconcile starts
                self._dirty.discard(key)
                try:
                    delay = await asyncio.get_running_loop().run_in_executor(
                        self.executor, self.reconcile, *key
                    )
                except Exception:  # one object's failure must not stop the others
                    log.exception("reconcile of %s %s/%s failed; retrying", self.kind, *key)
                    METRICS.reconcile_errors.labels(self.kind).inc()
                    delay = ERROR_RETRY_SECONDS
                if key not in self._dirty:
                    break
        finally:
            self._running.discard(key)
        if delay is not None:
            self._schedule(key, delay)

    def _schedule(self, key: Key, delay: float) -> None:
        loop = asyncio.get_running_loop()
        existing = self._timers.get(key)
        if existing is not None:
            if existing.when() <= loop.time() + delay:
                return
            existing.cancel()
        self._timers[key] = loop.call_later(delay, self._fire, key)

    def _fire(self, key: Key) -> None:
        self._timers.pop(key, None)
        self.request(key)


class Operator:
    """The wiring: configuration, clients, the reconciler and one queue per kind."""

    def __init__(self, config: OperatorConfig) -> None:
        api = _api_client()
        kube = Kube(api)
        self.config = config
        self.reconciler = Reconciler(kube, Effects(kube), config, _event_sink(kube))
        election = config.leader_election
        self.elector = (
            LeaderElector(Leases(api, election.namespace, election.lease_name), election)
            if election
            else None
        )
        gate = self.elector.wait_leader if self.elector else None
        # Reconciles mostly wait on the apiserver and S3, so many run at once; asyncio's
        # default pool (CPU count + 4 threads) would queue hundreds of new tasks behind a few.
        self.workers = ThreadPoolExecutor(config.workers, thread_name_prefix="reconcile")
        self.tasks = WorkQueue(FINE_TUNING_TASK.kind, self.reconciler.task, self.workers, gate)
        self.models = WorkQueue(TUNED_MODEL.kind, self.reconciler.model, self.workers, gate)

    def drain(self) -> None:
        """Start no reconcile and wait for those in flight (blocking): after this, the
        process writes nothing more, so a successor may take over."""
        self.tasks.closed = self.models.closed = True
        self.workers.shutdown(wait=True, cancel_futures=True)


def _api_client() -> Any:
    try:
        kube_config.load_incluster_config()
    except kube_config.ConfigException:
        kube_config.load_kube_config()
    from kubernetes import client

    return client.ApiClient()


def _event_sink(kube: Kube) -> Callable[[dict[str, Any], str, str, str], None]:
    """Events are posted by our own client: reconciles run in worker threads, outside the
    handler context that `kopf.event` needs. A lost Event must not fail a reconcile."""

    def record(body: dict[str, Any], type_: str, reason: str, message: str) -> None:
        try:
            kube.post_event(body, type_, reason, message)
        except (ApiException, OSError) as error:  # informational: the status already says it
            log.warning("Event %s on %s not recorded: %s", reason, body["metadata"]["name"], error)

    return record


OPERATOR: Operator | None = None


def _operator() -> Operator:
    assert OPERATOR is not None, "the startup handler creates the operator"
    return OPERATOR


@kopf.on.startup()
async def startup(settings: kopf.OperatorSettings, **_: Any) -> None:
    global OPERATOR
    config = OperatorConfig.from_env()
    OPERATOR = Operator(config)
    settings.posting.level = logging.INFO
    settings.watching.server_timeout = 300
    if config.metrics_port:
        METRICS.serve(config.metrics_port)
    if OPERATOR.elector is not None:
        OPERATOR.tasks.spawn(OPERATOR.elector.run())
    OPERATOR.tasks.spawn(OPERATOR.tasks.resync(config.resync_seconds))
    OPERATOR.models.spawn(OPERATOR.models.resync(config.resync_seconds))


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


def _dispatch(queue: WorkQueue, key: Key, event_type: str | None) -> None:
    if event_type == "DELETED":
        queue.forget(key)
    else:
        queue.request(key)


@kopf.on.event(GROUP, VERSION, FINE_TUNING_TASK.plural)
async def task_event(namespace: str, name: str, type: str | None, **_: Any) -> None:
    _dispatch(_operator().tasks, (namespace, name), type)


@kopf.on.event(GROUP, VERSION, TUNED_MODEL.plural)
async def model_event(namespace: str, name: str, type: str | None, **_: Any) -> None:
    _dispatch(_operator().models, (namespace, name), type)


@kopf.on.event("batch", "v1", "jobs", labels={LABEL_TASK: kopf.PRESENT})
async def job_event(namespace: str, labels: dict[str, str], **_: Any) -> None:
    _operator().tasks.request((namespace, labels[LABEL_TASK]))
