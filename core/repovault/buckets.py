"""Bucket naming: one valid, collision-free S3 bucket per repository URL."""

from __future__ import annotations

import hashlib
import re

_MAX = 63
_HASH_LEN = 10


def bucket_for(repo_url: str) -> str:
    """A deterministic S3 bucket name for a normalised repository URL.

    Readable part from host and path, then a hash of the whole URL so that two URLs
    that read alike (``a/b-c`` and ``a-b/c``) never share a bucket.
    """
    digest = hashlib.sha256(repo_url.encode()).hexdigest()[:_HASH_LEN]
    tail = repo_url.split("://", 1)[-1].split("@", 1)[-1]
    readable = re.sub(r"[^a-z0-9]+", "-", tail.lower().removesuffix(".git")).strip("-")
    room = _MAX - len("rv--") - _HASH_LEN
    readable = readable[:room].strip("-") or "repo"
    return f"rv-{readable}-{digest}"
