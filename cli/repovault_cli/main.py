"""The ``rv`` command. Each command parses its options, calls one library function and
renders the result; domain errors become ``click.ClickException`` only here.

Exit codes: 0 success; 1 error (bad input, not logged in, a service unreachable; nothing
was queued or written); 2 usage error; 3 ``--wait``: at least one job failed or was rejected.
"""

from __future__ import annotations

import json
import re
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NoReturn, TextIO

import click
from rich.console import Console
from rich.live import Live

from repovault import db
from repovault.jobs import Job, JobState, unmatched_prefixes
from repovault.settings import Settings, SettingsError
from repovault.snapshots import s3_client
from repovault.urls import InvalidRepoUrl, parse_repo_url
from repovault_cli import _render, _restore, _submit, _tokens, _trending

EXIT_JOBS_FAILED = 3
console = Console()


def _fail(message: str) -> NoReturn:
    raise click.ClickException(message)


def _settings(ctx: click.Context) -> Settings:
    settings: Settings = ctx.obj
    return settings


@contextmanager
def _reader(settings: Settings) -> Iterator[db.Connection]:
    try:
        settings.require("database_reader_url")
        conn = db.connect(settings.database_reader_url)
    except (SettingsError, db.DatabaseUnavailable) as error:
        _fail(str(error))
    with conn:
        yield conn


def _print_json(document: Any) -> None:
    click.echo(json.dumps(document, indent=2, default=str))


@click.group()
@click.version_option(package_name="repovault")
@click.pass_context
def cli(ctx: click.Context) -> None:
    """RepoVault: archive git repositories into MinIO, every step recorded."""
    try:
        ctx.obj = Settings.from_env()
    except SettingsError as error:
        _fail(str(error))


def _follow_options(command: Callable[..., None]) -> Callable[..., None]:
    """--wait, --timeout and --json: how a command that queues jobs reports them."""
    for option in reversed(
        [
            click.option(
                "--wait",
                is_flag=True,
                help="Show progress until the jobs end; exit 3 if any failed.",
            ),
            click.option(
                "--timeout",
                type=float,
                default=None,
                help="With --wait: give up after this many seconds.",
            ),
            click.option("--json", "as_json", is_flag=True, help="Print machine-readable results."),
        ]
    ):
        command = option(command)
    return command


def _report(
    ctx: click.Context,
    settings: Settings,
    submitted: list[_submit.Submitted],
    wait: bool,
    timeout: float | None,
    as_json: bool,
) -> None:
    """Print the queued jobs; with ``wait``, follow them to the end (exit 3 if any failed)."""
    if not wait:
        if as_json:
            _print_json(
                [{"id": str(s.id), "repo_url": s.repo_url, "bucket": s.bucket} for s in submitted]
            )
        else:
            for item in submitted:
                click.echo(f"{item.id}  {item.repo_url}")
        return
    ids = [item.id for item in submitted]
    with _reader(settings) as conn:
        if as_json:
            jobs = _submit.wait_for(conn, ids, lambda _: None, timeout=timeout)
        else:
            with Live(console=console, refresh_per_second=8) as live:
                jobs = _submit.wait_for(
                    conn, ids, lambda now: live.update(_render.jobs_table(now)), timeout=timeout
                )
    if as_json:
        _print_json([job.to_dict() for job in jobs])
    unfinished = len(jobs) < len(ids) or any(not job.state.is_final for job in jobs)
    failed = [job for job in jobs if job.state in (JobState.FAILED, JobState.REJECTED)]
    if unfinished or failed:
        if not as_json:
            click.echo(
                f"{len(failed)} job(s) failed" + (", some still running" if unfinished else ""),
                err=True,
            )
        ctx.exit(EXIT_JOBS_FAILED)


@cli.command()
@click.argument("urls", nargs=-1)
@click.option(
    "--file", "-f", "url_file", type=click.File("r"), help="Read one URL per line ('-' for stdin)."
)
@_follow_options
@click.pass_context
def submit(
    ctx: click.Context,
    urls: tuple[str, ...],
    url_file: TextIO | None,
    wait: bool,
    timeout: float | None,
    as_json: bool,
) -> None:
    """Queue repositories for archiving. URL '-' reads URLs from stdin."""
    settings = _settings(ctx)
    wanted = [url for url in urls if url != "-"]
    if "-" in urls:
        wanted += _submit.read_url_lines(sys.stdin)
    if url_file is not None:
        wanted += _submit.read_url_lines(url_file)
    try:
        submitted = _submit.submit(settings, wanted, lambda: _tokens.access_token(settings))
    except (_submit.SubmitError, _tokens.NotLoggedIn, _tokens.LoginFailed) as error:
        _fail(str(error))
    _report(ctx, settings, submitted, wait, timeout, as_json)


def _job_prefixes(values: tuple[str, ...]) -> list[str]:
    """Job ids as printed by `rv submit`, or their first characters (at least four)."""
    for value in values:
        if len(value) < 4 or not re.fullmatch(r"[0-9a-fA-F-]+", value):
            _fail(
                f"{value!r} is not a job id; give an id from `rv submit` or `rv status` "
                "(the first 4+ characters are enough)"
            )
    return list(values)


@cli.command()
@click.argument("jobs", nargs=-1)
@click.option(
    "--state",
    "states",
    multiple=True,
    type=click.Choice([s.value for s in JobState]),
    help="Only jobs in this state (repeatable).",
)
@click.option(
    "--limit",
    default=20,
    show_default=True,
    type=click.IntRange(1, 10000),
    help="How many jobs, newest first.",
)
@click.option("--watch", is_flag=True, help="Refresh every second until interrupted.")
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable results.")
@click.pass_context
def status(
    ctx: click.Context,
    jobs: tuple[str, ...],
    states: tuple[str, ...],
    limit: int,
    watch: bool,
    as_json: bool,
) -> None:
    """List jobs, newest first, or the jobs given by id."""
    prefixes = _job_prefixes(jobs)
    with _reader(_settings(ctx)) as conn:

        def fetch() -> list[Job]:
            return db.list_jobs(conn, id_prefixes=prefixes, states=states, limit=limit)

        if as_json:
            _print_json([job.to_dict() for job in fetch()])
        elif watch:
            with Live(console=console, refresh_per_second=2) as live:
                try:
                    while True:
                        live.update(_render.jobs_table(fetch()))
                        time.sleep(1)
                except KeyboardInterrupt:
                    pass
        else:
            found = fetch()
            missing = unmatched_prefixes(found, prefixes)
            console.print(_render.jobs_table(found))
            if missing:
                _fail(f"no such job: {', '.join(missing)}")


@cli.command()
@click.argument("repo", required=False)
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable results.")
@click.pass_context
def stats(ctx: click.Context, repo: str | None, as_json: bool) -> None:
    """Jobs per state, stage times (p50/p95), bytes stored, throughput; or one REPO's history."""
    repo_url = None
    if repo is not None:
        try:
            repo_url = parse_repo_url(repo).url
        except InvalidRepoUrl as error:
            _fail(str(error))
    with _reader(_settings(ctx)) as conn:
        result = db.stats(conn, repo_url)
        history = db.list_jobs(conn, repo_url=repo_url, limit=20) if repo_url else []
    if as_json:
        document: dict[str, Any] = {
            "jobs_by_state": result.jobs_by_state,
            "stages": [vars(stage) for stage in result.stages],
            "bytes_stored": result.bytes_stored,
            "finished": result.finished,
            "jobs_per_minute": result.jobs_per_minute,
        }
        if repo_url:
            document["history"] = [job.to_dict() for job in history]
        _print_json(document)
        return
    for table in _render.stats_tables(result, repo_url or "all repositories"):
        console.print(table)
    if repo_url:
        console.print(_render.jobs_table(history, title="history"))


@cli.command()
@click.argument("jobs", nargs=-1, required=True)
@_follow_options
@click.pass_context
def retry(
    ctx: click.Context, jobs: tuple[str, ...], wait: bool, timeout: float | None, as_json: bool
) -> None:
    """Queue failed or rejected JOBS again (operators only)."""
    settings = _settings(ctx)
    prefixes = _job_prefixes(jobs)
    with _reader(settings) as conn:
        try:
            submitted = _submit.retry(
                settings, conn, prefixes, lambda: _tokens.access_token(settings)
            )
        except (_submit.SubmitError, _tokens.NotLoggedIn, _tokens.LoginFailed) as error:
            _fail(str(error))
    _report(ctx, settings, submitted, wait, timeout, as_json)


@cli.command()
@click.argument("target")
@click.argument("dest", type=click.Path(file_okay=False, path_type=Path))
@click.option("--snapshot", help="A snapshot id (default: the latest complete one).")
@click.pass_context
def restore(ctx: click.Context, target: str, dest: Path, snapshot: str | None) -> None:
    """Restore TARGET (a repository URL or a job id) from its bucket into DEST."""
    settings = _settings(ctx)
    storage = s3_client(settings.s3_endpoint, settings.s3_access_key, settings.s3_secret_key)
    with _reader(settings) as conn:
        try:
            bucket, manifest = _restore.find_snapshot(conn, storage, target, snapshot)
            _restore.restore(storage, bucket, manifest, dest)
        except _restore.RestoreError as error:
            _fail(str(error))
    click.echo(
        f"restored {manifest.repo_url} snapshot {manifest.snapshot} "
        f"({len(manifest.refs)} refs, head {manifest.head_commit or 'none'}) into {dest}"
    )


@cli.command()
@click.option("--no-browser", is_flag=True, help="Do not try to open a browser.")
@click.pass_context
def login(ctx: click.Context, no_browser: bool) -> None:
    """Log in through Keycloak's device flow; tokens are kept in your config directory."""
    settings = _settings(ctx)
    try:
        code = _tokens.start_device_flow(settings)
        click.echo(f"Open {code.verification_uri} and enter the code {code.user_code}")
        click.echo(f"(or open {code.verification_uri_complete})")
        if not no_browser:
            _tokens.open_browser(code.verification_uri_complete)
        click.echo("Waiting for the login to complete...")
        tokens = _tokens.poll_device_flow(settings, code)
    except _tokens.LoginFailed as error:
        _fail(str(error))
    user = _tokens.claims(tokens.access_token).get("preferred_username", "?")
    click.echo(f"Logged in as {user}.")


@cli.command()
@click.pass_context
def logout(ctx: click.Context) -> None:
    """End the session at Keycloak and delete the local tokens."""
    try:
        ended = _tokens.logout(_settings(ctx))
    except _tokens.LoginFailed as error:
        _fail(str(error))
    click.echo("Logged out." if ended else "Not logged in.")


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable results.")
@click.pass_context
def whoami(ctx: click.Context, as_json: bool) -> None:
    """Show who you are logged in as, your roles and when the session expires."""
    settings = _settings(ctx)
    try:
        claims = _tokens.claims(_tokens.access_token(settings))
    except (_tokens.NotLoggedIn, _tokens.LoginFailed) as error:
        _fail(str(error))
    roles = sorted(
        r for r in claims.get("realm_access", {}).get("roles", []) if r.startswith("rv-")
    )
    document = {
        "user": claims.get("preferred_username") or claims.get("sub"),
        "roles": roles,
        "expires": time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(claims.get("exp", 0))),
    }
    if as_json:
        _print_json(document)
    else:
        click.echo(
            f"{document['user']}  roles: {', '.join(roles) or 'none'}  "
            f"expires: {document['expires']}"
        )


@cli.command()
@click.option(
    "--limit",
    default=10,
    show_default=True,
    type=click.IntRange(1, _trending.MAX_PER_PAGE),
    help="How many repositories, most stars first.",
)
@click.option("--language", help="Only repositories in this language (GitHub's name for it).")
@click.option(
    "--since",
    type=click.Choice(list(_trending.WINDOWS)),
    default="week",
    show_default=True,
    help="Repositories created in the last day, week or month (UTC).",
)
@click.option("--dry-run", is_flag=True, help="Show what would be queued; queue nothing.")
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable results.")
@click.pass_context
def trending(
    ctx: click.Context,
    limit: int,
    language: str | None,
    since: str,
    dry_run: bool,
    as_json: bool,
) -> None:
    """Archive GitHub's trending repositories: the most-starred created in the window.
    Those archived since their last push are skipped (see docs/trending.md)."""
    settings = _settings(ctx)
    with _reader(settings) as conn:
        try:
            entries = _trending.trending(
                settings, conn, limit=limit, language=language, since=since, dry_run=dry_run
            )
        except (
            _trending.TrendingError,
            _submit.SubmitError,
            _tokens.NotLoggedIn,
            _tokens.LoginFailed,
        ) as error:
            _fail(str(error))
    if as_json:
        _print_json([entry.to_dict() for entry in entries])
    else:
        console.print(_trending.table(entries, title=f"trending on GitHub, last {since}"))
