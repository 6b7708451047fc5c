"""A stand-in for GitHub's REST search API on loopback: the shapes of
``GET /search/repositories`` answers, rate-limit headers, scripted failures, and a record
of every request, so `rv trending` can be tested without the internet."""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

RATE_LIMIT = 30  # search API limit per minute for an authenticated user


@dataclass
class Answer:
    """One scripted answer, served instead of the search results."""

    status: int
    body: dict[str, Any]
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class Request:
    path: str
    params: dict[str, str]
    headers: dict[str, str]  # names lower-cased


def repo_item(
    full_name: str,
    clone_url: str,
    stars: int,
    language: str | None = "Python",
    pushed_at: datetime | None = None,
    description: str | None = None,
) -> dict[str, Any]:
    """A search result item with the fields GitHub sends (a representative subset)."""
    owner, _, name = full_name.partition("/")
    pushed = (pushed_at or datetime.now(UTC)).astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    return {
        "id": abs(hash(full_name)) % 10**9,
        "node_id": "R_kgDOfake",
        "name": name,
        "full_name": full_name,
        "private": False,
        "owner": {"login": owner, "type": "User"},
        "html_url": f"https://github.com/{full_name}",
        "description": description,
        "fork": False,
        "url": f"https://api.github.com/repos/{full_name}",
        "created_at": pushed,
        "updated_at": pushed,
        "pushed_at": pushed,
        "git_url": f"git://github.com/{full_name}.git",
        "ssh_url": f"git@github.com:{full_name}.git",
        "clone_url": clone_url,
        "size": 1,
        "stargazers_count": stars,
        "watchers_count": stars,
        "language": language,
        "forks_count": 0,
        "open_issues_count": 0,
        "default_branch": "main",
        "score": 1.0,
    }


class FakeGitHub:
    """Serves ``items`` (most stars first, filtered by ``language:``, cut at ``per_page``)
    unless answers are scripted with :meth:`answer_next`, which are served first, in order."""

    def __init__(self) -> None:
        self.items: list[dict[str, Any]] = []
        self.requests: list[Request] = []
        self.scripted: list[Answer] = []
        self._lock = threading.Lock()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.server.daemon_threads = True
        self.port = int(self.server.server_address[1])
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    # --- scripting ------------------------------------------------------------------------

    def answer_next(self, *answers: Answer) -> None:
        with self._lock:
            self.scripted.extend(answers)

    @staticmethod
    def rate_limited(reset_in: float, status: int = 403) -> Answer:
        """The primary rate limit: remaining 0, the reset ``reset_in`` seconds from now."""
        return Answer(
            status,
            {
                "message": "API rate limit exceeded for 127.0.0.1. (But here's the good news: "
                "Authenticated requests get a higher rate limit. Check out the documentation "
                "for more details.)",
                "documentation_url": "https://docs.github.com/rest/overview/resources-in-the-rest-api#rate-limiting",
            },
            {
                "x-ratelimit-limit": "10",
                "x-ratelimit-remaining": "0",
                "x-ratelimit-used": "10",
                "x-ratelimit-resource": "search",
                "x-ratelimit-reset": str(int(time.time() + reset_in)),
            },
        )

    @staticmethod
    def secondary_limit(retry_after: int) -> Answer:
        """A secondary rate limit: 429 with retry-after and requests still remaining."""
        return Answer(
            429,
            {
                "message": "You have exceeded a secondary rate limit. Please wait a few minutes "
                "before you try again."
            },
            {"retry-after": str(retry_after), "x-ratelimit-remaining": "25"},
        )

    @staticmethod
    def validation_failed() -> Answer:
        return Answer(
            422,
            {
                "message": "Validation Failed",
                "errors": [
                    {
                        "message": "The listed users and repositories cannot be searched "
                        "either because the resources do not exist or you do not have "
                        "permission to view them.",
                        "resource": "Search",
                        "field": "q",
                        "code": "invalid",
                    }
                ],
                "documentation_url": "https://docs.github.com/v3/search/",
            },
        )

    @staticmethod
    def bad_credentials() -> Answer:
        return Answer(
            401,
            {"message": "Bad credentials", "documentation_url": "https://docs.github.com/rest"},
        )

    # --- serving --------------------------------------------------------------------------

    def _search(self, params: dict[str, str]) -> dict[str, Any]:
        query = params.get("q", "")
        language = None
        for part in query.split():
            if part.startswith("language:"):
                language = part.removeprefix("language:").strip('"').lower()
        items = [
            item
            for item in self.items
            if language is None or str(item.get("language") or "").lower() == language
        ]
        items.sort(key=lambda item: -int(item["stargazers_count"]))
        per_page = int(params.get("per_page", "30"))
        return {"total_count": len(items), "incomplete_results": False, "items": items[:per_page]}

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: object) -> None:
                """Quiet."""

            def do_GET(self) -> None:
                parts = urlsplit(self.path)
                params = {key: values[-1] for key, values in parse_qs(parts.query).items()}
                with fake._lock:
                    fake.requests.append(
                        Request(parts.path, params, {k.lower(): v for k, v in self.headers.items()})
                    )
                    answer = fake.scripted.pop(0) if fake.scripted else None
                if answer is None:
                    if parts.path != "/search/repositories":
                        answer = Answer(404, {"message": "Not Found"})
                    else:
                        answer = Answer(
                            200,
                            fake._search(params),
                            {
                                "x-ratelimit-limit": str(RATE_LIMIT),
                                "x-ratelimit-remaining": str(RATE_LIMIT - 1),
                                "x-ratelimit-reset": str(int(time.time() + 60)),
                                "x-ratelimit-resource": "search",
                            },
                        )
                payload = json.dumps(answer.body).encode()
                self.send_response(answer.status)
                self.send_header("Content-Type", "application/json; charset=utf-8")
                self.send_header("X-GitHub-Api-Version-Selected", "2022-11-28")
                for name, value in answer.headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

        return Handler
