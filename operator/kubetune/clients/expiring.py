"""A small thread-safe cache whose entries expire: for reads that are repeated far more
often than what they read changes (a credentials Secret is read by every trial's result
read and every round that starts trials, but rotated rarely)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class ExpiringCache(Generic[K, V]):
    """Values loaded within the last `seconds` are returned without loading again. A load
    that finds nothing (None) is not kept, so an object created after a miss is seen on the
    next call; a changed or deleted one is seen once its entry expires."""

    def __init__(self, seconds: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.seconds = seconds
        self._clock = clock
        self._entries: dict[K, tuple[float, V]] = {}
        self._key_locks: dict[K, threading.Lock] = {}
        self._lock = threading.Lock()

    def get(self, key: K, load: Callable[[], V | None]) -> V | None:
        """The cached value of `key`, or `load()` (kept when not None). Threads that miss
        one key together make one load, not one each; other keys do not wait for it."""
        with self._lock:
            key_lock = self._key_locks.setdefault(key, threading.Lock())
        with key_lock:
            entry = self._entries.get(key)
            if entry is not None and self._clock() < entry[0]:
                return entry[1]
            loaded_at = self._clock()
            value = load()
            if value is None:
                self._entries.pop(key, None)
            else:
                self._entries[key] = (loaded_at + self.seconds, value)
            return value
