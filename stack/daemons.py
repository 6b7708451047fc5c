"""Run the injector and one or more workers against the local stack, headless.

    python stack/daemons.py start [--workers N]   # logs in .stack/logs, pids in .stack/run
    python stack/daemons.py status
    python stack/daemons.py stop

Settings come from `stack/localstack.py env`; any RV_* already in the environment wins
(for example RV_ALLOW_PRIVATE_HOSTS=127.0.0.1 to archive repositories served on loopback).
Processes are stopped by the pids this script wrote, never by name.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
STACK_DIR = Path(os.environ.get("RV_STACK_DIR", REPO_ROOT / ".stack"))
RUN_DIR = STACK_DIR / "run"
LOG_DIR = STACK_DIR / "logs"
INTAKE_PORT = 58180
WORKER_PORT = 58181


def _stack_env() -> dict[str, str]:
    printed = subprocess.run(
        [sys.executable, str(REPO_ROOT / "stack" / "localstack.py"), "env", "--json"],
        capture_output=True,
        text=True,
        check=False,
    )
    if printed.returncode != 0:
        sys.exit(f"daemons: the local stack is not running; run `make up` first\n{printed.stderr}")
    values: dict[str, str] = json.loads(printed.stdout)
    return values


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _pids() -> dict[str, int]:
    found = {}
    for path in sorted(RUN_DIR.glob("*.pid")):
        pid = int(path.read_text())
        if _alive(pid):
            found[path.stem] = pid
        else:
            path.unlink()
    return found


def _healthy(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1) as answer:
            return bool(answer.status == 200)
    except OSError:
        return False


def start(workers: int) -> None:
    RUN_DIR.mkdir(parents=True, exist_ok=True)
    LOG_DIR.mkdir(parents=True, exist_ok=True)
    running = _pids()
    env = {**_stack_env(), **os.environ}
    wanted = {"injector": INTAKE_PORT} | {
        f"worker-{index}": WORKER_PORT + index for index in range(workers)
    }
    for name, port in wanted.items():
        if name in running:
            continue
        kind = "injector" if name == "injector" else "worker"
        listen = "RV_INTAKE_LISTEN" if kind == "injector" else "RV_WORKER_HEALTH_LISTEN"
        with (LOG_DIR / f"{name}.log").open("ab") as log:
            process = subprocess.Popen(
                [sys.executable, "-m", f"repovault_daemons.{kind}"],
                env={**env, listen: f"127.0.0.1:{port}"},
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        (RUN_DIR / f"{name}.pid").write_text(str(process.pid))
    deadline = time.monotonic() + 60
    for name, port in wanted.items():
        while not _healthy(port):
            if time.monotonic() > deadline:
                sys.exit(f"daemons: {name} is not healthy after 60 s; see {LOG_DIR / name}.log")
            time.sleep(0.2)
        print(f"{name:10} up  health http://127.0.0.1:{port}/healthz  log {LOG_DIR / name}.log")


def stop() -> None:
    for name, pid in _pids().items():
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 60
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        if _alive(pid):
            os.kill(pid, signal.SIGKILL)
        (RUN_DIR / f"{name}.pid").unlink(missing_ok=True)
        print(f"{name:10} stopped (pid {pid})")


def status() -> int:
    running = _pids()
    for name, pid in running.items():
        print(f"{name:10} running  pid {pid}")
    if not running:
        print("no daemons running")
    return 0 if running else 3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("command", choices=["start", "stop", "status"])
    parser.add_argument("--workers", type=int, default=1)
    arguments = parser.parse_args()
    if arguments.command == "start":
        start(arguments.workers)
    elif arguments.command == "stop":
        stop()
    else:
        sys.exit(status())


if __name__ == "__main__":
    main()
