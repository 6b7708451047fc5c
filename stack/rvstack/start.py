"""`start`: check ports and tools, then bring the four services up in parallel and provision them.

Keycloak waits for PostgreSQL (its database); the others start independently.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable

from .config import Config, app_env, env_lines
from .console import StackError, report_errors, say
from .files import file_lock, write_private
from .kafka import install_kafka, kafka_healthy, kafka_installed, kafka_java, start_kafka
from .keycloak import (
    install_keycloak,
    keycloak_archive,
    keycloak_healthy,
    keycloak_installed,
    keycloak_java_home,
    start_keycloak,
)
from .keycloak_admin import provision_keycloak
from .minio import (
    go_tool,
    install_minio,
    minio_binary,
    minio_healthy,
    other_minio_build,
    start_minio,
)
from .postgres import (
    PgLayout,
    install_postgres,
    pg_bin,
    pg_healthy,
    provision_postgres,
    start_postgres,
)
from .processes import check_ports, run_parallel, running_pid, wait_healthy
from .settings import PORT_SETTINGS, SERVICES
from .state import load_secrets, read_state, update_state
from .tools import maven_command


def preflight_tools(cfg: Config, services: list[str]) -> list[StackError]:
    """Check the tools the services about to start need, before starting any of them."""
    checks: list[tuple[str, Callable[[], object]]] = []
    if "postgres" in services and os.geteuid() != 0:
        checks.append(("postgres", pg_bin))
    if "kafka" in services:
        checks.append(("kafka", kafka_java))
        if not kafka_installed(cfg):
            checks.append(("kafka", lambda: maven_command("kafka")))
    if "keycloak" in services:
        checks.append(("keycloak", keycloak_java_home))
        if not keycloak_installed(cfg) and not keycloak_archive(cfg).exists():
            checks.append(("keycloak", lambda: maven_command("keycloak")))
    if "minio" in services and not minio_binary(cfg).exists() and other_minio_build() is None:
        checks.append(("minio", go_tool))
    errors = []
    for _, check in checks:
        try:
            check()
        except StackError as exc:
            errors.append(exc)
    return errors


def _until_healthy(
    cfg: Config,
    service: str,
    start: Callable[[], subprocess.Popen[bytes] | None],
    check: Callable[[Config], tuple[bool, str]],
) -> None:
    """Start ``service`` (a no-op when it runs already) and wait until ``check`` passes."""
    proc = start()
    wait_healthy(cfg, service, lambda: check(cfg), proc)
    say(f"{service}: healthy")


def cmd_start(cfg: Config) -> int:
    cfg.stack.mkdir(parents=True, exist_ok=True)
    with file_lock(cfg.stack / ".lock", "this stack"):
        return _start_locked(cfg)


def _start_locked(cfg: Config) -> int:
    started = time.monotonic()
    creds = load_secrets(cfg, create=True)
    recorded = read_state(cfg).get("ports", {})
    running = {s for s in SERVICES if running_pid(cfg, s) is not None}
    for service in running:
        for label, port in cfg.service_ports(service):
            env_name = cfg.port_env(service, label)
            key = next(k for k, (env, _) in PORT_SETTINGS.items() if env == env_name)
            old = recorded.get(key)
            if old is not None and old != port:
                raise StackError(
                    service,
                    f"already running with {label} {old}, but {port} was asked for; "
                    "run `python stack/localstack.py stop` first to change ports",
                )
    to_start = [s for s in SERVICES if s not in running]
    if to_start:
        problems = check_ports(cfg, to_start) or preflight_tools(cfg, to_start)
        if problems:
            return report_errors(problems)
    if running:
        say(f"already running: {', '.join(s for s in SERVICES if s in running)}")
    update_state(cfg, ports=cfg.ports())
    cfg.logs.mkdir(parents=True, exist_ok=True)

    pg_ready = threading.Event()
    pg_holder: dict[str, PgLayout] = {}

    def postgres_task() -> None:
        install_postgres()
        layout, proc = start_postgres(cfg)
        wait_healthy(cfg, "postgres", lambda: pg_healthy(cfg, layout), proc)
        provision_postgres(cfg, layout, creds)
        pg_holder["layout"] = layout
        pg_ready.set()

    def kafka_task() -> None:
        if running_pid(cfg, "kafka") is None:
            kafka_java()
            install_kafka(cfg)
        _until_healthy(cfg, "kafka", lambda: start_kafka(cfg), kafka_healthy)

    def minio_task() -> None:
        if running_pid(cfg, "minio") is None:
            install_minio(cfg)
        _until_healthy(cfg, "minio", lambda: start_minio(cfg, creds), minio_healthy)

    def keycloak_task() -> None:
        keycloak_java_home()
        install_keycloak(cfg)
        pg_ready.wait()
        if "layout" not in pg_holder:
            raise StackError("keycloak", "not started because PostgreSQL did not come up")
        layout = pg_holder["layout"]
        _until_healthy(
            cfg, "keycloak", lambda: start_keycloak(cfg, layout, creds), keycloak_healthy
        )
        provision_keycloak(cfg, creds)

    def postgres_guarded() -> None:
        try:
            postgres_task()
        finally:
            pg_ready.set()

    errors = run_parallel(
        {
            "postgres": postgres_guarded,
            "kafka": kafka_task,
            "minio": minio_task,
            "keycloak": keycloak_task,
        }
    )
    if errors:
        up = [s for s in SERVICES if running_pid(cfg, s) is not None]
        if up:
            print(
                f"localstack: still running: {', '.join(up)} "
                "(`python stack/localstack.py stop` stops them)",
                file=sys.stderr,
            )
        return report_errors(errors)
    creds = load_secrets(cfg, create=False)
    values = app_env(cfg, creds)
    write_private(cfg.stack / "env", env_lines(values))
    say(f"stack healthy in {time.monotonic() - started:.1f}s")
    for service in SERVICES:
        print(f"{service:9} {cfg.listen(service):26} {cfg.details(service)}")
    print(f"env:      {cfg.stack / 'env'}  (or: python stack/localstack.py env)")
    print(f"logs:     {cfg.logs}")
    return 0
