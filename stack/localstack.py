#!/usr/bin/env python3
"""RepoVault's local service stack without Docker: PostgreSQL, Kafka, MinIO and Keycloak.

Everything runs as plain processes on 127.0.0.1. Downloads and builds are cached in
``${RV_CACHE_DIR:-~/.cache/repovault}``; service data, logs, pid files and generated secrets
live in ``${RV_STACK_DIR:-<repo>/.stack}``.

    python stack/localstack.py install        fetch/build what is missing into the cache
    python stack/localstack.py start [--only SERVICE...]  start what is not running,
                                              health-check, provision (all four services)
    python stack/localstack.py status [--json]  exit 0 when every service is up, 3 otherwise
    python stack/localstack.py stop [--only UNIT...]  stop what start started (by pid file)
    python stack/localstack.py env [--json]   RV_* settings for the application
    python stack/localstack.py logs [SERVICE] log paths, or the tail of one service's log

Settings (environment): RV_CACHE_DIR, RV_STACK_DIR; ports RV_STACK_PG_PORT (55432),
RV_STACK_KAFKA_PORT (59092), RV_STACK_KAFKA_CONTROLLER_PORT (59093), RV_STACK_MINIO_PORT
(59000), RV_STACK_MINIO_CONSOLE_PORT (59001), RV_STACK_KEYCLOAK_PORT (58080),
RV_STACK_KEYCLOAK_MGMT_PORT (59990); RV_STACK_KAFKA_BROKERS (1, or 3: two broker-only nodes
kafka-2, kafka-3 on RV_STACK_KAFKA_BROKER_2_PORT (59094), RV_STACK_KAFKA_BROKER_3_PORT (59095));
a port or broker count given once is remembered in .stack/state.json.
RV_STACK_KAFKA_JAVA_HOME (default: java on PATH, >= 17), RV_STACK_KEYCLOAK_JAVA_HOME (default
/usr/lib/jvm/temurin-25-jdk-amd64, >= 21), RV_STACK_HEALTH_TIMEOUT (seconds, every service),
RV_GITHUB_CLIENT_ID + RV_GITHUB_CLIENT_SECRET (enable the realm's github identity provider).

Secrets (role passwords, MinIO root password, Keycloak bootstrap admin password, rv-cron's
client secret) are generated on first start into .stack/secrets.json (0600) and are only ever
printed by `env`. Keycloak reimports realm/rv-realm.json (recreating its database) whenever the
file changes. When the stack dir is not reachable by the `postgres` user (running as root under
/root, say), the PostgreSQL cluster lives in /var/lib/repovault/<digest>/ and .stack/postgres
links to it.

Standard library only (Python 3.11). This file is the command line; the code is in the
package stack/rvstack (versions and ports: stack/rvstack/settings.py).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

# The code lives in the package stack/rvstack; make it importable as `stack.rvstack` from any cwd
# (nothing is installed).
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from stack.rvstack.commands import cmd_env, cmd_install, cmd_logs, cmd_status, cmd_stop
from stack.rvstack.config import load_config
from stack.rvstack.console import StackError, report_errors
from stack.rvstack.settings import SERVICES, UNITS
from stack.rvstack.start import cmd_start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="localstack",
        description="RepoVault's local services (PostgreSQL, Kafka, MinIO, Keycloak), no Docker.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("install", help="fetch/build what is missing into the cache")
    start = sub.add_parser("start", help="start every service that is not running; provision")
    start.add_argument(
        "--only", nargs="+", choices=SERVICES, help="start only these services (and their needs)"
    )
    status = sub.add_parser("status", help="which service is up and where (exit 3 if not all)")
    status.add_argument("--json", action="store_true")
    stop = sub.add_parser("stop", help="stop the processes that start started")
    stop.add_argument(
        "--only", nargs="+", choices=UNITS, help="stop only these (kafka: all Kafka nodes)"
    )
    env = sub.add_parser("env", help="print export RV_...=... lines for the application")
    env.add_argument("--json", action="store_true")
    logs = sub.add_parser("logs", help="log paths, or the tail of one service's log")
    logs.add_argument("service", nargs="?", choices=UNITS)
    logs.add_argument("-n", "--lines", type=int, default=50)
    logs.add_argument("-f", "--follow", action="store_true")
    args = parser.parse_args(argv)
    try:
        cfg = load_config()
        if args.command == "install":
            return cmd_install(cfg)
        if args.command == "start":
            return cmd_start(cfg, args.only)
        if args.command == "status":
            return cmd_status(cfg, args.json)
        if args.command == "stop":
            return cmd_stop(cfg, args.only)
        if args.command == "env":
            return cmd_env(cfg, args.json)
        return cmd_logs(cfg, args.service, args.lines, args.follow)
    except StackError as exc:
        return report_errors([exc])
    except KeyboardInterrupt:
        print("localstack: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
