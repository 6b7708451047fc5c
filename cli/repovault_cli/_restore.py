"""Restoring a snapshot from MinIO into a working git repository."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path
from uuid import UUID

from minio import Minio

from repovault import db
from repovault.buckets import bucket_for
from repovault.snapshots import (
    Manifest,
    bundle_key,
    latest_manifest,
    list_manifests,
    read_manifest,
)
from repovault.urls import InvalidRepoUrl, parse_repo_url


class RestoreError(Exception):
    """Nothing was restored; DEST is left as it was."""


def find_snapshot(
    conn: db.Connection, storage: Minio, target: str, snapshot: str | None
) -> tuple[str, Manifest]:
    """Resolve a job id or repository URL (and optional snapshot id) to a manifest."""
    bucket, snapshot = _bucket_and_snapshot(conn, target, snapshot)
    manifest = (
        read_manifest(storage, bucket, snapshot) if snapshot else latest_manifest(storage, bucket)
    )
    if manifest is None:
        known = ", ".join(m.snapshot for m in list_manifests(storage, bucket)) or "none"
        raise RestoreError(
            f"no complete snapshot {snapshot or '(latest)'} for {target}; snapshots: {known}"
        )
    return bucket, manifest


def _bucket_and_snapshot(
    conn: db.Connection, target: str, snapshot: str | None
) -> tuple[str, str | None]:
    """A job id names its bucket and snapshot; a URL names its bucket (latest snapshot)."""
    try:
        job_id = UUID(target)
    except ValueError:
        try:
            return bucket_for(parse_repo_url(target).url), snapshot
        except InvalidRepoUrl as error:
            raise RestoreError(f"{error}; give a job id or a repository URL") from None
    job = db.get_job(conn, job_id)
    if job is None:
        raise RestoreError(f"no job {target}")
    if not job.snapshot or not job.bucket:
        raise RestoreError(f"job {target} has no snapshot (state {job.state})")
    return job.bucket, snapshot or job.snapshot


def restore(storage: Minio, bucket: str, manifest: Manifest, destination: Path) -> None:
    """Clone the snapshot into ``destination`` with every branch and tag as it was
    archived, check the default branch out, and verify the refs against the manifest."""
    if destination.exists() and any(destination.iterdir()):
        raise RestoreError(f"{destination} exists and is not empty; choose a new directory")
    created = not destination.exists()
    try:
        _restore_into(storage, bucket, manifest, destination)
    except BaseException:
        if created:
            shutil.rmtree(destination, ignore_errors=True)
        else:
            for child in destination.iterdir():
                shutil.rmtree(child) if child.is_dir() else child.unlink()
        raise


def _restore_into(storage: Minio, bucket: str, manifest: Manifest, destination: Path) -> None:
    branch = (manifest.default_branch or "refs/heads/main").removeprefix("refs/heads/")
    _git("init", "--quiet", "-b", branch, str(destination))
    if manifest.refs:
        with tempfile.TemporaryDirectory(prefix="rv-restore-") as tmp:
            bundle = Path(tmp, "repo.bundle")
            storage.fget_object(bucket, bundle_key(manifest.snapshot), str(bundle))
            _git(
                "-C",
                str(destination),
                "fetch",
                "--quiet",
                "--update-head-ok",
                str(bundle),
                "+refs/heads/*:refs/heads/*",
                "+refs/tags/*:refs/tags/*",
            )
        _git("-C", str(destination), "reset", "--quiet", "--hard")
    _git("-C", str(destination), "remote", "add", "origin", manifest.repo_url)
    restored = _git(
        "-C",
        str(destination),
        "for-each-ref",
        "--format=%(refname) %(objectname)",
        "refs/heads",
        "refs/tags",
    )
    refs = dict(line.split(" ", 1) for line in restored.splitlines() if line)
    if refs != manifest.refs:
        raise RestoreError("the restored refs differ from the snapshot's manifest")


def _git(*args: str) -> str:
    result = subprocess.run(["git", *args], capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise RestoreError(
            f"git {args[0] if args[0] != '-C' else args[2]} failed: {result.stderr.strip()}"
        )
    return result.stdout
