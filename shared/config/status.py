"""The small vocabulary of job and item states, and which status changes are allowed."""

from __future__ import annotations

from enum import IntEnum, StrEnum


class JobKind(StrEnum):
    CLASSIFY = "classify"
    SCORE = "score"
    TRAIN = "train"


class Priority(IntEnum):
    """A classify job's priority in the interactive lane (docs/lanes.md); each level has its own broker queue, and
    workers take a higher level's messages first."""

    LOW = 0
    NORMAL = 1
    HIGH = 2


class JobStatus(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELED = "canceled"
    EXPIRED = "expired"  # its deadline passed before it started (a score job: before its last chunk started)

    def is_terminal(self) -> bool:
        """Succeeded, failed, canceled and expired are final: nothing moves a job out of them."""
        return self in TERMINAL

    def can_become(self, new: JobStatus) -> bool:
        """Whether the transition self -> new is allowed."""
        return new in _ALLOWED[self]

    @classmethod
    def sources_of(cls, new: JobStatus) -> tuple[JobStatus, ...]:
        """Every status a job may be in for the move to `new` to be allowed (used by compare-and-set)."""
        return tuple(s for s in cls if new in _ALLOWED[s])


TERMINAL = frozenset({JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELED, JobStatus.EXPIRED})

_ALLOWED: dict[JobStatus, frozenset[JobStatus]] = {
    JobStatus.QUEUED: frozenset({JobStatus.RUNNING, JobStatus.FAILED, JobStatus.CANCELED, JobStatus.EXPIRED}),
    JobStatus.RUNNING: frozenset({JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELED, JobStatus.EXPIRED}),
    JobStatus.SUCCEEDED: frozenset(),
    JobStatus.FAILED: frozenset(),
    JobStatus.CANCELED: frozenset(),
    JobStatus.EXPIRED: frozenset(),
}


class ItemStatus(StrEnum):
    PENDING = "pending"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
