"""Scheduling of reconciles: which object is reconciled next, and never one object twice
at once.

`Workers` is a fixed set of threads fed from one priority queue shared by every kind, so a
task just applied (whose first Job is what its user waits for) overtakes the follow-ups of
running tasks, and the periodic resync only fills idle time. `WorkQueue` (one per kind)
coalesces requests per object and keeps its requeue timers.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import Awaitable, Callable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any

from kubetune.logs import about
from kubetune.metrics import METRICS

log = logging.getLogger("kubetune")
Key = tuple[str, str]
Reconcile = Callable[[str, str], float | None]
ERROR_RETRY_SECONDS = 5.0


class Priority(IntEnum):
    """Lower runs first."""

    NEW = 0
    """An object no reconcile has written a status to yet."""
    EVENT = 1
    """A change, an event of a child Job, or a requeue its last decision asked for."""
    RESYNC = 2
    """The periodic safety net for missed events."""


@dataclass(order=True)
class _Item:
    priority: Priority
    sequence: int
    call: Callable[[], float | None] = field(compare=False)
    done: asyncio.Future[float | None] = field(compare=False)


class Workers:
    """`size` threads; work waits in a priority queue (FIFO within a priority) rather than
    in the executor's own FIFO, so ordering is decided here."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.executor = ThreadPoolExecutor(size, thread_name_prefix="reconcile")
        self._queue: asyncio.PriorityQueue[_Item] | None = None
        self._sequence = itertools.count()
        self._loops: list[asyncio.Task[None]] = []
        self.closed = False

    def start(self) -> None:
        self._queue = asyncio.PriorityQueue()
        loop = asyncio.get_running_loop()
        self._loops = [loop.create_task(self._work()) for _ in range(self.size)]

    async def run(self, priority: Priority, call: Callable[[], float | None]) -> float | None:
        assert self._queue is not None, "start() first"
        done: asyncio.Future[float | None] = asyncio.get_running_loop().create_future()
        await self._queue.put(_Item(priority, next(self._sequence), call, done))
        return await done

    async def _work(self) -> None:
        assert self._queue is not None
        loop = asyncio.get_running_loop()
        while True:
            item = await self._queue.get()
            if self.closed or item.done.done():  # shutting down, or its waiter is gone
                item.done.cancel()
                continue
            running = loop.run_in_executor(self.executor, item.call)
            await asyncio.wait([running])
            if item.done.done():
                continue
            if running.cancelled():
                item.done.cancel()
            elif (error := running.exception()) is not None:  # the waiter decides
                item.done.set_exception(error)
            else:
                item.done.set_result(running.result())

    def drain(self) -> None:
        """Start nothing new and wait for what runs (blocking; call from a thread)."""
        self.closed = True
        self.executor.shutdown(wait=True, cancel_futures=True)


class WorkQueue:
    """At most one reconcile per object at a time; requests that arrive meanwhile are
    coalesced into one more run at the most urgent priority asked; requeues are timers
    (lost on restart, which relists). Every run first passes `gate` (a standby replica
    waits there for leadership). Objects marked settled (a finished task) are left out of
    the resync: only an event can make them change."""

    def __init__(
        self,
        kind: str,
        reconcile: Reconcile,
        workers: Workers,
        gate: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self.kind = kind
        self.reconcile = reconcile
        self.workers = workers
        self.gate = gate
        self._running: set[Key] = set()
        self._dirty: dict[Key, Priority] = {}
        self._timers: dict[Key, asyncio.TimerHandle] = {}
        self.known: set[Key] = set()
        self.settled: set[Key] = set()
        self._background: set[asyncio.Task[None]] = set()

    def spawn(self, coroutine: Coroutine[Any, Any, None]) -> None:
        """Run in the background, holding a reference so the task is not collected."""
        task = asyncio.get_running_loop().create_task(coroutine)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def request(self, key: Key, priority: Priority = Priority.EVENT) -> None:
        self.known.add(key)
        if key in self._running:
            self._dirty[key] = min(priority, self._dirty.get(key, Priority.RESYNC))
            return
        self._running.add(key)
        self.spawn(self._run(key, priority))

    def request_after(self, key: Key, delay: float) -> None:
        """Reconcile within `delay`; requests meanwhile share that one reconcile."""
        self.known.add(key)
        self._schedule(key, delay)

    def settle(self, key: Key, settled: bool) -> None:
        if settled:
            self.settled.add(key)
        else:
            self.settled.discard(key)

    def forget(self, key: Key) -> None:
        self.known.discard(key)
        self.settled.discard(key)
        timer = self._timers.pop(key, None)
        if timer is not None:
            timer.cancel()

    async def resync(self, interval: float) -> None:
        """Reconcile every known, unsettled object periodically."""
        while True:
            await asyncio.sleep(interval)
            for key in list(self.known - self.settled):
                self.request(key, Priority.RESYNC)

    async def _run(self, key: Key, priority: Priority) -> None:
        delay: float | None = None
        try:
            if self.gate is not None:
                await self.gate()
            while not self.workers.closed:
                self._dirty.pop(key, None)
                try:
                    delay = await self.workers.run(priority, lambda: self.reconcile(*key))
                except Exception:  # one object's failure must not stop the others
                    log.exception(
                        "reconcile of %s failed; retrying", self.kind, extra=about(self.kind, *key)
                    )
                    METRICS.reconcile_errors.labels(self.kind).inc()
                    delay = ERROR_RETRY_SECONDS
                if key not in self._dirty:
                    break
                priority = self._dirty[key]
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
