"""`rv trending`: GitHub's search API (a loopback fake speaking its shapes) -> ranked
repositories -> skipped when archived since their last push, otherwise queued into the real
pipeline."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from uuid import UUID

import pytest
from click.testing import Result

from repovault import db
from repovault.jobs import Job
from repovault.settings import Settings
from repovault_cli import _submit, _trending
from tests.conftest import GitServers, Pipeline
from tests.github_fake import FakeGitHub, repo_item
from tests.gitserve import free_port

TOKEN = "ghp_TESTtoken0123456789abcdefSECRET"  # throwaway, never valid anywhere


@pytest.fixture
def github() -> Iterator[FakeGitHub]:
    fake = FakeGitHub()
    yield fake
    fake.stop()


def rv_trending(pipeline: Pipeline, fake: FakeGitHub, *args: str, token: str = "") -> Result:
    return pipeline.rv(
        "trending", *args, env={"RV_GITHUB_API_URL": fake.url, "RV_GITHUB_TOKEN": token}
    )


def trending_json(pipeline: Pipeline, fake: FakeGitHub, *args: str) -> list[dict[str, object]]:
    result = pipeline.rv(
        "trending", "--json", *args, env={"RV_GITHUB_API_URL": fake.url, "RV_GITHUB_TOKEN": ""}
    )
    assert result.exit_code == 0, result.output
    entries: list[dict[str, object]] = json.loads(result.stdout)
    return entries


def serve_repos(
    github: FakeGitHub, git_servers: GitServers, names: list[str], pushed_at: datetime
) -> list[str]:
    """Create and serve ``names`` over smart HTTP, listed by the fake with falling stars."""
    urls = []
    for index, name in enumerate(names):
        git_servers.repos.create(name)
        url = git_servers.http.url(name)
        github.items.append(repo_item(f"octo/{name}", url, stars=1000 - index, pushed_at=pushed_at))
        urls.append(url)
    return urls


def jobs_for(pipeline: Pipeline, url: str) -> list[Job]:
    with db.connect(pipeline.env["RV_DATABASE_READER_URL"]) as conn:
        return db.list_jobs(conn, repo_url=url)


def wait_done(pipeline: Pipeline, ids: list[UUID]) -> dict[UUID, str]:
    with db.connect(pipeline.env["RV_DATABASE_READER_URL"]) as conn:
        jobs = _submit.wait_for(conn, ids, lambda _: None, timeout=120)
    return {job.id: str(job.state) for job in jobs}


def days_ago(days: int) -> str:
    return (datetime.now(UTC).date() - timedelta(days=days)).isoformat()


class TestQuery:
    def test_the_default_query_headers_and_no_authorization_without_a_token(
        self, pipeline: Pipeline, github: FakeGitHub
    ) -> None:
        """Without options rv asks for the top 10 created in the last week, by stars,
        with GitHub's versioned JSON headers and no Authorization header."""
        assert trending_json(pipeline, github, "--dry-run") == []
        [request] = github.requests
        assert request.path == "/search/repositories"
        assert request.params == {
            "q": f"created:>={days_ago(7)}",
            "sort": "stars",
            "order": "desc",
            "per_page": "10",
        }
        assert request.headers["accept"] == "application/vnd.github+json"
        assert request.headers["x-github-api-version"] == "2022-11-28"
        assert request.headers["user-agent"] == "repovault"
        assert "authorization" not in request.headers

    @pytest.mark.parametrize(("since", "days"), [("day", 1), ("week", 7), ("month", 30)])
    def test_language_since_and_limit_go_into_the_query(
        self, pipeline: Pipeline, github: FakeGitHub, since: str, days: int
    ) -> None:
        """--language adds a language qualifier, --since sets the creation date (UTC
        today minus 1/7/30 days), --limit sets per_page."""
        trending_json(
            pipeline,
            github,
            "--dry-run",
            "--language",
            "rust",
            "--since",
            since,
            "--limit",
            "3",
        )
        [request] = github.requests
        assert request.params["q"] == f"created:>={days_ago(days)} language:rust"
        assert request.params["per_page"] == "3"

    def test_a_language_name_with_a_space_is_quoted(self) -> None:
        """GitHub's multi-word language names are quoted in the qualifier."""
        today = datetime(2024, 3, 31, tzinfo=UTC).date()
        assert (
            _trending.search_query("month", "Jupyter Notebook", today)
            == 'created:>=2024-03-01 language:"Jupyter Notebook"'
        )

    def test_a_limit_above_one_hundred_is_a_usage_error(
        self, pipeline: Pipeline, github: FakeGitHub
    ) -> None:
        """GitHub pages at most 100 results; rv refuses more with exit 2 and asks nothing."""
        result = rv_trending(pipeline, github, "--limit", "101")
        assert result.exit_code == 2
        assert "101 is not in the range 1<=x<=100" in result.output
        assert github.requests == []


class TestArchiving:
    def test_dry_run_shows_the_table_and_submits_nothing(
        self, pipeline: Pipeline, github: FakeGitHub, git_servers: GitServers, name: str
    ) -> None:
        """--dry-run ranks the repositories as 'would queue' and creates no job rows."""
        urls = serve_repos(
            github, git_servers, [f"{name}-a", f"{name}-b"], datetime.now(UTC) - timedelta(hours=1)
        )
        result = rv_trending(pipeline, github, "--dry-run")
        assert result.exit_code == 0, result.output
        output = result.output
        assert output.count("would queue") == 2
        assert f"octo/{name}-a" in output
        assert "1,000" in output
        entries = trending_json(pipeline, github, "--dry-run")
        assert [(e["rank"], e["clone_url"], e["action"], e["job_id"]) for e in entries] == [
            (1, urls[0], "would queue", None),
            (2, urls[1], "would queue", None),
        ]
        assert [jobs_for(pipeline, url) for url in urls] == [[], []]

    def test_trending_queues_archives_then_skips_unchanged(
        self, pipeline: Pipeline, github: FakeGitHub, git_servers: GitServers, name: str
    ) -> None:
        """The top three are queued and end done; the fourth is past the limit; a second
        run skips all three as archived and unchanged since their last push."""
        names = [f"{name}-{index}" for index in range(4)]
        urls = serve_repos(github, git_servers, names, datetime.now(UTC) - timedelta(hours=1))
        first = trending_json(pipeline, github, "--limit", "3")
        assert [(e["rank"], e["clone_url"], e["action"]) for e in first] == [
            (1, urls[0], "queued"),
            (2, urls[1], "queued"),
            (3, urls[2], "queued"),
        ]
        ids = [UUID(str(entry["job_id"])) for entry in first]
        assert set(wait_done(pipeline, ids).values()) == {"done"}
        assert jobs_for(pipeline, urls[3]) == []

        second = trending_json(pipeline, github, "--limit", "3")
        for entry, url in zip(second, urls, strict=False):
            [job] = jobs_for(pipeline, url)
            assert job.worker_finishing_timestamp is not None
            finished = job.worker_finishing_timestamp.astimezone(UTC)
            assert (entry["action"], entry["job_id"], entry["reason"]) == (
                "skipped",
                None,
                f"already archived, unchanged since {finished:%Y-%m-%d %H:%M:%S} UTC",
            )

        table = rv_trending(pipeline, github, "--limit", "3")
        assert table.exit_code == 0, table.output
        assert table.output.count("skipped:") == 3

    def test_a_push_after_the_last_archive_is_queued_again(
        self, pipeline: Pipeline, github: FakeGitHub, git_servers: GitServers, name: str
    ) -> None:
        """When GitHub's pushed_at is newer than the latest job's finish, the repository
        is queued again and its new commit archived."""
        [url] = serve_repos(github, git_servers, [name], datetime.now(UTC) - timedelta(hours=1))
        [first] = trending_json(pipeline, github)
        assert wait_done(pipeline, [UUID(str(first["job_id"]))]) == {
            UUID(str(first["job_id"])): "done"
        }
        git_servers.repos.commit(name, "new.txt", "new\n")
        github.items[0]["pushed_at"] = (datetime.now(UTC) + timedelta(seconds=2)).strftime(
            "%Y-%m-%dT%H:%M:%SZ"
        )
        [again] = trending_json(pipeline, github)
        assert again["action"] == "queued"
        job_id = UUID(str(again["job_id"]))
        assert wait_done(pipeline, [job_id]) == {job_id: "done"}
        assert len(jobs_for(pipeline, url)) == 2

    def test_a_repository_rv_would_refuse_is_skipped_not_fatal(
        self, pipeline: Pipeline, github: FakeGitHub, git_servers: GitServers, name: str
    ) -> None:
        """A clone URL the host policy refuses is skipped with the reason; the others
        are still offered, github.com ones without any DNS lookup in the CLI."""
        [url] = serve_repos(github, git_servers, [name], datetime.now(UTC))
        github.items.append(repo_item("evil/local", "http://10.1.2.3/evil/local.git", stars=5))
        github.items.append(repo_item("octo/real", "https://github.com/octo/real.git", stars=1))
        entries = trending_json(pipeline, github, "--dry-run")
        assert [(e["clone_url"], e["action"]) for e in entries] == [
            (url, "would queue"),
            ("http://10.1.2.3/evil/local.git", "skipped"),
            ("https://github.com/octo/real.git", "would queue"),
        ]
        assert str(entries[1]["reason"]).startswith(
            "not archivable: http://10.1.2.3/evil/local.git"
        )


class TestRateLimits:
    def test_a_near_reset_is_waited_for_then_the_search_succeeds(self, github: FakeGitHub) -> None:
        """A 403 with remaining 0 and a reset seconds away sleeps until the reset (the
        injected sleep), then asks once more and returns the results."""
        github.items.append(repo_item("octo/one", "https://github.com/octo/one.git", 7))
        github.answer_next(FakeGitHub.rate_limited(reset_in=5))
        slept: list[float] = []
        repos = _trending.fetch(Settings(github_api_url=github.url), sleep=slept.append)
        assert [r.full_name for r in repos] == ["octo/one"]
        assert len(slept) == 1
        assert 4 <= slept[0] <= 7
        assert len(github.requests) == 2

    def test_a_secondary_limit_honours_retry_after(self, github: FakeGitHub) -> None:
        """A 429 with retry-after waits exactly that long before asking again."""
        github.answer_next(FakeGitHub.secondary_limit(retry_after=3))
        slept: list[float] = []
        assert _trending.fetch(Settings(github_api_url=github.url), sleep=slept.append) == []
        assert slept == [3.0]

    def test_a_limit_that_persists_is_not_hammered(self, github: FakeGitHub) -> None:
        """Still limited after waiting: rv gives up after three requests in all."""
        github.answer_next(*[FakeGitHub.rate_limited(reset_in=2) for _ in range(5)])
        slept: list[float] = []
        with pytest.raises(_trending.TrendingError, match="is rate limited"):
            _trending.fetch(Settings(github_api_url=github.url), sleep=slept.append)
        assert len(github.requests) == _trending.MAX_ATTEMPTS == 3
        assert len(slept) == 2

    def test_a_far_reset_fails_naming_the_reset_time_and_the_token(
        self, pipeline: Pipeline, github: FakeGitHub
    ) -> None:
        """A reset an hour away is not waited for: exit 1, the reset time in UTC, and
        the hint that RV_GITHUB_TOKEN raises the limit; one request only."""
        answer = FakeGitHub.rate_limited(reset_in=3600)
        github.answer_next(answer)
        reset = datetime.fromtimestamp(int(answer.headers["x-ratelimit-reset"]), UTC)
        started = time.monotonic()
        result = rv_trending(pipeline, github)
        assert time.monotonic() - started < 10
        assert result.exit_code == 1
        assert result.output == (
            f"Error: the GitHub API at {github.url} is rate limited (HTTP 403: "
            f"{answer.body['message']}); the limit resets at {reset:%Y-%m-%d %H:%M:%S} UTC "
            "(in 60 min); try again then, or set RV_GITHUB_TOKEN to raise the limit\n"
        )
        assert len(github.requests) == 1


class TestErrors:
    def test_validation_failed_quotes_githubs_message(
        self, pipeline: Pipeline, github: FakeGitHub
    ) -> None:
        """A 422 ends with exit 1 and GitHub's message and error details."""
        github.answer_next(FakeGitHub.validation_failed())
        result = rv_trending(pipeline, github, "--language", "nosuch")
        assert result.exit_code == 1
        assert result.output == (
            "Error: GitHub rejected the search (422 Validation Failed: The listed users and "
            "repositories cannot be searched either because the resources do not exist or you "
            "do not have permission to view them.)\n"
        )

    def test_an_unreachable_api_is_named(self, pipeline: Pipeline) -> None:
        """Nothing listening: exit 1 and a message naming the API URL."""
        api = f"http://127.0.0.1:{free_port()}"
        result = pipeline.rv("trending", env={"RV_GITHUB_API_URL": api})
        assert result.exit_code == 1
        assert result.output == (
            f"Error: cannot reach the GitHub API at {api} (ConnectError); check the network, "
            "or RV_GITHUB_API_URL for GitHub Enterprise\n"
        )

    def test_a_wrong_api_url_says_what_it_should_be(
        self, pipeline: Pipeline, github: FakeGitHub
    ) -> None:
        """A 404 from the search path points at the expected RV_GITHUB_API_URL forms."""
        result = pipeline.rv("trending", env={"RV_GITHUB_API_URL": f"{github.url}/wrong"})
        assert result.exit_code == 1
        assert "RV_GITHUB_API_URL should be https://api.github.com or" in result.output


class TestToken:
    def test_the_token_is_sent_as_a_bearer_header_and_never_shown(
        self, pipeline: Pipeline, github: FakeGitHub, git_servers: GitServers, name: str
    ) -> None:
        """With RV_GITHUB_TOKEN set, every request carries it as a Bearer header, and no
        output (table, JSON, errors) contains it."""
        serve_repos(github, git_servers, [name], datetime.now(UTC))
        outputs = [
            rv_trending(pipeline, github, "--dry-run", token=TOKEN),
            rv_trending(pipeline, github, "--dry-run", "--json", token=TOKEN),
        ]
        github.answer_next(FakeGitHub.bad_credentials())
        refused = rv_trending(pipeline, github, token=TOKEN)
        github.answer_next(FakeGitHub.rate_limited(reset_in=3600))
        limited = rv_trending(pipeline, github, token=TOKEN)
        assert [r.exit_code for r in outputs] == [0, 0]
        assert refused.output == (
            "Error: GitHub refused the token (401 Bad credentials); check RV_GITHUB_TOKEN\n"
        )
        assert limited.exit_code == 1
        assert limited.output.endswith("(in 60 min); try again then\n")
        for result in [*outputs, refused, limited]:
            assert TOKEN not in result.output
        assert [r.headers.get("authorization") for r in github.requests] == [f"Bearer {TOKEN}"] * 4
