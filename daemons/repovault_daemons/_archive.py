"""Cloning a repository with pygit2 and storing it, restorable, in its MinIO bucket."""

from __future__ import annotations

import hashlib
import io
import json
import logging
import subprocess
import tempfile
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any, BinaryIO, cast

import pygit2
from minio import Minio
from minio.error import S3Error

from repovault.jobs import JobState
from repovault.snapshots import (
    LATEST_KEY,
    SYMLINK_MODE,
    FileEntry,
    Manifest,
    bundle_key,
    file_key,
    latest_manifest,
    manifest_key,
    read_manifest,
)
from repovault.urls import parse_repo_url
from repovault_daemons._fetch import GitCredentials, fetch, list_remote

log = logging.getLogger(__name__)
MIB = 1024 * 1024
PART_BYTES = 5 * MIB  # S3's smallest multipart part: what one upload holds in memory


@dataclass(frozen=True)
class ArchiveLimits:
    max_repo_bytes: int
    upload_threads: int = 8
    stream_above_bytes: int = 4 * MIB  # larger files are streamed from git, not held in memory


@dataclass(frozen=True)
class ArchiveResult:
    state: JobState  # DONE or UNCHANGED
    snapshot: str
    head_commit: str | None
    bytes_stored: int


def archive(
    client: Minio,
    repo_url: str,
    bucket: str,
    snapshot: str,
    work_dir: str | None,
    limits: ArchiveLimits,
    credentials: GitCredentials,
) -> ArchiveResult:
    """Store ``repo_url`` as snapshot ``snapshot`` (the job id) of ``bucket``.

    Idempotent: a snapshot whose manifest already exists is not redone, and a repository
    whose refs equal the latest snapshot's is recorded as unchanged without a clone.
    The temporary clone is deleted whatever happens.
    """
    existing = read_manifest(client, bucket, snapshot)
    if existing is not None:
        return ArchiveResult(JobState.DONE, snapshot, existing.head_commit, existing.bytes_stored)
    with tempfile.TemporaryDirectory(prefix="rv-clone-", dir=work_dir or None) as tmp:
        repo = pygit2.init_repository(str(Path(tmp, "repo.git")), bare=True)
        url = parse_repo_url(repo_url)
        advertised = list_remote(repo, url, credentials, limits.max_repo_bytes)
        previous = latest_manifest(client, bucket)
        if previous is not None and previous.refs == advertised.refs:
            return ArchiveResult(JobState.UNCHANGED, previous.snapshot, previous.head_commit, 0)
        if advertised.refs:
            fetch(repo, url, credentials, limits.max_repo_bytes)
        manifest = _store(
            client, repo, bucket, snapshot, repo_url, advertised.head, Path(tmp), limits
        )
    return ArchiveResult(JobState.DONE, snapshot, manifest.head_commit, manifest.bytes_stored)


def _refs(repo: pygit2.Repository) -> dict[str, str]:
    names = [name for name in repo.references if name.startswith(("refs/heads/", "refs/tags/"))]
    return {name: str(repo.references[name].target) for name in sorted(names)}


def _store(
    client: Minio,
    repo: pygit2.Repository,
    bucket: str,
    snapshot: str,
    repo_url: str,
    head_ref: str | None,
    tmp: Path,
    limits: ArchiveLimits,
) -> Manifest:
    refs = _refs(repo)
    branches = [name for name in refs if name.startswith("refs/heads/")]
    default_branch = head_ref if head_ref in refs else (branches[0] if branches else None)
    head_commit = None
    if default_branch is not None:
        repo.set_head(default_branch)
        head_commit = str(repo.references[default_branch].peel(pygit2.Commit).id)
    try:
        client.make_bucket(bucket)
    except S3Error as error:
        if error.code not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
            raise
    with ThreadPoolExecutor(limits.upload_threads) as pool:
        # The bundle is written and uploaded while the files go up beside it.
        bundle = pool.submit(_store_bundle, client, repo, bucket, snapshot, tmp) if refs else None
        files: list[FileEntry] = []
        if head_commit is not None:
            tree = repo.revparse_single(head_commit).peel(pygit2.Tree)
            files = list(
                pool.map(
                    lambda item: _upload_file(
                        client, repo, bucket, snapshot, item[0], item[1], limits
                    ),
                    _walk(repo, tree, ""),
                )
            )
        bundle_size, bundle_sha = bundle.result() if bundle else (0, None)
    manifest = Manifest(
        repo_url=repo_url,
        snapshot=snapshot,
        job_id=snapshot,
        created=datetime.now(UTC).isoformat(),
        head_commit=head_commit,
        default_branch=default_branch,
        refs=refs,
        bundle_size=bundle_size,
        bundle_sha256=bundle_sha,
        files=sorted(files, key=lambda entry: entry.path),
    )
    _put_bytes(client, bucket, manifest_key(snapshot), manifest.to_json(), "application/json")
    pointer = json.dumps({"snapshot": snapshot}).encode()
    _put_bytes(client, bucket, LATEST_KEY, pointer, "application/json")
    return manifest


def _store_bundle(
    client: Minio, repo: pygit2.Repository, bucket: str, snapshot: str, tmp: Path
) -> tuple[int, str]:
    """Write every branch and tag as one git bundle and upload it; its size and sha256."""
    bundle = tmp / "repo.bundle"
    subprocess.run(
        ["git", "bundle", "create", "--quiet", str(bundle), "--all"],
        cwd=repo.path,
        check=True,
        capture_output=True,
    )
    client.fput_object(bucket, bundle_key(snapshot), str(bundle), part_size=PART_BYTES)
    return bundle.stat().st_size, _sha256_file(bundle)


def _walk(repo: pygit2.Repository, tree: pygit2.Tree, prefix: str) -> Iterator[tuple[str, Any]]:
    """Blobs and symlinks of a tree, recursively; submodules (commits) are skipped."""
    for entry in tree:
        path = f"{prefix}{entry.name}"
        if entry.type_str == "tree":
            yield from _walk(repo, repo[entry.id].peel(pygit2.Tree), f"{path}/")
        elif entry.type_str == "blob":
            yield path, entry


def _upload_file(
    client: Minio,
    repo: pygit2.Repository,
    bucket: str,
    snapshot: str,
    path: str,
    entry: Any,
    limits: ArchiveLimits,
) -> FileEntry:
    _, size = repo.odb.read_header(entry.id)  # the size, without loading the content
    mode = int(entry.filemode)
    metadata: dict[str, str | list[str] | tuple[str]] = {"rv-mode": oct(mode)}
    if size > limits.stream_above_bytes and mode != SYMLINK_MODE:
        with subprocess.Popen(
            ["git", "cat-file", "blob", str(entry.id)], cwd=repo.path, stdout=subprocess.PIPE
        ) as process:
            assert process.stdout is not None  # noqa: S101 -- PIPE was requested
            reader = _HashingReader(process.stdout)
            client.put_object(
                bucket,
                file_key(snapshot, path),
                cast(BinaryIO, reader),
                size,
                metadata=metadata,
                part_size=PART_BYTES,
            )
        return FileEntry(path, size, reader.hexdigest(), mode)
    data = cast(pygit2.Blob, repo[entry.id]).data
    _put_bytes(client, bucket, file_key(snapshot, path), data, metadata=metadata)
    return FileEntry(path, size, hashlib.sha256(data).hexdigest(), mode)


class _HashingReader(io.RawIOBase):
    """Passes a stream through while computing its sha256."""

    def __init__(self, stream: IO[bytes]) -> None:
        self._stream = stream
        self._hash = hashlib.sha256()

    def read(self, size: int = -1) -> bytes:
        chunk = self._stream.read(size)
        self._hash.update(chunk)
        return chunk

    def readable(self) -> bool:
        return True

    def hexdigest(self) -> str:
        return self._hash.hexdigest()


def _put_bytes(
    client: Minio,
    bucket: str,
    key: str,
    data: bytes,
    content_type: str = "application/octet-stream",
    metadata: dict[str, str | list[str] | tuple[str]] | None = None,
) -> None:
    client.put_object(
        bucket, key, io.BytesIO(data), len(data), content_type=content_type, metadata=metadata
    )


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(MIB), b""):
            digest.update(chunk)
    return digest.hexdigest()
