"""The intake: ``POST /v1/jobs`` on the injector, the only way a job enters the system.

It verifies the caller's Keycloak token, validates every URL (all or nothing), writes the
job rows and queues them on ``pending``. Tokens stay here: they are never written to the
database, to Kafka or to the logs; the job records the user the token proved.
"""

from __future__ import annotations

import json
import logging
import uuid
from dataclasses import dataclass
from typing import Any

from confluent_kafka import Producer

from repovault import db
from repovault.buckets import bucket_for
from repovault.messages import PendingJob, encode
from repovault.settings import Settings
from repovault.urls import InvalidRepoUrl, RepoUrl, parse_repo_url, validate_all
from repovault_daemons import _services
from repovault_daemons._auth import Forbidden, TokenVerifier, Unauthenticated
from repovault_daemons._consumer import TransientError
from repovault_daemons._http import Request, Response
from repovault_daemons._metrics import Metrics

log = logging.getLogger("rv.intake")
MAX_URLS_PER_REQUEST = 1000
SOURCES = ("submit", "trending", "retry")
OPERATOR_SOURCES = ("trending", "retry")  # submissions only operators may make


@dataclass
class Intake:
    settings: Settings
    verifier: TokenVerifier
    database: _services.Database
    producer: Producer
    pending_topic: str
    metrics: Metrics

    def submit(self, request: Request) -> Response:
        try:
            urls, source = _request(request.body)
        except ValueError as error:
            return Response(400, {"error": str(error)})
        extra_roles = (self.settings.operator_role,) if source in OPERATOR_SOURCES else ()
        token = _bearer(request.headers)
        if token is None:
            return Response(401, {"error": "no bearer token; run `rv login` first"})
        try:
            identity = self.verifier.verify(token, *extra_roles)
        except Unauthenticated as error:
            self._record_rejections(urls, None, f"rejected: {error}")
            return Response(401, {"error": str(error)})
        except Forbidden as error:
            self._record_rejections(urls, error.username, f"rejected: {error}")
            return Response(403, {"error": str(error)})
        repos, problems = validate_all(
            urls, self.settings.allowed_hosts, self.settings.allow_private_hosts
        )
        if problems:
            return Response(400, {"error": "nothing was queued", "problems": problems})
        try:
            jobs = self._queue(repos, identity.username)
        except TransientError as error:
            return Response(503, {"error": f"nothing was queued: {error}"})
        return Response(202, {"jobs": jobs})

    def _queue(self, repos: list[RepoUrl], username: str) -> list[dict[str, Any]]:
        created = []
        for repo in repos:
            job = self.database.run(db.create_job, uuid.uuid4(), repo.url, username)
            created.append(job)
        messages = [
            (encode(PendingJob(str(job.id), job.repo_url, username)), job.repo_url)
            for job in created
        ]
        try:
            _services.send_all(self.producer, self.pending_topic, messages)
        except TransientError as error:
            reason = f"could not be queued: {error}"
            self.database.run(db.fail_unqueued, [job.id for job in created], reason)
            raise TransientError(str(error)) from None
        for job in created:
            log.info("job accepted", extra={"job_id": str(job.id), "repo_url": job.repo_url})
        self.metrics.count("jobs_accepted", len(created))
        return [
            {
                "id": str(job.id),
                "repo_url": job.repo_url,
                "bucket": bucket_for(job.repo_url),
                "state": job.state,
                "submitted_by": job.submitted_by,
            }
            for job in created
        ]

    def _record_rejections(self, urls: list[str], username: str | None, reason: str) -> None:
        self.metrics.count("jobs_rejected", len(urls))
        for url in urls:
            try:
                shown = parse_repo_url(url).url
            except InvalidRepoUrl:
                shown = url[:300]
            self.database.run(db.record_rejected, uuid.uuid4(), shown, username, reason)
        log.warning("submission rejected", extra={"reason": reason, "user": username})


def _bearer(headers: dict[str, str]) -> str | None:
    value = next((v for k, v in headers.items() if k.lower() == "authorization"), "")
    scheme, _, token = value.partition(" ")
    return token.strip() or None if scheme.lower() == "bearer" else None


def _request(body: bytes) -> tuple[list[str], str]:
    """The URLs, and where they come from: ``submit`` (anyone with the submit role),
    ``trending`` or ``retry`` (operators only)."""
    try:
        document = json.loads(body or b"{}")
    except json.JSONDecodeError:
        raise ValueError("the request body is not JSON") from None
    urls = document.get("urls") if isinstance(document, dict) else None
    if not isinstance(urls, list) or not all(isinstance(url, str) for url in urls):
        raise ValueError('expected {"urls": ["https://host/owner/repo.git", ...]}')
    if not urls:
        raise ValueError("no URLs given")
    if len(urls) > MAX_URLS_PER_REQUEST:
        raise ValueError(f"at most {MAX_URLS_PER_REQUEST} URLs per request")
    source = document.get("source", "submit")
    if source not in SOURCES:
        raise ValueError(f"unknown source {source!r}; expected one of {', '.join(SOURCES)}")
    return urls, source
