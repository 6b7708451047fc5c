"""The Kafka message schema: small JSON documents, versioned, validated on the way in."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from typing import Any, TypeVar
from uuid import UUID

from repovault.jobs import Job

SCHEMA_VERSION = 1


class MalformedMessage(ValueError):
    """A message that no retry can fix; consumers send it to the dead-letter topic."""


@dataclass(frozen=True)
class PendingJob:
    """`pending`: accepted by the intake; the identity was verified there."""

    job_id: str
    repo_url: str
    submitted_by: str


@dataclass(frozen=True)
class DispatchedJob:
    """`in-progress`: passed the injector's policy; keyed by repository URL."""

    job_id: str
    repo_url: str
    bucket: str


@dataclass(frozen=True)
class CompletedJob:
    """`completed`: the outcome, once PostgreSQL has recorded it."""

    job_id: str
    repo_url: str
    state: str
    bucket: str | None = None
    snapshot: str | None = None
    head_commit: str | None = None
    bytes_stored: int | None = None
    error: str | None = None


def completed(job: Job) -> CompletedJob:
    """The `completed` announcement of a job whose outcome PostgreSQL has recorded."""
    return CompletedJob(
        str(job.id),
        job.repo_url,
        str(job.state),
        job.bucket,
        job.snapshot,
        job.head_commit,
        job.bytes_stored,
        job.error,
    )


Message = TypeVar("Message", PendingJob, DispatchedJob, CompletedJob)


def encode(message: PendingJob | DispatchedJob | CompletedJob) -> bytes:
    return json.dumps({"v": SCHEMA_VERSION, **asdict(message)}, separators=(",", ":")).encode()


def decode(kind: type[Message], payload: bytes | None) -> Message:
    """Parse and check a message of the given kind, or raise ``MalformedMessage``."""
    if not payload:
        raise MalformedMessage("empty message")
    try:
        document: Any = json.loads(payload)
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise MalformedMessage(f"not JSON: {error}") from None
    if not isinstance(document, dict):
        raise MalformedMessage("not a JSON object")
    if document.get("v") != SCHEMA_VERSION:
        raise MalformedMessage(f"unsupported schema version {document.get('v')!r}")
    values: dict[str, Any] = {}
    for spec in fields(kind):
        required = spec.default is spec.default_factory  # both MISSING: no default
        if spec.name not in document:
            if required:
                raise MalformedMessage(f"missing field {spec.name!r}")
            continue
        value = document[spec.name]
        if not _has_type(value, str(spec.type)):
            raise MalformedMessage(f"field {spec.name!r} should be {spec.type}")
        values[spec.name] = value
    _check_job_id(values["job_id"])
    return kind(**values)


def _has_type(value: object, declared: str) -> bool:
    if value is None:
        return "None" in declared
    if isinstance(value, bool):
        return False
    if isinstance(value, str):
        return declared.startswith("str")
    return isinstance(value, int) and declared.startswith("int")


def _check_job_id(value: object) -> None:
    try:
        UUID(str(value))
    except ValueError:
        raise MalformedMessage(f"job_id {value!r} is not a UUID") from None
