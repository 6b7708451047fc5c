"""Fetching a repository into a bare repository: what the remote advertises, then its
branches and tags.

HTTP(S) and git:// go through pygit2 (libgit2), with per-host tokens from a netrc file.
SSH goes through git and OpenSSH, because pygit2 hands no host key to its certificate
callback and so cannot check one against a known_hosts file; OpenSSH checks it strictly.
Credentials never appear in URLs, arguments, errors or logs.
"""

from __future__ import annotations

import contextlib
import netrc
import os
import shlex
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pygit2

from repovault.urls import RepoUrl

REFSPECS = ["+refs/heads/*:refs/heads/*", "+refs/tags/*:refs/tags/*"]


class ArchiveFailed(Exception):
    """A permanent failure a person can act on (missing repository, credentials, size)."""


@dataclass(frozen=True)
class GitCredentials:
    """Where the worker finds credentials; empty strings mean none configured."""

    netrc_file: str = ""
    ssh_key_file: str = ""
    ssh_known_hosts_file: str = ""


@dataclass(frozen=True)
class Advertised:
    refs: dict[str, str]  # branches and tags -> object id
    head: str | None  # the ref HEAD points at, when the remote says


def list_remote(
    repo: pygit2.Repository, url: RepoUrl, creds: GitCredentials, max_bytes: int
) -> Advertised:
    if url.scheme == "ssh":
        return _ssh_list(url, creds)
    remote = repo.remotes.create_anonymous(url.url)
    heads = _pygit2_call(
        lambda: remote.list_heads(callbacks=_Callbacks(url, creds, max_bytes)), url
    )
    refs = {
        head.name: str(head.oid)
        for head in heads
        if head.name.startswith(("refs/heads/", "refs/tags/")) and not head.name.endswith("^{}")
    }
    head_ref = next((h.symref_target for h in heads if h.name == "HEAD"), None)
    return Advertised(refs, head_ref or None)


def fetch(repo: pygit2.Repository, url: RepoUrl, creds: GitCredentials, max_bytes: int) -> None:
    if url.scheme == "ssh":
        _ssh_fetch(repo, url, creds, max_bytes)
        return
    remote = repo.remotes.create_anonymous(url.url)
    _pygit2_call(lambda: remote.fetch(REFSPECS, callbacks=_Callbacks(url, creds, max_bytes)), url)


def too_large(max_bytes: int) -> ArchiveFailed:
    return ArchiveFailed(
        f"repository exceeds the size cap of {max_bytes} bytes (operators set RV_MAX_REPO_BYTES)"
    )


class _Callbacks(pygit2.RemoteCallbacks):
    """Size cap, and a token for hosts listed in the netrc file (offered once)."""

    def __init__(self, url: RepoUrl, creds: GitCredentials, max_bytes: int) -> None:
        super().__init__()
        self._url = url
        self._creds = creds
        self._max_bytes = max_bytes
        self._offered = False

    def transfer_progress(self, stats: Any) -> None:
        if stats.received_bytes > self._max_bytes:
            raise too_large(self._max_bytes)

    def credentials(self, url: str, username_from_url: str | None, allowed_types: Any) -> Any:
        found = _netrc_entry(self._creds.netrc_file, self._url.host)
        if found is None:
            raise ArchiveFailed(
                f"repository {self._url.url} needs credentials; add a token for "
                f"{self._url.host} to the worker's netrc file (RV_GIT_CREDENTIALS_FILE)"
            )
        if self._offered:
            raise ArchiveFailed(
                f"the token configured for {self._url.host} was refused for {self._url.url}"
            )
        self._offered = True
        return pygit2.UserPass(*found)


def _netrc_entry(path: str, host: str) -> tuple[str, str] | None:
    if not path:
        return None
    try:
        entry = netrc.netrc(path).authenticators(host)
    except (OSError, netrc.NetrcParseError) as error:
        raise ArchiveFailed(
            f"cannot read the credentials file RV_GIT_CREDENTIALS_FILE: {type(error).__name__}"
        ) from None
    if entry is None:
        return None
    login, _, password = entry
    return (login or "git", password or "")


def _pygit2_call(call: Any, url: RepoUrl) -> Any:
    try:
        return call()
    except pygit2.GitError as error:
        raise ArchiveFailed(_explain(url.url, str(error))) from None


def _explain(repo_url: str, message: str) -> str:
    lowered = message.lower()
    if "404" in lowered or "not found" in lowered or "does not appear to be a git" in lowered:
        return f"repository {repo_url} does not exist (or is not visible without credentials)"
    if "401" in lowered or "authentication" in lowered or "credentials" in lowered:
        return f"repository {repo_url} needs credentials; configure them on the worker"
    if "connect" in lowered or "resolve" in lowered:
        return f"cannot reach {repo_url}: {message}"
    return f"git could not fetch {repo_url}: {message}"


# --- SSH through git and OpenSSH ------------------------------------------------------------


def _ssh_env(url: RepoUrl, creds: GitCredentials) -> dict[str, str]:
    if not creds.ssh_key_file:
        raise ArchiveFailed(
            f"{url.url} is an SSH repository but the worker has no SSH key (set RV_SSH_KEY_FILE)"
        )
    if not creds.ssh_known_hosts_file:
        raise ArchiveFailed(
            f"{url.url} is an SSH repository but the worker has no known_hosts "
            "file (set RV_SSH_KNOWN_HOSTS_FILE); host keys are never trusted blindly"
        )
    command = (
        f"ssh -i {shlex.quote(creds.ssh_key_file)} -o IdentitiesOnly=yes -o BatchMode=yes "
        "-o StrictHostKeyChecking=yes "
        f"-o UserKnownHostsFile={shlex.quote(creds.ssh_known_hosts_file)} "
        "-o GlobalKnownHostsFile=/dev/null -o ConnectTimeout=20"
    )
    return {**os.environ, "GIT_SSH_COMMAND": command, "GIT_TERMINAL_PROMPT": "0"}


def _ssh_explain(url: RepoUrl, stderr: str) -> ArchiveFailed:
    if "Host key verification failed" in stderr or "HOST IDENTIFICATION HAS CHANGED" in stderr:
        return ArchiveFailed(
            f"the SSH host key of {url.host} is not in the worker's known_hosts file "
            "(RV_SSH_KNOWN_HOSTS_FILE) or does not match it; verify the key and add it"
        )
    if "Permission denied" in stderr:
        return ArchiveFailed(
            f"{url.host} refused the worker's SSH key (RV_SSH_KEY_FILE) for {url.url}"
        )
    if "does not appear to be a git repository" in stderr or "not found" in stderr.lower():
        return ArchiveFailed(f"repository {url.url} does not exist")
    last = stderr.strip().splitlines()[-1] if stderr.strip() else "no message"
    return ArchiveFailed(f"git could not fetch {url.url} over SSH: {last}")


def _ssh_list(url: RepoUrl, creds: GitCredentials) -> Advertised:
    result = subprocess.run(
        ["git", "ls-remote", "--symref", url.url],
        env=_ssh_env(url, creds),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    if result.returncode != 0:
        raise _ssh_explain(url, result.stderr)
    refs: dict[str, str] = {}
    head = None
    for line in result.stdout.splitlines():
        left, _, name = line.partition("\t")
        if left.startswith("ref: ") and name == "HEAD":
            head = left.removeprefix("ref: ")
        elif name.startswith(("refs/heads/", "refs/tags/")) and not name.endswith("^{}"):
            refs[name] = left
    return Advertised(refs, head)


def _ssh_fetch(
    repo: pygit2.Repository, url: RepoUrl, creds: GitCredentials, max_bytes: int
) -> None:
    objects = Path(repo.path, "objects")
    with subprocess.Popen(
        ["git", "fetch", "--quiet", url.url, *REFSPECS],
        cwd=repo.path,
        env=_ssh_env(url, creds),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    ) as process:
        while process.poll() is None:
            if _size(objects) > max_bytes:
                process.kill()
                process.wait()
                raise too_large(max_bytes)
            time.sleep(0.2)
        stderr = process.stderr.read() if process.stderr else ""
    if process.returncode != 0:
        raise _ssh_explain(url, stderr)


def _size(directory: Path) -> int:
    total = 0
    for path in directory.rglob("*"):
        with contextlib.suppress(FileNotFoundError):  # git renames files as it goes
            total += path.stat().st_size
    return total
