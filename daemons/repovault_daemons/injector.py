"""The injector daemon: the intake API, and the policy step between `pending` and
`in-progress`.

Policy, per job: the URL must be valid and its host allowed (checked again here: DNS may
have changed since the intake); a repository already dispatched or running makes the new
job a ``duplicate`` (it ends there, pointing at the active job). A job that passes goes to
`in-progress` keyed by its repository, so two workers never clone one repository at once.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from uuid import UUID

from confluent_kafka import Message, Producer

from repovault import db
from repovault.buckets import bucket_for
from repovault.jobs import Job, JobState
from repovault.messages import (
    DispatchedJob,
    MalformedMessage,
    PendingJob,
    completed,
    decode,
    encode,
)
from repovault.settings import Settings
from repovault.topics import Topics
from repovault.urls import InvalidRepoUrl, check_host_policy, parse_repo_url
from repovault_daemons import _services
from repovault_daemons._auth import TokenVerifier
from repovault_daemons._consumer import Pipeline, Shutdown
from repovault_daemons._http import HttpSide
from repovault_daemons._intake import Intake
from repovault_daemons._metrics import Metrics

log = logging.getLogger("rv.injector")


@dataclass
class InjectorStep:
    """One pending job: stamp it, apply policy, dispatch it or close it."""

    settings: Settings
    database: _services.Database
    producer: Producer
    topics: Topics
    metrics: Metrics

    def __call__(self, message: Message) -> None:
        pending = decode(PendingJob, message.value())
        job_id = UUID(pending.job_id)
        job = self.database.run(db.mark_injected, job_id)
        if job is None or job.repo_url != pending.repo_url:
            raise MalformedMessage(
                f"job {job_id} has no matching row: jobs enter only through the intake"
            )
        if job.state == JobState.QUEUED:
            job = self._apply_policy(job)
        context = {"job_id": str(job.id), "repo_url": job.repo_url, "state": job.state}
        if job.state == JobState.DISPATCHED:
            assert job.bucket is not None  # noqa: S101 -- dispatch always sets the bucket
            dispatched = DispatchedJob(str(job.id), job.repo_url, job.bucket)
            _services.send(
                self.producer, self.topics.in_progress, encode(dispatched), key=job.repo_url
            )
            self.metrics.count("jobs", outcome="dispatched")
            log.info("job dispatched", extra=context)
        elif job.state in (JobState.DUPLICATE, JobState.REJECTED):
            _services.send(
                self.producer, self.topics.completed, encode(completed(job)), job.repo_url
            )
            self.metrics.count("jobs", outcome=str(job.state))
            log.info("job closed by policy", extra={**context, "reason": job.error})
        else:
            log.info("job already past the injector; redelivery ignored", extra=context)

    def _apply_policy(self, job: Job) -> Job:
        try:
            repo = parse_repo_url(job.repo_url)
            check_host_policy(repo, self.settings.allowed_hosts, self.settings.allow_private_hosts)
        except InvalidRepoUrl as error:
            self.database.run(db.reject, job.id, str(error))
            return self.database.run(db.require_job, job.id)
        return self.database.run(db.dispatch, job.id, bucket_for(job.repo_url))


def run(settings: Settings, shutdown: Shutdown) -> None:
    """Serve the intake, health and metrics; make sure the topics exist; consume `pending`."""
    topics = Topics(settings.topic_prefix)
    if not _services.prepare_topics(settings.kafka_bootstrap, topics, shutdown):
        return
    metrics = Metrics("rv_injector")
    database = _services.Database(settings.database_url)
    producer = _services.producer(settings.kafka_bootstrap)
    intake = Intake(
        settings=settings,
        verifier=TokenVerifier(settings.issuer, settings.audience, settings.submit_role),
        database=_services.Database(settings.database_url),
        producer=producer,
        pending_topic=topics.pending,
        metrics=metrics,
    )
    http = HttpSide(settings.intake_listen, metrics)
    http.add_route("POST", "/v1/jobs", intake.submit)
    http.start()
    step = InjectorStep(settings, database, producer, topics, metrics)
    consumer = _services.consumer(settings.kafka_bootstrap, f"{settings.topic_prefix}rv-injectors")
    log.info("injector started", extra={"intake": settings.intake_listen})
    try:
        pipeline = Pipeline(consumer, producer, topics.pending, topics.dead_letter, step, shutdown)
        pipeline.observe(metrics, http)
        pipeline.run()
    finally:
        http.stop()
        database.close()
        log.info("injector stopped")


def main() -> None:
    settings = _services.daemon_settings("database_url")
    shutdown = Shutdown()
    shutdown.install()
    run(settings, shutdown)


if __name__ == "__main__":
    main()
