"""Database access: every SQL statement rv runs, in one place.

The daemons connect as ``rv_writer``; the CLI as ``rv_reader``, which may only read.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any
from uuid import UUID

import psycopg
from psycopg.rows import dict_row

from repovault.jobs import Job, JobState

_COLUMNS = (
    "id, repo_url, state, submitted_by, error, bucket, snapshot, head_commit, bytes_stored, "
    "attempts, worker_id, creation_timestamp, injector_timestamp, worker_start_timestamp, "
    "worker_finishing_timestamp"
)

Connection = psycopg.Connection[Any]


class DatabaseUnavailable(RuntimeError):
    """PostgreSQL could not be reached; the message says where and what to check."""


def connect(url: str) -> Connection:
    """An autocommit connection; connection errors say what to check, never the password."""
    try:
        return psycopg.connect(url, autocommit=True, connect_timeout=10)
    except psycopg.OperationalError as error:
        where = psycopg.conninfo.conninfo_to_dict(url)
        raise DatabaseUnavailable(
            f"cannot reach PostgreSQL at {where.get('host')}:{where.get('port', 5432)} "
            f"as {where.get('user')}: {_first_line(error)}; is the stack up (`make status`)?"
        ) from None


def _first_line(error: Exception) -> str:
    return str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__


def _job(row: dict[str, Any]) -> Job:
    return Job(**{**row, "state": JobState(row["state"])})


# --- writes: the daemons' path ------------------------------------------------------------


def create_job(conn: Connection, job_id: UUID, repo_url: str, submitted_by: str) -> Job:
    """Record a job accepted by the intake (``creation_timestamp`` is now)."""
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute(
            f"INSERT INTO jobs (id, repo_url, state, submitted_by) VALUES (%s, %s, %s, %s) "
            f"ON CONFLICT (id) DO NOTHING RETURNING {_COLUMNS}",
            (job_id, repo_url, JobState.QUEUED, submitted_by),
        )
        row = cur.fetchone()
    return _job(row) if row else require_job(conn, job_id)


def record_rejected(
    conn: Connection, job_id: UUID, repo_url: str, submitted_by: str | None, reason: str
) -> None:
    """Keep an audit row for a submission refused at the door."""
    conn.execute(
        "INSERT INTO jobs (id, repo_url, state, submitted_by, error, injector_timestamp) "
        "VALUES (%s, %s, %s, %s, %s, now()) ON CONFLICT (id) DO NOTHING",
        (job_id, repo_url, JobState.REJECTED, submitted_by, reason),
    )


def mark_injected(conn: Connection, job_id: UUID) -> Job | None:
    """Stamp ``injector_timestamp`` (first time only); None when the job has no row."""
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute(
            f"UPDATE jobs SET injector_timestamp = coalesce(injector_timestamp, now()) "
            f"WHERE id = %s RETURNING {_COLUMNS}",
            (job_id,),
        )
        row = cur.fetchone()
    return _job(row) if row else None


def dispatch(conn: Connection, job_id: UUID, bucket: str) -> Job:
    """Move a queued job to ``dispatched``, or to ``duplicate`` when its repository is
    already dispatched or running (the partial unique index decides, race-free)."""
    try:
        with conn.transaction():
            conn.execute(
                "UPDATE jobs SET state = %s, bucket = %s WHERE id = %s AND state = %s",
                (JobState.DISPATCHED, bucket, job_id, JobState.QUEUED),
            )
    except psycopg.errors.UniqueViolation:
        with conn.transaction():
            active = conn.execute(
                "SELECT j.id FROM jobs j, jobs me WHERE me.id = %s AND j.repo_url = me.repo_url "
                "AND j.state IN ('dispatched', 'running') LIMIT 1",
                (job_id,),
            ).fetchone()
            reason = f"already queued or running as job {active[0]}" if active else "duplicate"
            conn.execute(
                "UPDATE jobs SET state = %s, error = %s WHERE id = %s AND state = %s",
                (JobState.DUPLICATE, reason, job_id, JobState.QUEUED),
            )
    return require_job(conn, job_id)


def fail_unqueued(conn: Connection, job_ids: Sequence[UUID], reason: str) -> None:
    """Close jobs whose message never reached Kafka, so none is left looking queued."""
    conn.execute(
        "UPDATE jobs SET state = %s, error = %s WHERE id = ANY(%s) AND state = %s",
        (JobState.FAILED, reason, list(job_ids), JobState.QUEUED),
    )


def reject(conn: Connection, job_id: UUID, reason: str) -> None:
    conn.execute(
        "UPDATE jobs SET state = %s, error = %s WHERE id = %s AND state = %s",
        (JobState.REJECTED, reason, job_id, JobState.QUEUED),
    )


def claim(conn: Connection, job_id: UUID, worker_id: str) -> Job | None:
    """Take a dispatched job (or one a dead worker held) for this worker; None when the
    job is already final (a redelivery) or unknown."""
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute(
            f"UPDATE jobs SET state = %s, worker_id = %s, attempts = attempts + 1, "
            f"worker_start_timestamp = now() "
            f"WHERE id = %s AND state IN ('dispatched', 'running') RETURNING {_COLUMNS}",
            (JobState.RUNNING, worker_id, job_id),
        )
        row = cur.fetchone()
    return _job(row) if row else None


@dataclass(frozen=True)
class Outcome:
    """What a worker records when it is done with a job."""

    state: JobState
    snapshot: str | None = None
    head_commit: str | None = None
    bytes_stored: int | None = None
    error: str | None = None


def finish(conn: Connection, job_id: UUID, outcome: Outcome) -> Job:
    """Record the final state and ``worker_finishing_timestamp``."""
    conn.execute(
        "UPDATE jobs SET state = %s, snapshot = %s, head_commit = %s, bytes_stored = %s, "
        "error = %s, worker_finishing_timestamp = now() WHERE id = %s AND state = %s",
        (
            outcome.state,
            outcome.snapshot,
            outcome.head_commit,
            outcome.bytes_stored,
            outcome.error,
            job_id,
            JobState.RUNNING,
        ),
    )
    return require_job(conn, job_id)


def release(conn: Connection, job_id: UUID, worker_id: str) -> None:
    """Hand a running job back (worker shutting down mid-job) so another worker takes it."""
    conn.execute(
        "UPDATE jobs SET state = %s WHERE id = %s AND state = %s AND worker_id = %s",
        (JobState.DISPATCHED, job_id, JobState.RUNNING, worker_id),
    )


# --- reads: shared by the CLI and the daemons ----------------------------------------------


def get_job(conn: Connection, job_id: UUID) -> Job | None:
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute(f"SELECT {_COLUMNS} FROM jobs WHERE id = %s", (job_id,))
        row = cur.fetchone()
    return _job(row) if row else None


def require_job(conn: Connection, job_id: UUID) -> Job:
    job = get_job(conn, job_id)
    if job is None:
        raise LookupError(f"no job {job_id}")
    return job


def list_jobs(
    conn: Connection,
    *,
    ids: Sequence[UUID] = (),
    id_prefixes: Sequence[str] = (),
    states: Iterable[str] = (),
    repo_url: str | None = None,
    submitted_by: str | None = None,
    limit: int = 50,
) -> list[Job]:
    """Newest first, filtered by whichever arguments are given."""
    clauses: list[str] = []
    params: list[object] = []
    if ids:
        clauses.append("id = ANY(%s)")
        params.append(list(ids))
    if id_prefixes:
        clauses.append("id::text LIKE ANY(%s)")
        params.append([f"{prefix.lower()}%" for prefix in id_prefixes])
    state_list = list(states)
    if state_list:
        clauses.append("state = ANY(%s)")
        params.append(state_list)
    if repo_url is not None:
        clauses.append("repo_url = %s")
        params.append(repo_url)
    if submitted_by is not None:
        clauses.append("submitted_by = %s")
        params.append(submitted_by)
    where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute(
            f"SELECT {_COLUMNS} FROM jobs {where} ORDER BY creation_timestamp DESC LIMIT %s",
            (*params, limit),
        )
        return [_job(row) for row in cur.fetchall()]


STAGES = {
    "intake to injector": ("creation_timestamp", "injector_timestamp"),
    "injector to worker": ("injector_timestamp", "worker_start_timestamp"),
    "clone and upload": ("worker_start_timestamp", "worker_finishing_timestamp"),
    "end to end": ("creation_timestamp", "worker_finishing_timestamp"),
}


@dataclass(frozen=True)
class StageStats:
    name: str
    count: int
    p50_seconds: float | None
    p95_seconds: float | None


@dataclass(frozen=True)
class Stats:
    jobs_by_state: dict[str, int]
    stages: list[StageStats]
    bytes_stored: int
    finished: int
    jobs_per_minute: float | None


def stats(conn: Connection, repo_url: str | None = None) -> Stats:
    """Jobs per state, p50/p95 per stage from the four timestamps, bytes, throughput."""
    where, params = ("WHERE repo_url = %s", (repo_url,)) if repo_url else ("", ())
    by_state = {
        state: count
        for state, count in conn.execute(
            f"SELECT state, count(*) FROM jobs {where} GROUP BY state ORDER BY state",
            params,
        ).fetchall()
    }
    stages = []
    for name, (start, end) in STAGES.items():
        count, p50, p95 = conn.execute(
            f"SELECT count(*), "
            f"percentile_cont(0.5) WITHIN GROUP (ORDER BY extract(epoch FROM {end} - {start})), "
            f"percentile_cont(0.95) WITHIN GROUP (ORDER BY extract(epoch FROM {end} - {start})) "
            f"FROM jobs {where} {'AND' if where else 'WHERE'} {start} IS NOT NULL "
            f"AND {end} IS NOT NULL",
            params,
        ).fetchone() or (0, None, None)
        stages.append(StageStats(name, count, p50, p95))
    total_bytes, finished, first, last = conn.execute(
        "SELECT coalesce(sum(bytes_stored), 0), count(worker_finishing_timestamp), "
        f"min(creation_timestamp), max(worker_finishing_timestamp) FROM jobs {where}",
        params,
    ).fetchone() or (0, 0, None, None)
    rate = None
    if finished and first and last and last > first:
        rate = finished / ((last - first).total_seconds() / 60)
    return Stats(by_state, stages, int(total_bytes), finished, rate)
