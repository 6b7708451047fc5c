#!/usr/bin/env python3
"""Run the injector and one or more workers against the local stack, headless.

    python stack/daemons.py start [--workers N]   # logs in .stack/logs, pid files in .stack/run
    python stack/daemons.py status
    python stack/daemons.py stop

Settings are the local stack's (`stack/localstack.py env`); any RV_* already in the
environment wins (for example RV_ALLOW_PRIVATE_HOSTS=127.0.0.1 to archive repositories
served on loopback). Processes are started and stopped with the stack's own pid files,
never found by name.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import urllib.request
from pathlib import Path

# The stack's package is importable as `stack.rvstack` once the repository root is on the path.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from stack.rvstack.config import Config, app_env, load_config
from stack.rvstack.processes import running_pid, spawn, stop_service
from stack.rvstack.state import load_secrets

INTAKE_PORT = 58180
WORKER_PORT = 58181  # the first worker; the next ones count up


def _daemons(workers: int) -> dict[str, tuple[str, int]]:
    """name -> (module, health port)."""
    wanted = {"injector": ("injector", INTAKE_PORT)}
    for index in range(workers):
        wanted[f"worker-{index}"] = ("worker", WORKER_PORT + index)
    return wanted


def _ours(cfg: Config) -> list[str]:
    return sorted(
        p.stem for p in cfg.run.glob("*.pid") if p.stem.startswith(("injector", "worker-"))
    )


def _healthy(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1) as answer:
            return bool(answer.status == 200)
    except OSError:
        return False


def start(cfg: Config, workers: int) -> int:
    creds = load_secrets(cfg, create=False)
    if not creds:
        print("daemons: the local stack has never started; run `make up`", file=sys.stderr)
        return 1
    env = {**app_env(cfg, creds), **os.environ}
    wanted = _daemons(workers)
    for name, (module, port) in wanted.items():
        if running_pid(cfg, name) is not None:
            continue
        listen = "RV_INTAKE_LISTEN" if module == "injector" else "RV_WORKER_HEALTH_LISTEN"
        spawn(
            cfg,
            name,
            [sys.executable, "-m", f"repovault_daemons.{module}"],
            {**env, listen: f"127.0.0.1:{port}"},
            cfg.stack,
        )
    deadline = time.monotonic() + 60
    for name, (_, port) in wanted.items():
        while not _healthy(port):
            if time.monotonic() > deadline or running_pid(cfg, name) is None:
                print(f"daemons: {name} is not healthy; see {cfg.log(name)}", file=sys.stderr)
                return 1
            time.sleep(0.2)
        print(f"{name:10} up    http://127.0.0.1:{port}/healthz   log {cfg.log(name)}")
    return 0


def stop(cfg: Config) -> int:
    for name in _ours(cfg):
        stop_service(cfg, name)
    return 0


def status(cfg: Config) -> int:
    running = {name: running_pid(cfg, name) for name in _ours(cfg)}
    for name, pid in running.items():
        print(f"{name:10} {'running' if pid else 'down':8} {f'pid {pid}' if pid else ''}")
    if not running:
        print("daemons: none started (make up starts them)")
    return 0 if running and all(running.values()) else 3


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n", 1)[0])
    parser.add_argument("command", choices=["start", "stop", "status"])
    parser.add_argument("--workers", type=int, default=1)
    arguments = parser.parse_args()
    cfg = load_config()
    if arguments.command == "start":
        sys.exit(start(cfg, arguments.workers))
    sys.exit(stop(cfg) if arguments.command == "stop" else status(cfg))


if __name__ == "__main__":
    main()
