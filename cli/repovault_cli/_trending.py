"""Trending repositories on GitHub, archived.

GitHub has no trending endpoint, so RepoVault defines it: **the repositories created in
the window (the last day, week or month, UTC) with the most stars**, i.e.

    GET {RV_GITHUB_API_URL}/search/repositories
        ?q=created:>=DATE[ language:L]&sort=stars&order=desc&per_page=N

where DATE is today (UTC) minus 1, 7 or 30 days. Repositories already archived whose
latest job ended ``done``/``unchanged`` after their last push (GitHub's ``pushed_at``) are
skipped; the rest are submitted as ordinary jobs. See ``docs/trending.md``.

Rate limits: the answer's ``x-ratelimit-remaining``/``x-ratelimit-reset``/``retry-after``
headers are read; a rate-limited answer (403/429) is retried after waiting only when the
wait is short (``max_wait`` seconds), and at most ``MAX_ATTEMPTS`` times in all; otherwise
the error says when the limit resets. The token (``RV_GITHUB_TOKEN``) is sent as a header
only, and never appears in an error message.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any
from uuid import UUID

import httpx
from rich.markup import escape
from rich.table import Table

from repovault import db
from repovault.jobs import JobState
from repovault.settings import Settings
from repovault.urls import InvalidRepoUrl, check_host_policy, literal_addresses, parse_repo_url
from repovault_cli import _submit, _tokens

WINDOWS = {"day": 1, "week": 7, "month": 30}
DEFAULT_MAX_WAIT_SECONDS = 60.0
MAX_ATTEMPTS = 3
MAX_PER_PAGE = 100
API_VERSION = "2022-11-28"

Sleep = Callable[[float], None]
Clock = Callable[[], float]


class TrendingError(Exception):
    """GitHub could not be asked or refused; the message says why and what to do."""


@dataclass(frozen=True)
class TrendingRepo:
    """One search result, as much of it as RepoVault uses."""

    full_name: str
    clone_url: str
    stars: int
    language: str | None
    description: str | None
    pushed_at: datetime | None


@dataclass(frozen=True)
class Entry:
    """A ranked repository and what `rv trending` did (or would do) with it.

    ``action`` is ``queued`` (``job_id`` set), ``would queue`` (dry run) or ``skipped``
    (``reason`` set)."""

    rank: int
    repo: TrendingRepo
    action: str
    reason: str | None = None
    job_id: UUID | None = None

    def to_dict(self) -> dict[str, object]:
        return {
            "rank": self.rank,
            "full_name": self.repo.full_name,
            "clone_url": self.repo.clone_url,
            "stars": self.repo.stars,
            "language": self.repo.language,
            "description": self.repo.description,
            "pushed_at": self.repo.pushed_at.isoformat() if self.repo.pushed_at else None,
            "action": self.action,
            "reason": self.reason,
            "job_id": str(self.job_id) if self.job_id else None,
        }


# --- asking GitHub ---------------------------------------------------------------------------


def window_start(since: str, today: date | None = None) -> date:
    """The first day of the window: today (UTC) minus 1, 7 or 30 days."""
    if since not in WINDOWS:
        raise TrendingError(f"--since must be one of {', '.join(WINDOWS)}, not {since!r}")
    return (today or datetime.now(UTC).date()) - timedelta(days=WINDOWS[since])


def search_query(since: str, language: str | None = None, today: date | None = None) -> str:
    """The ``q`` parameter: ``created:>=DATE``, plus ``language:L`` when one is given."""
    query = f"created:>={window_start(since, today).isoformat()}"
    if language and language.strip():
        name = language.strip()
        query += f' language:"{name}"' if any(ch.isspace() for ch in name) else f" language:{name}"
    return query


def headers(settings: Settings) -> dict[str, str]:
    """Request headers; ``Authorization`` only when RV_GITHUB_TOKEN is set."""
    sent = {
        "Accept": "application/vnd.github+json",
        "X-GitHub-Api-Version": API_VERSION,
        "User-Agent": "repovault",
    }
    if settings.github_token:
        sent["Authorization"] = f"Bearer {settings.github_token}"
    return sent


def fetch(
    settings: Settings,
    *,
    limit: int = 10,
    language: str | None = None,
    since: str = "week",
    sleep: Sleep = time.sleep,
    clock: Clock = time.time,
    max_wait: float = DEFAULT_MAX_WAIT_SECONDS,
    today: date | None = None,
) -> list[TrendingRepo]:
    """The top ``limit`` repositories of the window, most stars first."""
    if not 1 <= limit <= MAX_PER_PAGE:
        raise TrendingError(f"the limit must be between 1 and {MAX_PER_PAGE}, not {limit}")
    api = settings.github_api_url.rstrip("/")
    url = f"{api}/search/repositories"
    params = {
        "q": search_query(since, language, today),
        "sort": "stars",
        "order": "desc",
        "per_page": str(limit),
    }
    token = settings.github_token
    for attempt in range(1, MAX_ATTEMPTS + 1):
        try:
            response = httpx.get(url, params=params, headers=headers(settings), timeout=30)
        except httpx.HTTPError as failure:
            raise TrendingError(
                f"cannot reach the GitHub API at {api} ({type(failure).__name__}); check the "
                "network, or RV_GITHUB_API_URL for GitHub Enterprise"
            ) from None
        if response.status_code == 200:
            return _repos(response, api)[:limit]
        wait = _rate_limit_wait(response, clock())
        if wait is None:
            raise TrendingError(_hide(_refusal(response, api, bool(token)), token))
        if wait > max_wait or attempt == MAX_ATTEMPTS:
            raise TrendingError(_hide(_rate_limited(response, api, wait, clock(), token), token))
        sleep(wait)
    raise AssertionError("unreachable")  # pragma: no cover


def _rate_limit_wait(response: httpx.Response, now: float) -> float | None:
    """Seconds to wait before asking again when the answer is a rate limit, else None."""
    if response.status_code not in (403, 429):
        return None
    retry_after = response.headers.get("retry-after")
    if retry_after is not None:
        try:
            return max(0.0, float(retry_after))
        except ValueError:
            pass
    if response.headers.get("x-ratelimit-remaining") == "0":
        try:
            reset = float(response.headers["x-ratelimit-reset"])
        except (KeyError, ValueError):
            return DEFAULT_MAX_WAIT_SECONDS
        return max(0.0, math.ceil(reset - now) + 1)
    if "rate limit" in _message(response).lower():
        # a secondary rate limit without headers: GitHub asks for at least a minute
        return DEFAULT_MAX_WAIT_SECONDS
    if response.status_code == 429:
        return DEFAULT_MAX_WAIT_SECONDS
    return None


def _rate_limited(response: httpx.Response, api: str, wait: float, now: float, token: str) -> str:
    reset = now + wait  # retry-after, or the reset header plus a second of slack
    if response.headers.get("retry-after") is None:
        with contextlib.suppress(KeyError, ValueError):
            reset = float(response.headers["x-ratelimit-reset"])
    reset_at = datetime.fromtimestamp(reset, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    text = (
        f"the GitHub API at {api} is rate limited (HTTP {response.status_code}: "
        f"{_message(response) or 'rate limit exceeded'}); the limit resets at {reset_at} "
        f"(in {_duration(wait)})"
    )
    if token:
        return text + "; try again then"
    return text + "; try again then, or set RV_GITHUB_TOKEN to raise the limit"


def _refusal(response: httpx.Response, api: str, with_token: bool) -> str:
    status = response.status_code
    message = _message(response) or response.reason_phrase or "no message"
    if status == 422:
        details = _error_details(response)
        return f"GitHub rejected the search (422 {message}{': ' + details if details else ''})"
    if status == 401:
        return (
            f"GitHub refused the token (401 {message}); check RV_GITHUB_TOKEN"
            if with_token
            else f"GitHub wants credentials (401 {message}); set RV_GITHUB_TOKEN"
        )
    if status == 404:
        return (
            f"no search API at {api} (404 {message}); RV_GITHUB_API_URL should be "
            "https://api.github.com or https://HOST/api/v3 for GitHub Enterprise"
        )
    return f"the GitHub API at {api} answered HTTP {status}: {message}"


def _body(response: httpx.Response) -> dict[str, Any]:
    try:
        body = response.json()
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}


def _message(response: httpx.Response) -> str:
    return str(_body(response).get("message") or "").strip()


def _error_details(response: httpx.Response) -> str:
    details = []
    for error in _body(response).get("errors") or []:
        if isinstance(error, dict):
            text = error.get("message") or " ".join(
                str(error[key]) for key in ("resource", "field", "code") if error.get(key)
            )
            if text:
                details.append(str(text))
        elif error:
            details.append(str(error))
    return "; ".join(details)


def _repos(response: httpx.Response, api: str) -> list[TrendingRepo]:
    items = _body(response).get("items")
    if not isinstance(items, list):
        raise TrendingError(f"the GitHub API at {api} answered without search results")
    repos = []
    for item in items:
        if not isinstance(item, dict) or not item.get("clone_url"):
            continue
        repos.append(
            TrendingRepo(
                full_name=str(item.get("full_name") or item["clone_url"]),
                clone_url=str(item["clone_url"]),
                stars=int(item.get("stargazers_count") or 0),
                language=item.get("language") or None,
                description=item.get("description") or None,
                pushed_at=_timestamp(item.get("pushed_at")),
            )
        )
    return repos


def _timestamp(value: object) -> datetime | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def _duration(seconds: float) -> str:
    seconds = max(0, round(seconds))
    if seconds < 120:
        return f"{seconds} s"
    if seconds < 7200:
        return f"{round(seconds / 60)} min"
    return f"{seconds / 3600:.1f} h"


def _hide(text: str, token: str) -> str:
    return text.replace(token, "***") if token else text


# --- deciding and submitting -------------------------------------------------------------


def plan(conn: db.Connection, settings: Settings, repos: list[TrendingRepo]) -> list[Entry]:
    """Rank the repositories and decide: skip those archived after their last push (and
    those rv would refuse), queue the rest (``action`` is ``would queue`` until submitted).
    IP literals are checked against the address policy here (GitHub's answers are not
    trusted); host names are resolved by the intake."""
    entries = []
    for rank, repo in enumerate(repos, start=1):
        try:
            parsed = parse_repo_url(repo.clone_url)
            check_host_policy(
                parsed, settings.allowed_hosts, settings.allow_private_hosts, literal_addresses
            )
        except InvalidRepoUrl as error:
            entries.append(Entry(rank, repo, "skipped", f"not archivable: {error}"))
            continue
        reason = _unchanged_since(conn, parsed.url, repo.pushed_at)
        if reason:
            entries.append(Entry(rank, repo, "skipped", reason))
        else:
            entries.append(Entry(rank, repo, "would queue"))
    return entries


def _unchanged_since(conn: db.Connection, repo_url: str, pushed_at: datetime | None) -> str | None:
    latest = db.list_jobs(conn, repo_url=repo_url, limit=1)
    if not latest or pushed_at is None:
        return None
    job = latest[0]
    finished = job.worker_finishing_timestamp
    if job.state not in (JobState.DONE, JobState.UNCHANGED) or finished is None:
        return None
    if pushed_at >= finished:
        return None
    shown = finished.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    return f"already archived, unchanged since {shown}"


def trending(
    settings: Settings,
    conn: db.Connection,
    *,
    limit: int = 10,
    language: str | None = None,
    since: str = "week",
    dry_run: bool = False,
    sleep: Sleep = time.sleep,
    clock: Clock = time.time,
    max_wait: float = DEFAULT_MAX_WAIT_SECONDS,
) -> list[Entry]:
    """Fetch the window's top repositories, skip the unchanged ones, submit the rest as
    ordinary jobs (one intake request) unless ``dry_run``."""
    repos = fetch(
        settings,
        limit=limit,
        language=language,
        since=since,
        sleep=sleep,
        clock=clock,
        max_wait=max_wait,
    )
    entries = plan(conn, settings, repos)
    wanted = [entry for entry in entries if entry.action == "would queue"]
    if dry_run or not wanted:
        return entries
    submitted = _submit.submit(
        settings,
        [entry.repo.clone_url for entry in wanted],
        lambda: _tokens.access_token(settings),
        source="trending",
    )
    if len(submitted) != len(wanted):
        raise _submit.SubmitError(
            f"the intake accepted {len(submitted)} of {len(wanted)} repositories"
        )
    job_ids = {entry.rank: item.id for entry, item in zip(wanted, submitted, strict=True)}
    return [
        Entry(e.rank, e.repo, "queued", job_id=job_ids[e.rank]) if e.rank in job_ids else e
        for e in entries
    ]


def table(entries: list[Entry], title: str | None = None) -> Table:
    """rank, repository, stars, language, action."""
    shown = Table(title=title, header_style="bold")
    shown.add_column("#", justify="right")
    shown.add_column("repository", overflow="fold")
    shown.add_column("stars", justify="right")
    shown.add_column("language")
    shown.add_column("action", overflow="fold")
    for entry in entries:
        if entry.action == "queued":
            action = f"[green]queued[/] {entry.job_id}"
        elif entry.action == "skipped":
            action = f"[dim]skipped: {escape(entry.reason or '')}[/]"
        else:
            action = f"[cyan]{entry.action}[/]"
        shown.add_row(
            str(entry.rank),
            f"{escape(entry.repo.full_name)}\n[dim]{escape(entry.repo.clone_url)}[/]",
            f"{entry.repo.stars:,}",
            escape(entry.repo.language or ""),
            action,
        )
    return shown
