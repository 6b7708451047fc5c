"""The commands other than `start`: install, status, stop, env, logs."""

from __future__ import annotations

import contextlib
import json
import os
import sys
import time
from functools import partial
from pathlib import Path
from typing import Any, TextIO

from .config import Config, app_env, env_lines, service_of
from .console import StackError, print_ok, redact, report_errors
from .files import file_lock, tail
from .kafka import install_kafka, kafka_healthy, kafka_node
from .keycloak import install_keycloak, keycloak_healthy
from .minio import install_minio, minio_healthy
from .postgres import install_postgres, postgres_health
from .processes import run_parallel, running_pid, stop_service
from .settings import KAFKA_EXTRA_NODES, UNITS
from .state import load_secrets


def _discard(_: object) -> None:
    return None


def cmd_install(cfg: Config) -> int:
    errors = run_parallel(
        {
            "postgres": lambda: _discard(install_postgres()),
            "kafka": lambda: install_kafka(cfg),
            "minio": lambda: install_minio(cfg),
            "keycloak": lambda: install_keycloak(cfg),
        }
    )
    return report_errors(errors) or print_ok("everything is in the cache: " + str(cfg.cache))


def health(cfg: Config, unit: str) -> tuple[bool, str]:
    if unit == "postgres":
        return postgres_health(cfg)
    if service_of(unit) == "kafka":
        return kafka_healthy(cfg, kafka_node(cfg, unit))
    if unit == "minio":
        return minio_healthy(cfg)
    return keycloak_healthy(cfg)


def status_report(cfg: Config) -> dict[str, dict[str, Any]]:
    report: dict[str, dict[str, Any]] = {}
    for service in cfg.units():
        pid = running_pid(cfg, service)
        ok, detail = health(cfg, service) if pid is not None else (False, "not running")
        report[service] = {
            "up": pid is not None and ok,
            "running": pid is not None,
            "pid": pid,
            "listen": cfg.listen(service),
            "detail": detail,
            "log": str(cfg.log(service)),
        }
    return report


def cmd_status(cfg: Config, as_json: bool) -> int:
    report = status_report(cfg)
    healthy = all(entry["up"] for entry in report.values())
    if as_json:
        print(json.dumps({"healthy": healthy, "services": report}, indent=2))
    else:
        for service, entry in report.items():
            state = "up" if entry["up"] else ("unhealthy" if entry["running"] else "down")
            pid = f"pid {entry['pid']}" if entry["pid"] else ""
            print(f"{service:9} {state:9} {entry['listen']:26} {pid:10} {entry['detail']}")
    return 0 if healthy else 3


def _stop_units(cfg: Config, units: list[str], stopped: list[str]) -> None:
    for unit in units:
        if stop_service(cfg, unit):
            stopped.append(unit)


def cmd_stop(cfg: Config, only: list[str] | None = None) -> int:
    """Stop every unit, or those named in ``only`` ("kafka" means all Kafka nodes)."""
    if not cfg.stack.exists():
        return print_ok("nothing to stop")
    wanted = set(only or UNITS)
    if "kafka" in wanted:
        wanted.update(KAFKA_EXTRA_NODES)
    # Keycloak first (it holds connections to PostgreSQL), PostgreSQL last; the Kafka brokers
    # before the controller (their controlled shutdown needs it).
    groups = {
        "keycloak": ["keycloak"],
        "kafka": [*reversed(KAFKA_EXTRA_NODES), "kafka"],
        "minio": ["minio"],
    }
    stopped: list[str] = []
    with file_lock(cfg.stack / ".lock", "this stack"):
        errors = run_parallel(
            {
                name: partial(_stop_units, cfg, [u for u in units if u in wanted], stopped)
                for name, units in groups.items()
            }
        )
        _stop_units(cfg, [u for u in ["postgres"] if u in wanted], stopped)
    if errors:
        return report_errors(errors)
    left = [u for u in UNITS if u in wanted and running_pid(cfg, u) is not None]
    if left:
        return report_errors([StackError(u, "is still running after stop") for u in left])
    return print_ok(f"stopped: {', '.join(stopped) or 'nothing was running'}")


def cmd_env(cfg: Config, as_json: bool) -> int:
    creds = load_secrets(cfg, create=False)
    if not creds:
        print(
            f"localstack: error: no secrets in {cfg.stack}: run `python stack/localstack.py start`",
            file=sys.stderr,
        )
        return 1
    values = app_env(cfg, creds)
    if not values["RV_CRON_CLIENT_SECRET"]:
        print(
            "localstack: warning: RV_CRON_CLIENT_SECRET is empty (Keycloak was never provisioned)",
            file=sys.stderr,
        )
    if as_json:
        print(json.dumps(values, indent=2))
    else:
        sys.stdout.write(env_lines(values))
    return 0


def cmd_logs(cfg: Config, service: str | None, lines: int, follow: bool) -> int:
    if service is None:
        for name in cfg.units():
            path = cfg.log(name)
            print(f"{name:9} {path}{'' if path.exists() else '  (not written yet)'}")
        return 0
    path = cfg.log(service)
    if not path.exists():
        print(f"localstack: error: {service}: no log yet at {path}", file=sys.stderr)
        return 1
    print(f"==> {path} <==")
    sys.stdout.write(tail(path, lines) + "\n")
    if follow:
        _follow(path, sys.stdout)
    return 0


def _follow(path: Path, out: TextIO) -> None:
    with open(path, "rb") as handle:
        handle.seek(0, os.SEEK_END)
        with contextlib.suppress(KeyboardInterrupt):
            while True:
                chunk = handle.read()
                if chunk:
                    out.write(redact(chunk.decode("utf-8", "replace")))
                    out.flush()
                else:
                    time.sleep(0.5)
