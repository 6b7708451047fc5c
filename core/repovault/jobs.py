"""The job model: one archive request and what happened to it."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import datetime
from uuid import UUID


class JobState(enum.StrEnum):
    """Where a job is. The last five are final."""

    QUEUED = "queued"  # accepted by the intake, in the `pending` topic
    DISPATCHED = "dispatched"  # passed the injector's policy, in `in-progress`
    RUNNING = "running"  # a worker is cloning and uploading it
    DONE = "done"  # a new snapshot is stored
    UNCHANGED = "unchanged"  # the repository equals its latest snapshot; nothing uploaded
    FAILED = "failed"  # could not be archived; `error` says why
    REJECTED = "rejected"  # refused by policy or identity checks; nothing was cloned
    DUPLICATE = "duplicate"  # the same repository was already queued or running

    @property
    def is_final(self) -> bool:
        return self in FINAL_STATES


FINAL_STATES = frozenset(
    {JobState.DONE, JobState.UNCHANGED, JobState.FAILED, JobState.REJECTED, JobState.DUPLICATE}
)


@dataclass(frozen=True)
class Job:
    """A row of the ``jobs`` table."""

    id: UUID
    repo_url: str
    state: JobState
    submitted_by: str | None
    error: str | None
    bucket: str | None
    snapshot: str | None
    head_commit: str | None
    bytes_stored: int | None
    attempts: int
    worker_id: str | None
    creation_timestamp: datetime
    injector_timestamp: datetime | None
    worker_start_timestamp: datetime | None
    worker_finishing_timestamp: datetime | None

    def to_dict(self) -> dict[str, object]:
        """JSON-ready: ids and times as strings, plus the derived durations."""
        document: dict[str, object] = {}
        for name, value in vars(self).items():
            if isinstance(value, datetime):
                document[name] = value.isoformat()
            elif isinstance(value, UUID | JobState):
                document[name] = str(value)
            else:
                document[name] = value
        document["queue_wait_seconds"] = self.queue_wait_seconds
        document["work_seconds"] = self.work_seconds
        return document

    @property
    def queue_wait_seconds(self) -> float | None:
        """Creation to worker start: how long the job waited for a worker."""
        if self.worker_start_timestamp is None:
            return None
        return (self.worker_start_timestamp - self.creation_timestamp).total_seconds()

    @property
    def work_seconds(self) -> float | None:
        """Worker start to finish: clone plus upload."""
        if self.worker_start_timestamp is None or self.worker_finishing_timestamp is None:
            return None
        return (self.worker_finishing_timestamp - self.worker_start_timestamp).total_seconds()


def unmatched_prefixes(jobs: list[Job], prefixes: list[str]) -> list[str]:
    """The job-id prefixes that none of ``jobs`` starts with."""
    return [p for p in prefixes if not any(str(job.id).startswith(p.lower()) for job in jobs)]
