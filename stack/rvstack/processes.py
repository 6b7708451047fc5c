"""Our processes: pid files, spawning, stopping, waiting for health, ports, one-off commands."""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO

from .config import Config, service_of
from .console import StackError, say
from .files import read_json, tail, write_private
from .settings import HEALTH_TIMEOUTS


def _proc_stat(pid: int) -> list[str] | None:
    """Fields of /proc/<pid>/stat after the command name (index 0 is the state)."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return raw[raw.rfind(")") + 2 :].split()


def _alive(pid: int, start_time: str | None = None) -> bool:
    fields = _proc_stat(pid)
    if fields is None or fields[0] in ("Z", "X"):
        return False
    return start_time is None or fields[19] == start_time


def _group_members(pgid: int) -> list[int]:
    members = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        fields = _proc_stat(int(entry.name))
        if fields and fields[0] not in ("Z", "X") and fields[2] == str(pgid):
            members.append(int(entry.name))
    return members


def pid_path(cfg: Config, service: str) -> Path:
    return cfg.run / f"{service}.pid"


def running_pid(cfg: Config, service: str) -> int | None:
    """The pid of our process for ``service`` if the pid file names a live process of ours."""
    data = read_json(pid_path(cfg, service))
    pid = data.get("pid")
    if not isinstance(pid, int):
        return None
    start = data.get("start")
    return pid if _alive(pid, start if isinstance(start, str) else None) else None


def environment_without(*prefixes: str) -> dict[str, str]:
    """Our environment minus the variables whose names start with one of ``prefixes``."""
    return {k: v for k, v in os.environ.items() if not k.startswith(prefixes)}


def spawn(
    cfg: Config,
    service: str,
    argv: list[str],
    env: dict[str, str],
    cwd: Path,
) -> subprocess.Popen[bytes]:
    """Start ``service`` in its own session, logging to its log, and record it in its pid file."""
    cfg.run.mkdir(parents=True, exist_ok=True)
    log_path = cfg.log(service)
    with _log_section(log_path, f"starting {service} at {time.ctime()}") as log:
        try:
            proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=cwd,
                env=env,
                start_new_session=True,
            )
        except OSError as exc:
            raise StackError(service, f"could not run {argv[0]}: {exc}") from exc
    fields = _proc_stat(proc.pid)
    record = {"pid": proc.pid, "start": fields[19] if fields else None, "argv0": argv[0]}
    write_private(pid_path(cfg, service), json.dumps(record) + "\n")
    say(f"{service}: started (pid {proc.pid}), log {log_path}")
    return proc


def stop_service(cfg: Config, service: str, timeout: float = 45.0) -> bool:
    """Stop our process group for ``service``; True when something was stopped."""
    path = pid_path(cfg, service)
    pid = running_pid(cfg, service)
    if pid is None:
        path.unlink(missing_ok=True)
        return False
    # PostgreSQL: SIGINT is the "fast" shutdown (SIGTERM would wait for every client).
    sig = signal.SIGINT if service == "postgres" else signal.SIGTERM
    say(f"{service}: stopping pid {pid}")
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, sig)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and _group_members(pid):
        time.sleep(0.1)
    leftovers = _group_members(pid)
    if leftovers:
        say(f"{service}: still running after {timeout:.0f}s, killing {leftovers}")
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and _group_members(pid):
            time.sleep(0.1)
    path.unlink(missing_ok=True)
    return True


def wait_healthy(
    cfg: Config,
    service: str,
    check: Callable[[], tuple[bool, str]],
    proc: subprocess.Popen[bytes] | None,
    timeout: float | None = None,
) -> None:
    if timeout is None:
        env_timeout = os.environ.get("RV_STACK_HEALTH_TIMEOUT", "").strip()
        timeout = float(env_timeout) if env_timeout else HEALTH_TIMEOUTS[service_of(service)]
    deadline = time.monotonic() + timeout
    detail = "no answer yet"
    while True:
        ok, detail = check()
        if ok:
            return
        if proc is not None and proc.poll() is not None:
            raise StackError(
                service,
                f"the process exited with code {proc.returncode} before it was healthy. "
                f"See its log {cfg.log(service)}; last lines:\n{tail(cfg.log(service))}",
            )
        if proc is None and running_pid(cfg, service) is None:
            raise StackError(
                service,
                f"the process is gone. See its log {cfg.log(service)}, then run start again",
            )
        if time.monotonic() > deadline:
            raise StackError(
                service,
                f"not healthy within {timeout:.0f}s ({detail}). See its log {cfg.log(service)}; "
                f"it is left running: `python stack/localstack.py stop` stops it. Last lines:\n"
                f"{tail(cfg.log(service))}",
            )
        # Keycloak logs every failed readiness probe at INFO: ask it less often.
        time.sleep(1.0 if service == "keycloak" else 0.25)


def port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def check_ports(cfg: Config, units: list[str]) -> list[StackError]:
    """Every port of a unit we are about to start must be free; say who to blame if not."""
    problems = []
    for service in units:
        for label, port in cfg.service_ports(service):
            if not port_free(port):
                problems.append(
                    StackError(
                        service,
                        f"{label} 127.0.0.1:{port} is already in use by a program this stack "
                        f"did not start (another RepoVault stack with a different RV_STACK_DIR?). "
                        f"Stop that program, or choose another port: "
                        f"{cfg.port_env(service, label)}=<port> python stack/localstack.py start",
                    )
                )
    return problems


@contextlib.contextmanager
def _log_section(log_path: Path, heading: str) -> Iterator[BinaryIO]:
    """``log_path`` opened for appending, after a heading line saying what follows."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log:
        log.write(f"\n===== localstack: {heading} =====\n".encode())
        log.flush()
        yield log


def run_logged(
    service: str,
    argv: list[str],
    log_path: Path,
    what: str,
    cwd: Path | None = None,
    env: dict[str, str] | None = None,
    timeout: float = 3600,
) -> None:
    """Run a one-off command with its output appended to ``log_path``; fail with the log named."""
    with _log_section(log_path, f"{shlex.join(argv)} ({time.ctime()})") as log:
        try:
            result = subprocess.run(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=cwd,
                env=env,
                timeout=timeout,
                check=False,
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise StackError(service, f"{what} failed: {exc}. See {log_path}") from exc
    if result.returncode != 0:
        raise StackError(
            service,
            f"{what} failed (exit {result.returncode}). See {log_path}; last lines:\n"
            f"{tail(log_path)}",
        )


def run_parallel(tasks: dict[str, Callable[[], None]]) -> list[StackError]:
    """Run the tasks in threads; return their failures."""
    errors: list[StackError] = []

    def runner(name: str, task: Callable[[], None]) -> None:
        try:
            task()
        except StackError as exc:
            errors.append(exc)
        except Exception as exc:  # noqa: BLE001 - a bug anywhere must still reach the summary
            errors.append(StackError(name, f"unexpected {type(exc).__name__}: {exc}"))

    threads = [
        threading.Thread(target=runner, args=(name, task), name=name, daemon=True)
        for name, task in tasks.items()
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return errors
