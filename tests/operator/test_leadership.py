"""Leader election decisions: who writes the Lease next, judged by this replica's clock."""

from __future__ import annotations

import pytest

from kubetune.config import LeaderElection, OperatorConfig
from kubetune.decide.leadership import LeaseRecord, Sighting, Step, next_step, sighting

ME = "operator-a_1234"


def record(holder: str | None, renewed: str = "t1", duration: int = 15) -> LeaseRecord:
    return LeaseRecord(holder=holder, lease_duration_seconds=duration, transitions=3,
                       renew_time=renewed)  # fmt: skip


def test_absent_lease_is_created() -> None:
    assert next_step(None, None, ME, now=0.0) is Step.CREATE


def test_holder_renews() -> None:
    assert next_step(record(ME), None, ME, now=0.0) is Step.RENEW


def test_released_lease_is_taken_at_once() -> None:
    assert next_step(record(None), None, ME, now=0.0) is Step.TAKE_OVER


def test_first_sight_of_another_holder_waits_however_old_its_timestamps() -> None:
    # Its renewTime may be hours old by our clock; only our own observation counts.
    assert next_step(record("operator-b", renewed="2001-01-01"), None, ME, now=1e6) is Step.WAIT


def test_a_renewing_holder_is_never_replaced() -> None:
    last = Sighting(record("operator-b", renewed="t1"), seen_at=0.0)
    assert next_step(record("operator-b", renewed="t2"), last, ME, now=100.0) is Step.WAIT


def test_a_silent_holder_is_replaced_after_the_lease_duration() -> None:
    last = Sighting(record("operator-b"), seen_at=10.0)
    assert next_step(record("operator-b"), last, ME, now=24.9) is Step.WAIT
    assert next_step(record("operator-b"), last, ME, now=25.0) is Step.TAKE_OVER


def test_sighting_keeps_the_first_time_a_record_was_seen() -> None:
    first = sighting(record("operator-b"), None, now=5.0)
    assert sighting(record("operator-b"), first, now=9.0) == first
    renewed = sighting(record("operator-b", renewed="t2"), first, now=9.0)
    assert renewed.seen_at == 9.0


def test_election_is_off_unless_asked_for() -> None:
    assert OperatorConfig.from_env({}).leader_election is None


def test_election_settings_from_the_chart_env() -> None:
    env = {
        "KUBETUNE_LEADER_ELECTION": "true",
        "KUBETUNE_OPERATOR_NAMESPACE": "kubetune-system",
        "KUBETUNE_LEASE_NAME": "kt",
        "KUBETUNE_POD_NAME": "kt-5d9f-abcde",
    }
    election = OperatorConfig.from_env(env).leader_election
    assert isinstance(election, LeaderElection)
    assert (election.namespace, election.lease_name) == ("kubetune-system", "kt")
    assert election.identity.startswith("kt-5d9f-abcde_")
    assert (election.lease_duration_seconds, election.renew_deadline_seconds) == (15, 10.0)
    assert election.retry_period_seconds == 2.0
    # A restarted process is a new candidate, not its predecessor.
    assert OperatorConfig.from_env(env).leader_election.identity != election.identity  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"KUBETUNE_LEADER_ELECTION": "true"}, "KUBETUNE_OPERATOR_NAMESPACE"),
        (
            {
                "KUBETUNE_LEADER_ELECTION": "true",
                "KUBETUNE_OPERATOR_NAMESPACE": "ns",
                "KUBETUNE_LEASE_DURATION_SECONDS": "5",
                "KUBETUNE_LEASE_RENEW_DEADLINE_SECONDS": "5",
            },
            "shorter than the lease",
        ),
    ],
)
def test_bad_election_settings_are_refused(env: dict[str, str], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        OperatorConfig.from_env(env)
