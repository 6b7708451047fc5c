"""Submitting repositories: validate locally, then hand them to the intake with a token."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any
from uuid import UUID

import httpx

from repovault import db
from repovault.jobs import Job, JobState, unmatched_prefixes
from repovault.settings import Settings
from repovault.urls import unresolved, validate_all


class SubmitError(Exception):
    """Nothing was queued; the message says why and what to do."""


@dataclass(frozen=True)
class Submitted:
    id: UUID
    repo_url: str
    bucket: str


def read_url_lines(lines: Iterable[str]) -> list[str]:
    """One URL per line; blank lines and ``#`` comments are skipped (cron-friendly)."""
    return [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]


def validate(settings: Settings, urls: list[str]) -> list[str]:
    """Every URL checked before anything is sent; all problems reported together.
    Addresses are not checked here: the intake does that with the daemons' DNS and policy."""
    if not urls:
        raise SubmitError("no repository URLs given; pass URLs, or --file F / - for a list")
    _, problems = validate_all(
        urls, settings.allowed_hosts, settings.allow_private_hosts, unresolved
    )
    return problems


def submit(
    settings: Settings, urls: list[str], token: Callable[[], str], source: str = "submit"
) -> list[Submitted]:
    """Validate ``urls``, then get a token and queue them; ``source`` tells the intake which
    role applies (trending needs the operator role)."""
    problems = validate(settings, urls)
    if problems:
        raise SubmitError("nothing was queued:\n  " + "\n  ".join(problems))
    bearer = token()
    try:
        response = httpx.post(
            f"{settings.intake_url}/v1/jobs",
            json={"urls": urls, "source": source},
            headers={"Authorization": f"Bearer {bearer}"},
            timeout=60,
        )
    except httpx.HTTPError as failure:
        raise SubmitError(
            f"cannot reach the intake at {settings.intake_url} ({type(failure).__name__}); "
            "nothing was queued; is the injector running (`make status`)?"
        ) from None
    body = _json(response)
    if response.status_code == 202:
        return [Submitted(UUID(j["id"]), j["repo_url"], j["bucket"]) for j in body["jobs"]]
    error = str(body.get("error", f"HTTP {response.status_code}"))
    if response.status_code == 400 and body.get("problems"):
        error += ":\n  " + "\n  ".join(body["problems"])
    if response.status_code == 401:
        raise SubmitError(f"not accepted: {error}; run `rv login` and submit again")
    if response.status_code == 403:
        raise SubmitError(f"not allowed: {error}; ask an administrator for the role")
    raise SubmitError(error if error.startswith("nothing") else f"nothing was queued: {error}")


def _json(response: httpx.Response) -> dict[str, Any]:
    try:
        body = response.json()
    except ValueError:
        return {"error": f"HTTP {response.status_code} from the intake"}
    return body if isinstance(body, dict) else {}


def retry(
    settings: Settings, conn: db.Connection, prefixes: list[str], token: Callable[[], str]
) -> list[Submitted]:
    """Queue again the repositories of the given jobs (operators only: the intake checks).
    Only jobs that ended ``failed`` or ``rejected`` are retried."""
    jobs = db.list_jobs(conn, id_prefixes=prefixes, limit=10000)
    missing = unmatched_prefixes(jobs, prefixes)
    if missing:
        raise SubmitError(f"no such job: {', '.join(missing)}")
    not_failed = [job for job in jobs if job.state not in (JobState.FAILED, JobState.REJECTED)]
    if not_failed:
        listed = ", ".join(f"{str(job.id)[:8]} ({job.state})" for job in not_failed)
        raise SubmitError(f"only failed or rejected jobs are retried, not {listed}")
    urls = sorted({job.repo_url for job in jobs})
    return submit(settings, urls, token, source="retry")


def wait_for(
    conn: db.Connection,
    job_ids: list[UUID],
    on_update: Callable[[list[Job]], None],
    interval: float = 0.25,
    timeout: float | None = None,
) -> list[Job]:
    """Poll until every job is final (or the timeout passes); report each change."""
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        jobs = db.list_jobs(conn, ids=job_ids, limit=len(job_ids))
        on_update(jobs)
        if len(jobs) == len(job_ids) and all(job.state.is_final for job in jobs):
            return jobs
        if deadline is not None and time.monotonic() > deadline:
            return jobs
        time.sleep(interval)
