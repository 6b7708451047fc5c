"""What a repository's bucket holds, and how to read it back.

snapshots/<id>/repo.bundle      full history as one git bundle (absent when empty)
snapshots/<id>/files/<path>     the default branch's files, one object each
snapshots/<id>/manifest.json    written last: a snapshot without it is incomplete
latest                          the id of the newest complete snapshot
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

from minio import Minio
from minio.error import S3Error

MANIFEST_FORMAT = 1
LATEST_KEY = "latest"
SYMLINK_MODE = 0o120000


def snapshot_prefix(snapshot: str) -> str:
    return f"snapshots/{snapshot}/"


def bundle_key(snapshot: str) -> str:
    return f"{snapshot_prefix(snapshot)}repo.bundle"


def file_key(snapshot: str, path: str) -> str:
    return f"{snapshot_prefix(snapshot)}files/{path}"


def manifest_key(snapshot: str) -> str:
    return f"{snapshot_prefix(snapshot)}manifest.json"


@dataclass(frozen=True)
class FileEntry:
    path: str
    size: int
    sha256: str
    mode: int  # git file mode: 0o100644, 0o100755, or 0o120000 for a symlink (stored as its target)


@dataclass(frozen=True)
class Manifest:
    """The record of one complete snapshot."""

    repo_url: str
    snapshot: str
    job_id: str
    created: str
    head_commit: str | None
    default_branch: str | None
    refs: dict[str, str]
    bundle_size: int
    bundle_sha256: str | None
    files: list[FileEntry] = field(default_factory=list)
    format: int = MANIFEST_FORMAT

    @property
    def bytes_stored(self) -> int:
        return self.bundle_size + sum(entry.size for entry in self.files)

    def to_json(self) -> bytes:
        return json.dumps(asdict(self), indent=1, ensure_ascii=False).encode()

    @classmethod
    def from_json(cls, payload: bytes) -> Manifest:
        document: dict[str, Any] = json.loads(payload)
        files = [FileEntry(**entry) for entry in document.pop("files", [])]
        return cls(**document, files=files)


def read_manifest(client: Minio, bucket: str, snapshot: str) -> Manifest | None:
    """The manifest of a snapshot, or None when the snapshot is missing or incomplete."""
    payload = _get(client, bucket, manifest_key(snapshot))
    return Manifest.from_json(payload) if payload is not None else None


def latest_manifest(client: Minio, bucket: str) -> Manifest | None:
    """The newest complete snapshot of a bucket, or None when there is none yet."""
    pointer = _get(client, bucket, LATEST_KEY)
    if pointer is None:
        return None
    return read_manifest(client, bucket, json.loads(pointer)["snapshot"])


def list_manifests(client: Minio, bucket: str) -> list[Manifest]:
    """Every complete snapshot of a bucket, oldest first."""
    if not client.bucket_exists(bucket):
        return []
    manifests = []
    for item in client.list_objects(bucket, prefix="snapshots/"):
        snapshot = item.object_name.removeprefix("snapshots/").rstrip("/")
        manifest = read_manifest(client, bucket, snapshot)
        if manifest is not None:
            manifests.append(manifest)
    return sorted(manifests, key=lambda m: m.created)


def _get(client: Minio, bucket: str, key: str) -> bytes | None:
    try:
        response = client.get_object(bucket, key)
    except S3Error as error:
        if error.code in ("NoSuchKey", "NoSuchBucket"):
            return None
        raise
    try:
        return bytes(response.read())
    finally:
        response.close()
        response.release_conn()


def s3_client(endpoint: str, access_key: str, secret_key: str) -> Minio:
    """A MinIO client from an endpoint URL such as ``http://127.0.0.1:59000``."""
    secure = endpoint.startswith("https://")
    host = endpoint.split("://", 1)[-1].rstrip("/")
    return Minio(host, access_key=access_key, secret_key=secret_key, secure=secure)
