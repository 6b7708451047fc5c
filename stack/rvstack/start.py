"""`start`: check ports and tools, then bring the services up in parallel and provision them.

Keycloak waits for PostgreSQL (its database); the others start independently. `--only` starts
a subset (Keycloak brings PostgreSQL along).
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from functools import partial

from .config import Config, KafkaNode, app_env, env_lines, service_of
from .console import StackError, report_errors, say
from .files import file_lock, write_private
from .kafka import (
    install_kafka,
    kafka_healthy,
    kafka_installed,
    kafka_java,
    prepare_kafka,
    start_kafka,
)
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
from .settings import SERVICES
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
        checks.append(("keycloak", lambda: keycloak_java_home(cfg)))
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
    unit: str,
    start: Callable[[], subprocess.Popen[bytes] | None],
    check: Callable[[], tuple[bool, str]],
) -> None:
    """Start ``unit`` (a no-op when it runs already) and wait until ``check`` passes."""
    proc = start()
    wait_healthy(cfg, unit, check, proc)
    say(f"{unit}: healthy")


def selected_services(only: list[str] | None) -> tuple[str, ...]:
    """The services to start, in order: all, or ``only`` plus what they need."""
    wanted = set(only or SERVICES)
    if "keycloak" in wanted:
        wanted.add("postgres")  # its database
    return tuple(s for s in SERVICES if s in wanted)


def cmd_start(cfg: Config, only: list[str] | None = None) -> int:
    cfg.stack.mkdir(parents=True, exist_ok=True)
    with file_lock(cfg.stack / ".lock", "this stack"):
        return _start_locked(cfg, selected_services(only))


def _start_locked(cfg: Config, services: tuple[str, ...]) -> int:
    started = time.monotonic()
    creds = load_secrets(cfg, create=True)
    recorded = read_state(cfg).get("ports", {})
    units = cfg.units(services)
    running = [u for u in units if running_pid(cfg, u) is not None]
    for unit in running:
        for label, port in cfg.service_ports(unit):
            old = recorded.get(cfg.port_key(unit, label))
            if old is not None and old != port:
                raise StackError(
                    unit,
                    f"already running with {label} {old}, but {port} was asked for; "
                    "run `python stack/localstack.py stop` first to change ports",
                )
    to_start = [u for u in units if u not in running]
    if to_start:
        needed = list(dict.fromkeys(service_of(u) for u in to_start))
        problems = check_ports(cfg, to_start) or preflight_tools(cfg, needed)
        if problems:
            return report_errors(problems)
    if "kafka" in services:
        prepare_kafka(cfg)
        update_state(cfg, kafka_brokers=cfg.kafka_brokers)
    if running:
        say(f"already running: {', '.join(running)}")
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

    def kafka_task(node: KafkaNode) -> None:
        if running_pid(cfg, node.unit) is None:
            kafka_java()
            install_kafka(cfg)
        _until_healthy(
            cfg, node.unit, lambda: start_kafka(cfg, node), lambda: kafka_healthy(cfg, node)
        )

    def minio_task() -> None:
        if running_pid(cfg, "minio") is None:
            install_minio(cfg)
        _until_healthy(cfg, "minio", lambda: start_minio(cfg, creds), lambda: minio_healthy(cfg))

    def keycloak_task() -> None:
        keycloak_java_home(cfg)
        install_keycloak(cfg)
        pg_ready.wait()
        if "layout" not in pg_holder:
            raise StackError("keycloak", "not started because PostgreSQL did not come up")
        layout = pg_holder["layout"]
        _until_healthy(
            cfg,
            "keycloak",
            lambda: start_keycloak(cfg, layout, creds),
            lambda: keycloak_healthy(cfg),
        )
        provision_keycloak(cfg, creds)

    def postgres_guarded() -> None:
        try:
            postgres_task()
        finally:
            pg_ready.set()

    tasks: dict[str, Callable[[], None]] = {
        "postgres": postgres_guarded,
        **{node.unit: partial(kafka_task, node) for node in cfg.kafka_nodes()},
        "minio": minio_task,
        "keycloak": keycloak_task,
    }
    errors = run_parallel({u: task for u, task in tasks.items() if u in units})
    if errors:
        up = [u for u in cfg.units() if running_pid(cfg, u) is not None]
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
    what = "stack" if services == SERVICES else ", ".join(services)
    say(f"{what} healthy in {time.monotonic() - started:.1f}s")
    for unit in units:
        print(f"{unit:9} {cfg.listen(unit):26} {cfg.details(unit)}")
    print(f"env:      {cfg.stack / 'env'}  (or: python stack/localstack.py env)")
    print(f"logs:     {cfg.logs}")
    return 0
