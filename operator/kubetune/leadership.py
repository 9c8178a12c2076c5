"""The leader-election loop: acquire the Lease, keep renewing it, and stop the process the
moment leadership cannot be vouched for.

Stopping (rather than pausing) is deliberate: a reconcile may be half way through its
actions in a worker thread, and only the end of the process ends it for certain. The
Deployment restarts the container, which then waits as a standby. On a clean shutdown
the Lease is released, so a standby takes over at once instead of after the lease
duration.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
from collections.abc import Callable

from kubernetes.client.exceptions import ApiException
from urllib3.exceptions import HTTPError

from kubetune.clients.kube import ConflictError
from kubetune.clients.lease import Leases
from kubetune.config import LeaderElection
from kubetune.decide.leadership import Sighting, Step, next_step, sighting
from kubetune.metrics import METRICS

log = logging.getLogger("kubetune.leadership")
TRANSIENT = (ApiException, HTTPError, OSError, ConflictError)


def _exit_process(reason: str) -> None:
    log.critical("leadership lost (%s); exiting so that only one replica acts", reason)
    logging.shutdown()
    os._exit(1)


class LeaderElector:
    def __init__(
        self,
        leases: Leases,
        settings: LeaderElection,
        on_lost: Callable[[str], None] = _exit_process,
    ) -> None:
        self.leases = leases
        self.settings = settings
        self.on_lost = on_lost
        self._leader = asyncio.Event()
        self._last: Sighting | None = None
        self._renewed_at = 0.0
        self._stopping = threading.Event()
        self._writing = threading.Lock()
        """Held by an attempt and by the release, so a release cannot slip between an
        attempt's read and its write (which would re-acquire the Lease just released)."""

    @property
    def is_leader(self) -> bool:
        return self._leader.is_set()

    async def wait_leader(self) -> None:
        await self._leader.wait()

    async def run(self) -> None:
        log.info("waiting for the lease %s/%s as %s", self.settings.namespace,
                 self.settings.lease_name, self.settings.identity)  # fmt: skip
        while True:
            try:
                holding = await asyncio.to_thread(self._attempt)
            except TRANSIENT as error:
                log.warning("lease %s not renewed: %s", self.settings.lease_name, error)
                holding = self.is_leader
            if self._stopping.is_set():
                return
            if holding and not self.is_leader:
                log.info("acquired the lease %s; reconciling", self.settings.lease_name)
                METRICS.leader.set(1)
                self._leader.set()
            elif self.is_leader and not holding:
                self.on_lost("another replica holds the lease")
            if self.is_leader:
                silent = time.monotonic() - self._renewed_at
                if silent > self.settings.renew_deadline_seconds:
                    self.on_lost(f"not renewed for {silent:.1f}s")
            await asyncio.sleep(self.settings.retry_period_seconds)

    def _attempt(self) -> bool:
        """One read and at most one conditional write; True while we hold the Lease."""
        with self._writing:
            if self._stopping.is_set():
                return self.is_leader
            return self._read_and_write()

    def _read_and_write(self) -> bool:
        settings = self.settings
        observed = self.leases.read()
        now = time.monotonic()
        if observed is None:
            self.leases.create(settings.identity, settings.lease_duration_seconds)
            self._renewed_at = now
            return True
        record, resource_version = observed
        step = next_step(record, self._last, settings.identity, now)
        self._last = sighting(record, self._last, now)
        if step is Step.WAIT:
            return False
        taking_over = step is not Step.RENEW
        self.leases.write(
            resource_version,
            settings.identity,
            settings.lease_duration_seconds,
            record.transitions + (1 if taking_over else 0),
            acquired=taking_over,
        )
        self._renewed_at = now
        return True

    def release(self) -> None:
        """Give the Lease up (clean shutdown) so a standby need not wait it out."""
        with self._writing:
            self._stopping.set()
            if not self.is_leader:
                return
            observed = self.leases.read()
            if observed is None or observed[0].holder != self.settings.identity:
                return
            record, resource_version = observed
            self.leases.write(resource_version, None, 1, record.transitions, acquired=False)
        METRICS.leader.set(0)
        log.info("released the lease %s", self.settings.lease_name)
