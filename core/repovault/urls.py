"""Repository URLs: what rv accepts, in one normalised, credential-free form."""

from __future__ import annotations

import ipaddress
import re
import socket
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

SUPPORTED_SCHEMES = ("https", "http", "git", "ssh")
_SCP_LIKE = re.compile(r"^(?P<user>[A-Za-z0-9._-]+)@(?P<host>[A-Za-z0-9.-]+):(?P<path>[^/].*)$")
_LABEL = r"[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?"
_HOST = re.compile(rf"^{_LABEL}(\.{_LABEL})*$")

Resolver = Callable[[str], Iterable[str]]


class InvalidRepoUrl(ValueError):
    """A URL rv will not archive; the message says why and what to do instead."""


@dataclass(frozen=True)
class RepoUrl:
    """A validated repository URL. ``url`` is the normalised text used as the job's key."""

    url: str
    scheme: str
    host: str
    port: int | None
    path: str

    def __str__(self) -> str:
        return self.url


def parse_repo_url(raw: str) -> RepoUrl:
    """Validate syntax and scheme; credentials in the URL are refused, never stored."""
    text = raw.strip()
    if not text:
        raise InvalidRepoUrl("empty repository URL; give a URL such as https://host/owner/repo.git")
    if any(ch.isspace() or ord(ch) < 32 for ch in text):
        raise InvalidRepoUrl(f"{_shown(text)}: URLs cannot contain spaces or control characters")
    scp = _SCP_LIKE.match(text)
    if scp and "://" not in text:
        host = scp["host"].lower()
        _check_host(text, host)
        path = "/" + scp["path"]
        return RepoUrl(f"ssh://{scp['user']}@{host}{path}", "ssh", host, None, path)
    if "::" in text.split("/", 1)[0]:
        raise InvalidRepoUrl(
            f"{_shown(text)}: git remote helpers (transport::address) are not allowed; "
            f"use one of {', '.join(SUPPORTED_SCHEMES)}"
        )
    parts = urlsplit(text)
    scheme = parts.scheme.lower()
    if not scheme:
        raise InvalidRepoUrl(
            f"{_shown(text)}: not a URL (local paths are not archived); "
            "give a URL such as https://host/owner/repo.git"
        )
    if scheme not in SUPPORTED_SCHEMES:
        raise InvalidRepoUrl(
            f"{_shown(text)}: scheme {scheme!r} is not supported; use one of "
            f"{', '.join(SUPPORTED_SCHEMES)}"
        )
    if parts.password is not None or (parts.username and scheme != "ssh"):
        raise InvalidRepoUrl(
            f"{_shown(text)}: credentials do not belong in the URL; configure them on the "
            "worker (see the README, 'Private repositories')"
        )
    host = (parts.hostname or "").lower()
    if not host:
        raise InvalidRepoUrl(f"{_shown(text)}: the URL has no host")
    _check_host(text, host)
    try:
        port = parts.port
    except ValueError:
        raise InvalidRepoUrl(f"{_shown(text)}: the port is not between 1 and 65535") from None
    path = parts.path.rstrip("/")
    if not path or path == "/":
        raise InvalidRepoUrl(f"{_shown(text)}: the URL names no repository path")
    if parts.query or parts.fragment:
        raise InvalidRepoUrl(f"{_shown(text)}: repository URLs take no query or fragment")
    user = f"{parts.username}@" if parts.username else ""
    netloc = f"{user}{_bracket(host)}{f':{port}' if port else ''}"
    return RepoUrl(urlunsplit((scheme, netloc, path, "", "")), scheme, host, port, path)


def check_host_policy(
    repo: RepoUrl,
    allowed_hosts: Iterable[str],
    allow_private_hosts: Iterable[str],
    resolve: Resolver | None = None,
) -> None:
    """Refuse hosts outside the allow list, and hosts resolving to loopback or private
    addresses unless the operator allowed that host (or address) explicitly."""
    allowed = [h.lower() for h in allowed_hosts]
    if "*" not in allowed and repo.host not in allowed:
        raise InvalidRepoUrl(
            f"{repo.url}: host {repo.host} is not allowed; allowed hosts are "
            f"{', '.join(allowed) or 'none'} (operators set RV_ALLOWED_HOSTS)"
        )
    private_ok = {h.lower() for h in allow_private_hosts}
    if repo.host in private_ok:
        return
    lookup = resolve or _resolve
    try:
        addresses = list(lookup(repo.host))
    except OSError as error:
        raise InvalidRepoUrl(f"{repo.url}: host {repo.host} does not resolve ({error})") from None
    for address in addresses:
        ip = ipaddress.ip_address(address)
        if address in private_ok:
            continue
        if not ip.is_global:
            raise InvalidRepoUrl(
                f"{repo.url}: host {repo.host} resolves to the non-public address {address}; "
                "operators can allow it with RV_ALLOW_PRIVATE_HOSTS"
            )


def validate_all(
    urls: Iterable[str],
    allowed_hosts: Iterable[str],
    allow_private_hosts: Iterable[str],
    resolve: Resolver | None = None,
) -> tuple[list[RepoUrl], list[str]]:
    """Parse and check every URL; the valid ones, and one message per refused one."""
    allowed, private_ok = list(allowed_hosts), list(allow_private_hosts)
    repos: list[RepoUrl] = []
    problems: list[str] = []
    for url in urls:
        try:
            repo = parse_repo_url(url)
            check_host_policy(repo, allowed, private_ok, resolve)
            repos.append(repo)
        except InvalidRepoUrl as error:
            problems.append(str(error))
    return repos, problems


def unresolved(host: str) -> list[str]:
    """A resolver for clients: no addresses, so the address policy is left to the intake,
    which resolves with the daemons' DNS and the operators' RV_ALLOW_PRIVATE_HOSTS."""
    return []


def literal_addresses(host: str) -> list[str]:
    """A resolver that does no DNS: an IP literal is its own address, a name has none known.
    For screening URLs from elsewhere (GitHub's answers) before they reach the intake."""
    try:
        return [str(ipaddress.ip_address(host))]
    except ValueError:
        return []


def _resolve(host: str) -> list[str]:
    infos = socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)
    return sorted({str(info[4][0]) for info in infos})


def _check_host(text: str, host: str) -> None:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        if not _HOST.match(host):
            raise InvalidRepoUrl(f"{_shown(text)}: {host!r} is not a valid host name") from None


def _bracket(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def _shown(text: str) -> str:
    """The URL as it may appear in an error: any password replaced, length capped."""
    shown = re.sub(r"//([^/@:]*):[^/@]*@", r"//\1:***@", text)
    return shown if len(shown) <= 200 else shown[:200] + "..."
