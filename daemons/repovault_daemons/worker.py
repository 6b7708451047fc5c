"""The worker daemon: takes dispatched jobs, archives each repository into its bucket.

Run several with the same group to share the work (``RV_WORKER_GROUP``); Kafka keys jobs
by repository, so one repository is never cloned by two workers at once.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from dataclasses import dataclass
from uuid import UUID

import urllib3
from confluent_kafka import Message, Producer
from minio import Minio
from minio.error import S3Error, ServerError

from repovault import db
from repovault.jobs import Job, JobState
from repovault.messages import DispatchedJob, MalformedMessage, completed, decode, encode
from repovault.settings import Settings
from repovault.snapshots import s3_client
from repovault.topics import Topics
from repovault_daemons import _services
from repovault_daemons._archive import ArchiveLimits, archive
from repovault_daemons._consumer import Pipeline, Shutdown, ShutdownNow, TransientError
from repovault_daemons._fetch import ArchiveFailed, GitCredentials
from repovault_daemons._http import HttpSide
from repovault_daemons._metrics import Metrics

log = logging.getLogger("rv.worker")


@dataclass
class WorkerStep:
    """One dispatched job: claim, archive, record the outcome, announce it."""

    database: _services.Database
    storage: Minio
    producer: Producer
    topics: Topics
    worker_id: str
    limits: ArchiveLimits
    credentials: GitCredentials
    work_dir: str
    metrics: Metrics

    def __call__(self, message: Message) -> None:
        dispatched = decode(DispatchedJob, message.value())
        job_id = UUID(dispatched.job_id)
        job = self.database.run(db.claim, job_id, self.worker_id)
        if job is None:
            final = self.database.run(db.get_job, job_id)
            if final is None:
                raise MalformedMessage(f"job {job_id} has no row")
            log.info("job already final; announced again", extra={"job_id": str(job_id)})
            self._announce(final)
            return
        context = {"job_id": str(job_id), "repo_url": job.repo_url, "attempt": job.attempts}
        log.info("archiving", extra=context)
        started = time.monotonic()
        try:
            result = archive(
                self.storage,
                job.repo_url,
                dispatched.bucket,
                str(job_id),
                self.work_dir,
                self.limits,
                self.credentials,
            )
            outcome = db.Outcome(
                result.state, result.snapshot, result.head_commit, result.bytes_stored
            )
        except ArchiveFailed as error:
            outcome = db.Outcome(JobState.FAILED, error=str(error))
        except (urllib3.exceptions.HTTPError, ServerError) as error:
            raise TransientError(f"storage unavailable: {error}") from None
        except S3Error as error:
            if error.code in ("SlowDown", "ServiceUnavailable", "InternalError"):
                raise TransientError(f"storage busy: {error.code}") from None
            raise
        except ShutdownNow:
            self.database.run(db.release, job_id, self.worker_id)
            log.info("job released for another worker", extra=context)
            raise
        except Exception as error:  # a bug: close the job, then dead-letter the message
            reason = f"internal error ({type(error).__name__}); see the worker's log"
            self.database.run(db.finish, job_id, db.Outcome(JobState.FAILED, error=reason))
            raise
        finished = self.database.run(db.finish, job_id, outcome)
        self._announce(finished)
        elapsed = time.monotonic() - started
        self.metrics.count("jobs", outcome=finished.state)
        self.metrics.observe("archive_seconds", elapsed)
        self.metrics.count("bytes_stored", finished.bytes_stored or 0)
        if finished.queue_wait_seconds is not None:
            self.metrics.observe("queue_wait_seconds", finished.queue_wait_seconds)
        log.info(
            "job finished",
            extra={**context, "state": finished.state, "error": finished.error, "seconds": elapsed},
        )

    def _announce(self, job: Job) -> None:
        """Publish the recorded outcome to `completed` (again, after a redelivery)."""
        _services.send(
            self.producer, self.topics.completed, encode(completed(job)), key=job.repo_url
        )


def run(settings: Settings, shutdown: Shutdown) -> None:
    """Serve health and metrics, make sure the topics exist, then consume until stopped."""
    topics = Topics(settings.topic_prefix)
    if not _services.prepare_topics(settings.kafka_bootstrap, topics, shutdown):
        return
    metrics = Metrics("rv_worker")
    http = HttpSide(settings.worker_health_listen, metrics)
    http.start()
    database = _services.Database(settings.database_url)
    producer = _services.producer(settings.kafka_bootstrap)
    consumer = _services.consumer(settings.kafka_bootstrap, f"{settings.topic_prefix}rv-workers")
    step = WorkerStep(
        database=database,
        storage=s3_client(settings.s3_endpoint, settings.s3_access_key, settings.s3_secret_key),
        producer=producer,
        topics=topics,
        worker_id=f"{socket.gethostname()}-{os.getpid()}",
        limits=ArchiveLimits(max_repo_bytes=settings.max_repo_bytes),
        credentials=GitCredentials(
            settings.git_credentials_file, settings.ssh_key_file, settings.ssh_known_hosts_file
        ),
        work_dir=settings.work_dir,
        metrics=metrics,
    )
    log.info("worker started", extra={"worker_id": step.worker_id, "health_port": http.port})
    try:
        pipeline = Pipeline(
            consumer, producer, topics.in_progress, topics.dead_letter, step, shutdown
        )
        pipeline.observe(metrics, http)
        pipeline.run()
    finally:
        http.stop()
        database.close()
        log.info("worker stopped", extra={"worker_id": step.worker_id})


def main() -> None:
    settings = _services.daemon_settings("database_url", "s3_access_key", "s3_secret_key")
    shutdown = Shutdown()
    shutdown.install()
    run(settings, shutdown)


if __name__ == "__main__":
    main()
