"""Leader election over a coordination.k8s.io Lease: which write a replica makes next.

Only the leader reconciles; the others wait. A replica judges a Lease held by another
to be abandoned by what it has seen itself, not by the timestamps in it: the record must
have stayed the same for `leaseDurationSeconds` of this replica's own (monotonic) clock.
So clock skew between nodes cannot hand the Lease to two replicas. The Lease's times are
written for people (`kubectl get lease`), as Kubernetes' own components do.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum


@dataclass(frozen=True)
class LeaseRecord:
    """The parts of a Lease's spec that decide who leads."""

    holder: str | None
    lease_duration_seconds: int
    transitions: int
    renew_time: str | None
    """As written; compared only for equality (did the holder renew since we looked?)."""


@dataclass(frozen=True)
class Sighting:
    """A record as this replica last saw it, and when (its monotonic clock)."""

    record: LeaseRecord
    seen_at: float


class Step(Enum):
    CREATE = "create"
    """No Lease yet: create it, holding it."""
    RENEW = "renew"
    """We hold it: write a new renew time."""
    TAKE_OVER = "take over"
    """Free or abandoned: write ourselves as holder (a conditional update)."""
    WAIT = "wait"
    """Another replica holds it and renews it."""


def next_step(
    current: LeaseRecord | None, last: Sighting | None, identity: str, now: float
) -> Step:
    """What to write, given the Lease read just now and the previous sighting."""
    if current is None:
        return Step.CREATE
    if current.holder == identity:
        return Step.RENEW
    if not current.holder:
        return Step.TAKE_OVER
    if last is None or last.record != current:
        return Step.WAIT  # changed since we looked: its holder is alive
    if now - last.seen_at >= current.lease_duration_seconds:
        return Step.TAKE_OVER
    return Step.WAIT


def sighting(current: LeaseRecord, last: Sighting | None, now: float) -> Sighting:
    """The sighting to keep: the time a record was first seen unchanged."""
    if last is not None and last.record == current:
        return last
    return Sighting(current, now)
