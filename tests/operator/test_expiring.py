from __future__ import annotations

import threading
import time

from kubetune.clients.expiring import ExpiringCache


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_value_is_loaded_once_per_interval() -> None:
    clock, loads = Clock(), []
    cache: ExpiringCache[str, str] = ExpiringCache(30, clock)

    def load() -> str:
        loads.append(clock.now)
        return f"v{len(loads)}"

    assert cache.get("k", load) == "v1"
    clock.now += 29.9
    assert cache.get("k", load) == "v1"
    clock.now += 0.1
    assert cache.get("k", load) == "v2"
    assert loads == [100.0, 130.0]


def test_a_miss_is_not_kept_so_a_created_object_is_seen_at_once() -> None:
    cache: ExpiringCache[str, str] = ExpiringCache(30, Clock())
    assert cache.get("k", lambda: None) is None
    assert cache.get("k", lambda: "created") == "created"


def test_a_value_that_disappears_is_dropped_when_it_expires() -> None:
    clock = Clock()
    cache: ExpiringCache[str, str] = ExpiringCache(30, clock)
    cache.get("k", lambda: "old")
    clock.now += 31
    assert cache.get("k", lambda: None) is None
    assert cache.get("k", lambda: "new") == "new"


def test_keys_are_separate() -> None:
    cache: ExpiringCache[tuple[str, str], str] = ExpiringCache(30, Clock())
    assert cache.get(("a", "s"), lambda: "in a") == "in a"
    assert cache.get(("b", "s"), lambda: "in b") == "in b"


def test_threads_missing_one_key_together_load_it_once() -> None:
    cache: ExpiringCache[str, int] = ExpiringCache(30)
    calls = []
    start = threading.Barrier(8)

    def load() -> int:
        calls.append(1)
        time.sleep(0.05)
        return 7

    def worker(results: list[int | None]) -> None:
        start.wait()
        results.append(cache.get("k", load))

    results: list[int | None] = []
    threads = [threading.Thread(target=worker, args=(results,)) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results == [7] * 8
    assert len(calls) == 1
