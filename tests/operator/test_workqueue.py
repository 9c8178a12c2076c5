"""Scheduling of reconciles: priority order, coalescing, resync of unsettled objects only,
and nothing new after a drain."""

from __future__ import annotations

import asyncio
import threading

from kubetune.workqueue import Priority, Workers, WorkQueue


class Recorder:
    """A reconcile that records its calls; the first one waits for `release`."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []
        self.release = threading.Event()
        self.started = threading.Event()

    def __call__(self, namespace: str, name: str) -> float | None:
        self.calls.append((namespace, name))
        self.started.set()
        self.release.wait(5)
        return None


async def _queue(size: int, *, busy: str | None = None) -> tuple[Workers, Recorder, WorkQueue]:
    """A started queue of `size` workers; with `busy`, one reconcile of that name runs and
    waits for `release`."""
    workers = Workers(size)
    workers.start()
    reconcile = Recorder()
    queue = WorkQueue("FineTuningTask", reconcile, workers)
    if busy is None:
        reconcile.release.set()
    else:
        queue.request(("ns", busy))
        await asyncio.to_thread(reconcile.started.wait, 5)
    return workers, reconcile, queue


async def _until(condition, timeout: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.005)


def test_new_objects_run_before_events_and_events_before_resync() -> None:
    async def scenario() -> list[tuple[str, str]]:
        workers, reconcile, queue = await _queue(1, busy="busy")
        queue.request(("ns", "resynced"), Priority.RESYNC)
        queue.request(("ns", "changed"), Priority.EVENT)
        queue.request(("ns", "applied"), Priority.NEW)
        await asyncio.sleep(0.01)
        reconcile.release.set()
        await _until(lambda: len(reconcile.calls) == 4)
        workers.drain()
        return reconcile.calls

    calls = asyncio.run(scenario())
    assert [name for _, name in calls] == ["busy", "applied", "changed", "resynced"]


def test_requests_during_a_run_coalesce_into_one_more_run() -> None:
    async def scenario() -> int:
        workers, reconcile, queue = await _queue(4, busy="task")
        for _ in range(5):
            queue.request(("ns", "task"))
        reconcile.release.set()
        await _until(lambda: len(reconcile.calls) >= 2)
        await asyncio.sleep(0.05)
        workers.drain()
        return len(reconcile.calls)

    assert asyncio.run(scenario()) == 2


def test_resync_leaves_settled_objects_alone() -> None:
    async def scenario() -> set[str]:
        workers, reconcile, queue = await _queue(2)
        for name in ("running", "finished"):
            queue.request(("ns", name))
        queue.settle(("ns", "finished"), True)
        await _until(lambda: len(reconcile.calls) == 2)
        reconcile.calls.clear()
        resync = asyncio.get_running_loop().create_task(queue.resync(0.01))
        await _until(lambda: len(reconcile.calls) >= 3)
        resync.cancel()
        workers.drain()
        return {name for _, name in reconcile.calls}

    assert asyncio.run(scenario()) == {"running"}


def test_after_a_drain_queued_work_never_starts() -> None:
    async def scenario() -> list[tuple[str, str]]:
        workers, reconcile, queue = await _queue(1, busy="running")
        queue.request(("ns", "queued"))
        await asyncio.sleep(0.01)
        drained = asyncio.get_running_loop().run_in_executor(None, workers.drain)
        await asyncio.sleep(0.01)
        reconcile.release.set()
        await drained
        await asyncio.sleep(0.05)
        return reconcile.calls

    assert [name for _, name in asyncio.run(scenario())] == ["running"]
