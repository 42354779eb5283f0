"""Job status vocabulary: which moves are allowed and which states are final."""

from __future__ import annotations

import pytest

from shared.config.status import TERMINAL, JobStatus

Q, R, S = JobStatus.QUEUED, JobStatus.RUNNING, JobStatus.SUCCEEDED
F, C, E = JobStatus.FAILED, JobStatus.CANCELED, JobStatus.EXPIRED

ALLOWED = {
    (Q, R),
    (Q, F),
    (Q, C),
    (R, S),
    (R, F),
    (R, C),
    (Q, E),
    (R, E),
}


def test_terminal_states_are_exactly_succeeded_failed_canceled_expired() -> None:
    """Succeeded, failed, canceled and expired are terminal; queued and running are not."""
    assert {s for s in JobStatus if s.is_terminal()} == {S, F, C, E} == set(TERMINAL)


@pytest.mark.parametrize("old", sorted(TERMINAL))
def test_nothing_leaves_a_terminal_state(old: JobStatus) -> None:
    """No transition out of a terminal state is allowed, not even to itself."""
    assert not any(old.can_become(new) for new in JobStatus)


@pytest.mark.parametrize("old", list(JobStatus))
@pytest.mark.parametrize("new", list(JobStatus))
def test_transition_table(old: JobStatus, new: JobStatus) -> None:
    """can_become matches the documented transition table exactly."""
    assert old.can_become(new) is ((old, new) in ALLOWED)


def test_nothing_goes_back_to_queued() -> None:
    """No status may become queued again (a job only moves forward)."""
    assert JobStatus.sources_of(Q) == ()


@pytest.mark.parametrize("new", list(JobStatus))
def test_sources_of_is_the_inverse_of_can_become(new: JobStatus) -> None:
    """sources_of(new) lists exactly the statuses that may become `new`."""
    assert set(JobStatus.sources_of(new)) == {old for old in JobStatus if (old, new) in ALLOWED}


def test_sources_of_terminal_targets() -> None:
    """Succeeded comes only from running; failed, canceled and expired from queued or running."""
    assert JobStatus.sources_of(S) == (R,)
    assert set(JobStatus.sources_of(F)) == {Q, R}
    assert set(JobStatus.sources_of(C)) == {Q, R}
    assert set(JobStatus.sources_of(E)) == {Q, R}
    assert JobStatus.sources_of(R) == (Q,)
