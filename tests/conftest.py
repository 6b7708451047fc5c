"""Shared pytest fixtures."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

# --- Local service stack (stack/localstack.py) -----------------------------------------

REPO_ROOT = Path(__file__).resolve().parent.parent
LOCALSTACK = REPO_ROOT / "stack" / "localstack.py"


def localstack(
    *args: str, env: dict[str, str] | None = None, timeout: float = 600
) -> subprocess.CompletedProcess[str]:
    """Run ``python stack/localstack.py ARGS`` and return what it did (never raises on exit)."""
    return subprocess.run(
        [sys.executable, str(LOCALSTACK), *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
        check=False,
    )


@pytest.fixture(scope="session")
def stack_env() -> dict[str, str]:
    """The RV_* settings of the local stack, started first when `status` says it is not healthy."""
    if localstack("status", "--json").returncode != 0:
        started = localstack("start", timeout=3600)
        if started.returncode != 0:
            pytest.fail(f"the local stack did not start:\n{started.stderr[-6000:]}")
    printed = localstack("env", "--json")
    if printed.returncode != 0:
        pytest.fail(f"`localstack env --json` failed:\n{printed.stderr}")
    values = json.loads(printed.stdout)
    assert isinstance(values, dict)
    return {str(key): str(value) for key, value in values.items()}


# --- end of the local stack fixtures -----------------------------------------------------


# --- The pipeline: daemons, git servers, and the rv CLI ------------------------------------

import uuid  # noqa: E402 -- grouped with the fixtures that use it
from collections.abc import Iterator  # noqa: E402
from dataclasses import dataclass, field  # noqa: E402

from click.testing import CliRunner, Result  # noqa: E402

from repovault_cli.main import cli  # noqa: E402
from tests.daemons import Daemon, daemon_env  # noqa: E402
from tests.gitserve import GitDaemon, RepoFactory, SmartHttp  # noqa: E402

MAX_REPO_BYTES = 40 * 1024 * 1024


@dataclass
class Pipeline:
    """A running injector and worker(s) on topics of their own, and a way to run `rv`."""

    env: dict[str, str]
    injector: Daemon
    workers: list[Daemon]
    log_dir: Path
    extra: list[Daemon] = field(default_factory=list)

    def rv(self, *args: str, input: str | None = None, env: dict[str, str] | None = None) -> Result:
        runner = CliRunner()
        return runner.invoke(cli, list(args), input=input, env={**self.env, **(env or {})})

    def add_worker(self, name: str, **env: str) -> Daemon:
        worker = Daemon("worker", {**self.env, **env}, self.log_dir, name)
        worker.wait_healthy()
        self.extra.append(worker)
        return worker

    def stop(self) -> None:
        for daemon in [*self.extra, *self.workers, self.injector]:
            daemon.stop()


def start_pipeline(
    stack_env: dict[str, str], base: Path, workers: int = 1, **worker_env: str
) -> Pipeline:
    prefix = f"t{uuid.uuid4().hex[:8]}-"
    work = base / "work"
    work.mkdir(parents=True, exist_ok=True)
    env = daemon_env(stack_env, prefix, work)
    env["RV_MAX_REPO_BYTES"] = str(MAX_REPO_BYTES)
    env["RV_CONFIG_DIR"] = str(base / "config")
    injector = Daemon("injector", env, base, "injector")
    injector.wait_healthy()
    env = {**env, "RV_INTAKE_URL": injector.url}
    started = [
        Daemon("worker", {**env, **worker_env}, base, f"worker-{index}") for index in range(workers)
    ]
    for worker in started:
        worker.wait_healthy()
    return Pipeline(env, injector, started, base)


@pytest.fixture(scope="session")
def pipeline(
    stack_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Pipeline]:
    """One injector and one worker for the whole session."""
    running = start_pipeline(stack_env, tmp_path_factory.mktemp("pipeline"))
    yield running
    running.stop()


@dataclass
class GitServers:
    repos: RepoFactory
    daemon: GitDaemon
    http: SmartHttp
    slow_http: SmartHttp


@pytest.fixture(scope="session")
def git_servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GitServers]:
    """Repositories served by `git daemon`, by smart HTTP, and by a deliberately slow smart
    HTTP server (each request waits) for tests that need a job to stay running."""
    root = tmp_path_factory.mktemp("served") / "repos"
    root.mkdir()
    servers = GitServers(
        RepoFactory(root), GitDaemon(root), SmartHttp(root), SmartHttp(root, delay=1.5)
    )
    yield servers
    servers.daemon.stop()
    servers.http.stop()
    servers.slow_http.stop()


@pytest.fixture
def name() -> str:
    """A repository name no other test uses."""
    return f"repo-{uuid.uuid4().hex[:10]}"
