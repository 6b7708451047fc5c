#!/usr/bin/env python3
"""RepoVault's local service stack without Docker: PostgreSQL, Kafka, MinIO and Keycloak.

Everything runs as plain processes on 127.0.0.1. Downloads and builds are cached in
``${RV_CACHE_DIR:-~/.cache/repovault}``; service data, logs, pid files and generated secrets
live in ``${RV_STACK_DIR:-<repo>/.stack}``.

    python stack/localstack.py install        fetch/build what is missing into the cache
    python stack/localstack.py start          start what is not running, health-check, provision
    python stack/localstack.py status [--json]  exit 0 when every service is up, 3 otherwise
    python stack/localstack.py stop           stop what start started (by pid file)
    python stack/localstack.py env [--json]   RV_* settings for the application
    python stack/localstack.py logs [SERVICE] log paths, or the tail of one service's log

Settings (environment): RV_CACHE_DIR, RV_STACK_DIR; ports RV_STACK_PG_PORT (55432),
RV_STACK_KAFKA_PORT (59092), RV_STACK_KAFKA_CONTROLLER_PORT (59093), RV_STACK_MINIO_PORT
(59000), RV_STACK_MINIO_CONSOLE_PORT (59001), RV_STACK_KEYCLOAK_PORT (58080),
RV_STACK_KEYCLOAK_MGMT_PORT (59990); a port given once is remembered in .stack/state.json.
RV_STACK_KAFKA_JAVA_HOME (default: java on PATH, >= 17), RV_STACK_KEYCLOAK_JAVA_HOME (default
/usr/lib/jvm/temurin-25-jdk-amd64, >= 21), RV_STACK_HEALTH_TIMEOUT (seconds, every service),
RV_GITHUB_CLIENT_ID + RV_GITHUB_CLIENT_SECRET (enable the realm's github identity provider).

Secrets (role passwords, MinIO root password, Keycloak bootstrap admin password, rv-cron's
client secret) are generated on first start into .stack/secrets.json (0600) and are only ever
printed by `env`. Keycloak reimports realm/rv-realm.json (recreating its database) whenever the
file changes. When the stack dir is not reachable by the `postgres` user (running as root under
/root, say), the PostgreSQL cluster lives in /var/lib/repovault/<digest>/ and .stack/postgres
links to it.

Standard library only (Python 3.11).
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import fcntl
import hashlib
import json
import os
import pwd
import re
import secrets
import shlex
import shutil
import signal
import socket
import stat
import struct
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

REPO_ROOT = Path(__file__).resolve().parent.parent

KAFKA_VERSION = "4.1.1"
LOG4J_VERSION = "2.24.3"
KEYCLOAK_VERSION = "26.7.3"
MINIO_MODULE = "github.com/minio/minio@latest"
MIN_GO = (1, 24)
KAFKA_MIN_JAVA = 17
KEYCLOAK_MIN_JAVA = 21
KEYCLOAK_JAVA_HOME_DEFAULT = Path("/usr/lib/jvm/temurin-25-jdk-amd64")
KEYCLOAK_BUILD_OPTIONS = ("--db=postgres", "--health-enabled=true")
KEYCLOAK_ADMIN_USER = "admin"
MINIO_ROOT_USER = "rv-minio-admin"
MAVEN_HINT = "downloads from Maven Central need Maven: apt-get install -y maven"
REALM = "rv"
CRON_CLIENT_ID = "rv-cron"

SERVICES = ("postgres", "kafka", "minio", "keycloak")

# name in Config -> (environment variable, default)
PORT_SETTINGS: dict[str, tuple[str, int]] = {
    "pg_port": ("RV_STACK_PG_PORT", 55432),
    "kafka_port": ("RV_STACK_KAFKA_PORT", 59092),
    "kafka_controller_port": ("RV_STACK_KAFKA_CONTROLLER_PORT", 59093),
    "minio_port": ("RV_STACK_MINIO_PORT", 59000),
    "minio_console_port": ("RV_STACK_MINIO_CONSOLE_PORT", 59001),
    "kc_port": ("RV_STACK_KEYCLOAK_PORT", 58080),
    "kc_mgmt_port": ("RV_STACK_KEYCLOAK_MGMT_PORT", 59990),
}

# Seconds each service gets to become healthy (RV_STACK_HEALTH_TIMEOUT overrides all).
HEALTH_TIMEOUTS = {"postgres": 60.0, "kafka": 90.0, "minio": 60.0, "keycloak": 240.0}

_T0 = time.monotonic()
_SECRET_VALUES: set[str] = set()
_PRINT_LOCK = threading.Lock()


class StackError(Exception):
    """A failure a person can act on: which service, what went wrong, what to do."""

    def __init__(self, service: str, message: str) -> None:
        super().__init__(f"{service}: {message}")
        self.service = service
        self.message = message


def redact(text: str) -> str:
    """Replace every known secret in ``text`` by ``***`` (logs and errors never show them)."""
    for value in sorted(_SECRET_VALUES, key=len, reverse=True):
        if len(value) >= 6:
            text = text.replace(value, "***")
    return text


def say(message: str) -> None:
    """Progress on stderr, so stdout stays for the answer (start's summary, env, status)."""
    with _PRINT_LOCK:
        print(f"[localstack {time.monotonic() - _T0:6.1f}s] {redact(message)}", file=sys.stderr)


# --------------------------------------------------------------------------------------
# Configuration and state
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Config:
    repo: Path
    cache: Path
    stack: Path
    pg_port: int
    kafka_port: int
    kafka_controller_port: int
    minio_port: int
    minio_console_port: int
    kc_port: int
    kc_mgmt_port: int

    @property
    def logs(self) -> Path:
        return self.stack / "logs"

    @property
    def run(self) -> Path:
        return self.stack / "run"

    def log(self, service: str) -> Path:
        return self.logs / f"{service}.log"

    def ports(self) -> dict[str, int]:
        return {name: int(getattr(self, name)) for name in PORT_SETTINGS}

    def service_ports(self, service: str) -> list[tuple[str, int]]:
        return {
            "postgres": [("port", self.pg_port)],
            "kafka": [("port", self.kafka_port), ("controller port", self.kafka_controller_port)],
            "minio": [("port", self.minio_port), ("console port", self.minio_console_port)],
            "keycloak": [("port", self.kc_port), ("management port", self.kc_mgmt_port)],
        }[service]

    def port_env(self, service: str, label: str) -> str:
        key = {
            ("postgres", "port"): "pg_port",
            ("kafka", "port"): "kafka_port",
            ("kafka", "controller port"): "kafka_controller_port",
            ("minio", "port"): "minio_port",
            ("minio", "console port"): "minio_console_port",
            ("keycloak", "port"): "kc_port",
            ("keycloak", "management port"): "kc_mgmt_port",
        }[(service, label)]
        return PORT_SETTINGS[key][0]

    def listen(self, service: str) -> str:
        return {
            "postgres": f"127.0.0.1:{self.pg_port}",
            "kafka": f"127.0.0.1:{self.kafka_port}",
            "minio": f"http://127.0.0.1:{self.minio_port}",
            "keycloak": f"http://127.0.0.1:{self.kc_port}",
        }[service]

    def details(self, service: str) -> str:
        return {
            "postgres": "databases rv, keycloak",
            "kafka": f"controller 127.0.0.1:{self.kafka_controller_port}",
            "minio": f"console http://127.0.0.1:{self.minio_console_port}",
            "keycloak": f"realm {REALM}; health http://127.0.0.1:{self.kc_mgmt_port}/health/ready",
        }[service]


def _dir_from_env(name: str, default: Path) -> Path:
    value = os.environ.get(name, "").strip()
    return Path(value).expanduser().resolve() if value else default.resolve()


def load_config() -> Config:
    """Ports come from RV_STACK_*_PORT, else from the last start (state.json), else defaults."""
    stack = _dir_from_env("RV_STACK_DIR", REPO_ROOT / ".stack")
    cache = _dir_from_env("RV_CACHE_DIR", Path.home() / ".cache" / "repovault")
    recorded = _read_json(stack / "state.json").get("ports", {})
    ports: dict[str, int] = {}
    for key, (env, default) in PORT_SETTINGS.items():
        raw = os.environ.get(env, "").strip()
        if raw:
            if not raw.isdigit() or not 0 < int(raw) < 65536:
                raise StackError("config", f"{env}={raw!r} is not a TCP port number (1-65535)")
            ports[key] = int(raw)
        elif isinstance(recorded.get(key), int):
            ports[key] = int(recorded[key])
        else:
            ports[key] = default
    seen: dict[int, str] = {}
    for key, port in ports.items():
        if port in seen:
            raise StackError(
                "config",
                f"{PORT_SETTINGS[key][0]} and {PORT_SETTINGS[seen[port]][0]} both use port {port}; "
                "give each service its own port",
            )
        seen[port] = key
    return Config(repo=REPO_ROOT, cache=cache, stack=stack, **ports)


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _write_private(path: Path, text: str) -> None:
    """Write ``text`` atomically with mode 0600."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)


_STATE_LOCK = threading.Lock()


def update_state(cfg: Config, **values: Any) -> None:
    with _STATE_LOCK:
        state = _read_json(cfg.stack / "state.json")
        state.update(values)
        _write_private(cfg.stack / "state.json", json.dumps(state, indent=2, sort_keys=True) + "\n")


def read_state(cfg: Config) -> dict[str, Any]:
    return _read_json(cfg.stack / "state.json")


def _new_password() -> str:
    return secrets.token_urlsafe(24)


def load_secrets(cfg: Config, create: bool) -> dict[str, str]:
    """The generated credentials of this stack, made on first start (``.stack/secrets.json``)."""
    path = cfg.stack / "secrets.json"
    data = {k: str(v) for k, v in _read_json(path).items()}
    if not data and not create:
        return {}
    wanted = {
        "pg_rv_writer_password": _new_password,
        "pg_rv_reader_password": _new_password,
        "pg_keycloak_password": _new_password,
        "minio_root_user": lambda: MINIO_ROOT_USER,
        "minio_root_password": _new_password,
        "keycloak_admin_user": lambda: KEYCLOAK_ADMIN_USER,
        "keycloak_admin_password": _new_password,
    }
    changed = False
    for key, make in wanted.items():
        if not data.get(key):
            data[key] = make()
            changed = True
    if changed and create:
        _write_private(path, json.dumps(data, indent=2, sort_keys=True) + "\n")
    elif path.exists() and stat.S_IMODE(path.stat().st_mode) != 0o600:
        os.chmod(path, 0o600)
    for key, value in data.items():
        if key not in ("minio_root_user", "keycloak_admin_user"):
            _SECRET_VALUES.add(value)
    return data


def store_secret(cfg: Config, key: str, value: str) -> None:
    path = cfg.stack / "secrets.json"
    with _STATE_LOCK:
        data = _read_json(path)
        data[key] = value
        _write_private(path, json.dumps(data, indent=2, sort_keys=True) + "\n")
    _SECRET_VALUES.add(value)


@contextlib.contextmanager
def file_lock(path: Path, what: str) -> Iterator[None]:
    """An exclusive flock; says so when it has to wait for another localstack."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            say(f"waiting for another localstack that holds the lock on {what} ({path})")
            fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


# --------------------------------------------------------------------------------------
# Processes: pid files, spawning, stopping
# --------------------------------------------------------------------------------------


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
    data = _read_json(pid_path(cfg, service))
    pid = data.get("pid")
    if not isinstance(pid, int):
        return None
    start = data.get("start")
    return pid if _alive(pid, start if isinstance(start, str) else None) else None


def spawn(
    cfg: Config,
    service: str,
    argv: list[str],
    env: dict[str, str],
    cwd: Path,
) -> subprocess.Popen[bytes]:
    cfg.logs.mkdir(parents=True, exist_ok=True)
    cfg.run.mkdir(parents=True, exist_ok=True)
    log_path = cfg.log(service)
    with open(log_path, "ab") as log:
        log.write(f"\n===== localstack: starting {service} at {time.ctime()} =====\n".encode())
        log.flush()
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
    _write_private(pid_path(cfg, service), json.dumps(record) + "\n")
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


def _tail(path: Path, lines: int = 15) -> str:
    try:
        with open(path, "rb") as handle:
            handle.seek(0, os.SEEK_END)
            size = handle.tell()
            handle.seek(max(0, size - 64 * 1024))
            text = handle.read().decode("utf-8", "replace")
    except OSError:
        return ""
    return redact("\n".join(text.splitlines()[-lines:]))


def wait_healthy(
    cfg: Config,
    service: str,
    check: Callable[[], tuple[bool, str]],
    proc: subprocess.Popen[bytes] | None,
    timeout: float | None = None,
) -> None:
    if timeout is None:
        env_timeout = os.environ.get("RV_STACK_HEALTH_TIMEOUT", "").strip()
        timeout = float(env_timeout) if env_timeout else HEALTH_TIMEOUTS[service]
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
                f"See its log {cfg.log(service)}; last lines:\n{_tail(cfg.log(service))}",
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
                f"{_tail(cfg.log(service))}",
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


def check_ports(cfg: Config, services: list[str]) -> list[StackError]:
    """Every port of a service we are about to start must be free; say who to blame if not."""
    problems = []
    for service in services:
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


# --------------------------------------------------------------------------------------
# Tools: Java, Go, Maven, PostgreSQL binaries
# --------------------------------------------------------------------------------------


def java_major(java: str) -> int | None:
    try:
        out = subprocess.run(
            [java, "-version"], capture_output=True, text=True, timeout=60, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    match = re.search(r'version "(\d+)(?:\.(\d+))?', out.stderr + out.stdout)
    if not match:
        return None
    major = int(match.group(1))
    return int(match.group(2) or 0) if major == 1 else major


def kafka_java() -> str:
    home = os.environ.get("RV_STACK_KAFKA_JAVA_HOME", "").strip()
    java = str(Path(home) / "bin" / "java") if home else shutil.which("java")
    if not java or not Path(java).exists():
        where = f"at {java}" if home else "on PATH"
        raise StackError(
            "kafka",
            f"no Java found {where} (Kafka {KAFKA_VERSION} needs Java {KAFKA_MIN_JAVA} or newer). "
            "Install it (apt-get install -y openjdk-17-jre-headless) or set "
            "RV_STACK_KAFKA_JAVA_HOME",
        )
    major = java_major(java)
    if major is None or major < KAFKA_MIN_JAVA:
        raise StackError(
            "kafka",
            f"{java} is Java {major or 'of unknown version'}; Kafka {KAFKA_VERSION} needs Java "
            f"{KAFKA_MIN_JAVA} or newer. Install a newer JDK or set RV_STACK_KAFKA_JAVA_HOME",
        )
    return java


def keycloak_java_home() -> Path:
    candidates: list[Path] = []
    explicit = os.environ.get("RV_STACK_KEYCLOAK_JAVA_HOME", "").strip()
    if explicit:
        candidates.append(Path(explicit))
    else:
        candidates.append(KEYCLOAK_JAVA_HOME_DEFAULT)
        if os.environ.get("JAVA_HOME"):
            candidates.append(Path(os.environ["JAVA_HOME"]))
        jvm = Path("/usr/lib/jvm")
        if jvm.is_dir():
            candidates.extend(sorted(jvm.iterdir(), reverse=True))
    found = []
    for home in candidates:
        java = home / "bin" / "java"
        if not java.exists():
            continue
        major = java_major(str(java))
        found.append(f"{home} (Java {major})")
        if major is not None and major >= KEYCLOAK_MIN_JAVA:
            return home
    raise StackError(
        "keycloak",
        f"Keycloak {KEYCLOAK_VERSION} needs Java {KEYCLOAK_MIN_JAVA} or newer (25 recommended); "
        f"found {', '.join(found) or 'none'}. Install Temurin 25 into "
        f"{KEYCLOAK_JAVA_HOME_DEFAULT} or set RV_STACK_KEYCLOAK_JAVA_HOME",
    )


def need_tool(service: str, tool: str, hint: str) -> str:
    path = shutil.which(tool)
    if not path:
        raise StackError(service, f"`{tool}` is not on PATH; {hint}")
    return path


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
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log:
        log.write(f"\n===== localstack: {shlex.join(argv)} ({time.ctime()}) =====\n".encode())
        log.flush()
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
            f"{_tail(log_path)}",
        )


def pg_bin() -> Path:
    base = Path("/usr/lib/postgresql")
    versions = sorted(
        (int(p.name) for p in base.iterdir() if p.name.isdigit() and int(p.name) >= 15)
        if base.is_dir()
        else [],
        reverse=True,
    )
    for version in versions:
        candidate = base / str(version) / "bin"
        if (candidate / "postgres").exists() and (candidate / "initdb").exists():
            return candidate
    raise StackError(
        "postgres",
        "PostgreSQL 15 or newer is not installed (no /usr/lib/postgresql/*/bin/postgres). "
        "Run `python stack/localstack.py install` as root, or "
        "`apt-get update && apt-get install -y postgresql`",
    )


# --------------------------------------------------------------------------------------
# Install: fill the cache
# --------------------------------------------------------------------------------------


def install_postgres() -> Path:
    try:
        return pg_bin()
    except StackError:
        if os.geteuid() != 0:
            raise
    say("postgres: not installed, running apt-get install -y postgresql")
    log_path = Path(tempfile.gettempdir()) / "repovault-apt-postgresql.log"
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    run_logged("postgres", ["apt-get", "update"], log_path, "apt-get update", env=env)
    run_logged(
        "postgres",
        ["apt-get", "install", "-y", "--no-install-recommends", "postgresql", "postgresql-client"],
        log_path,
        "apt-get install postgresql",
        env=env,
    )
    return pg_bin()


KAFKA_POM = f"""<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>dev.repovault</groupId><artifactId>kafka-runtime</artifactId><version>1</version>
  <dependencies>
    <dependency><groupId>org.apache.kafka</groupId><artifactId>kafka_2.13</artifactId><version>{KAFKA_VERSION}</version></dependency>
    <dependency><groupId>org.apache.logging.log4j</groupId><artifactId>log4j-slf4j-impl</artifactId><version>{LOG4J_VERSION}</version></dependency>
    <dependency><groupId>org.apache.logging.log4j</groupId><artifactId>log4j-core</artifactId><version>{LOG4J_VERSION}</version></dependency>
  </dependencies>
</project>
"""


def kafka_libs(cfg: Config) -> Path:
    return cfg.cache / "kafka" / "libs"


def kafka_installed(cfg: Config) -> bool:
    return (kafka_libs(cfg) / f"kafka_2.13-{KAFKA_VERSION}.jar").exists()


def install_kafka(cfg: Config) -> None:
    home = cfg.cache / "kafka"
    with file_lock(home / ".lock", "the Kafka download"):
        if kafka_installed(cfg):
            return
        mvn = need_tool("kafka", "mvn", MAVEN_HINT)
        say(f"kafka: downloading Kafka {KAFKA_VERSION} jars from Maven Central")
        (home / "pom.xml").write_text(KAFKA_POM)
        tmp = home / "libs.partial"
        shutil.rmtree(tmp, ignore_errors=True)
        run_logged(
            "kafka",
            [
                mvn, "-q", "-B", "dependency:copy-dependencies",
                f"-DoutputDirectory={tmp}", "-DincludeScope=runtime",
            ],
            home / "mvn.log",
            f"downloading Kafka {KAFKA_VERSION} with Maven",
            cwd=home,
        )  # fmt: skip
        shutil.rmtree(kafka_libs(cfg), ignore_errors=True)
        tmp.rename(kafka_libs(cfg))
        if not kafka_installed(cfg):
            raise StackError("kafka", f"Maven ran but {kafka_libs(cfg)} has no Kafka jar")
        say("kafka: jars cached")


def minio_binary(cfg: Config) -> Path:
    return cfg.cache / "minio" / "bin" / "minio"


def _other_minio_build() -> int | None:
    """The pid of a `go install github.com/minio/minio...` that someone else is running."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if (
            len(argv) >= 3
            and argv[0].endswith(b"go")
            and b"install" in argv
            and any(a.startswith(b"github.com/minio/minio") for a in argv)
        ):
            return int(entry.name)
    return None


def go_tool() -> tuple[str, str]:
    """The `go` command and its version, if it is new enough to build MinIO."""
    go = need_tool("minio", "go", f"MinIO is built with Go >= {MIN_GO[0]}.{MIN_GO[1]}: install Go")
    version = subprocess.run(
        [go, "env", "GOVERSION"], capture_output=True, text=True, check=False
    ).stdout.strip()
    match = re.match(r"go(\d+)\.(\d+)", version)
    if not match or (int(match.group(1)), int(match.group(2))) < MIN_GO:
        raise StackError(
            "minio",
            f"{go} is {version or 'of unknown version'}; building MinIO needs Go "
            f"{MIN_GO[0]}.{MIN_GO[1]} or newer. Install a newer Go (or put a minio binary "
            "at the cache path)",
        )
    return go, version


def preflight_tools(cfg: Config, services: list[str]) -> list[StackError]:
    """Check the tools the services about to start need, before starting any of them."""
    checks: list[tuple[str, Callable[[], object]]] = []
    if "postgres" in services and os.geteuid() != 0:
        checks.append(("postgres", pg_bin))
    if "kafka" in services:
        checks.append(("kafka", kafka_java))
        if not kafka_installed(cfg):
            checks.append(("kafka", lambda: need_tool("kafka", "mvn", MAVEN_HINT)))
    if "keycloak" in services:
        checks.append(("keycloak", keycloak_java_home))
        archive = cfg.cache / "keycloak" / f"keycloak-quarkus-dist-{KEYCLOAK_VERSION}.zip"
        if not keycloak_installed(cfg) and not archive.exists():
            checks.append(("keycloak", lambda: need_tool("keycloak", "mvn", MAVEN_HINT)))
    if "minio" in services and not minio_binary(cfg).exists() and _other_minio_build() is None:
        checks.append(("minio", go_tool))
    errors = []
    for _, check in checks:
        try:
            check()
        except StackError as exc:
            errors.append(exc)
    return errors


def install_minio(cfg: Config) -> None:
    home = cfg.cache / "minio"
    binary = minio_binary(cfg)
    with file_lock(home / ".lock", "the MinIO build"):
        build_log = home / "build.log"
        # A build started by hand (or by an older localstack) may still be running: wait for it
        # rather than compiling the same thing twice on two cores.
        last_size = -1
        while not binary.exists():
            other = _other_minio_build()
            size = build_log.stat().st_size if build_log.exists() else -1
            recent = build_log.exists() and time.time() - build_log.stat().st_mtime < 60
            if other is None and (not recent or size == last_size):
                break
            say(f"minio: waiting for the MinIO build already running (log {build_log})")
            last_size = size
            time.sleep(10)
        if binary.exists():
            return
        go, version = go_tool()
        say(f"minio: building {MINIO_MODULE} with {version} (several minutes; log {build_log})")
        env = dict(os.environ, GOBIN=str(binary.parent))
        binary.parent.mkdir(parents=True, exist_ok=True)
        run_logged("minio", [go, "install", MINIO_MODULE], build_log, "building MinIO", env=env)
        if not binary.exists():
            raise StackError(
                "minio", f"go install succeeded but {binary} is missing; see {build_log}"
            )
        say("minio: binary cached")


def keycloak_home(cfg: Config) -> Path:
    return cfg.cache / "keycloak" / f"keycloak-{KEYCLOAK_VERSION}"


def keycloak_build_stamp() -> str:
    return f"{KEYCLOAK_VERSION} {' '.join(KEYCLOAK_BUILD_OPTIONS)}\n"


def keycloak_installed(cfg: Config) -> bool:
    stamp = keycloak_home(cfg) / ".rv-build"
    return stamp.exists() and stamp.read_text() == keycloak_build_stamp()


def _unzip(archive: Path, target: Path) -> None:
    """Unzip keeping the executable bits (zipfile alone drops them)."""
    with zipfile.ZipFile(archive) as zf:
        for info in zf.infolist():
            path = target / info.filename
            if not path.resolve().is_relative_to(target.resolve()):
                raise StackError("keycloak", f"{archive} has an unsafe member {info.filename}")
            zf.extract(info, target)
            mode = (info.external_attr >> 16) & 0o777
            if mode and not info.is_dir():
                os.chmod(path, mode)


def install_keycloak(cfg: Config) -> None:
    base = cfg.cache / "keycloak"
    with file_lock(base / ".lock", "the Keycloak download"):
        if keycloak_installed(cfg):
            return
        java_home = keycloak_java_home()
        archive = base / f"keycloak-quarkus-dist-{KEYCLOAK_VERSION}.zip"
        if not archive.exists():
            mvn = need_tool("keycloak", "mvn", MAVEN_HINT)
            say(f"keycloak: downloading Keycloak {KEYCLOAK_VERSION} from Maven Central")
            run_logged(
                "keycloak",
                [
                    mvn, "-q", "-B", "dependency:copy",
                    f"-Dartifact=org.keycloak:keycloak-quarkus-dist:{KEYCLOAK_VERSION}:zip",
                    f"-DoutputDirectory={base}",
                ],
                base / "mvn.log",
                f"downloading Keycloak {KEYCLOAK_VERSION} with Maven",
                cwd=base,
            )  # fmt: skip
        home = keycloak_home(cfg)
        if not (home / "bin" / "kc.sh").exists():
            say(f"keycloak: unpacking {archive.name}")
            tmp = base / "unpack.partial"
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
            try:
                _unzip(archive, tmp)
            except (zipfile.BadZipFile, OSError) as exc:
                raise StackError(
                    "keycloak", f"{archive} is not a usable zip ({exc}); delete it and run install"
                ) from exc
            shutil.rmtree(home, ignore_errors=True)
            (tmp / f"keycloak-{KEYCLOAK_VERSION}").rename(home)
            shutil.rmtree(tmp, ignore_errors=True)
        say(f"keycloak: kc.sh build {' '.join(KEYCLOAK_BUILD_OPTIONS)} (once per cache)")
        env = dict(os.environ, JAVA_HOME=str(java_home))
        run_logged(
            "keycloak",
            [str(home / "bin" / "kc.sh"), "build", *KEYCLOAK_BUILD_OPTIONS],
            base / "build.log",
            "kc.sh build",
            cwd=home,
            env=env,
        )
        (home / ".rv-build").write_text(keycloak_build_stamp())
        say("keycloak: built")


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


# --------------------------------------------------------------------------------------
# PostgreSQL
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PgLayout:
    bin: Path
    data: Path
    socket_dir: Path
    user: pwd.struct_passwd

    def as_user(self, argv: list[str]) -> list[str]:
        """Run ``argv`` as the PostgreSQL user (initdb and postgres refuse to run as root)."""
        if self.user.pw_uid == os.geteuid():
            return argv
        return [
            "setpriv",
            f"--reuid={self.user.pw_uid}",
            f"--regid={self.user.pw_gid}",
            "--init-groups",
            "--",
            *argv,
        ]

    def env(self) -> dict[str, str]:
        return {
            "PATH": f"{self.bin}:/usr/bin:/bin",
            "HOME": self.user.pw_dir,
            "USER": self.user.pw_name,
            "LC_ALL": "C.UTF-8",
            "LANG": "C.UTF-8",
        }


def pg_layout(cfg: Config, create: bool) -> PgLayout:
    binary = pg_bin()
    if os.geteuid() == 0:
        try:
            user = pwd.getpwnam("postgres")
        except KeyError as exc:
            raise StackError(
                "postgres",
                "running as root, and PostgreSQL refuses to run as root, but there is no "
                "`postgres` system user to run it as; install the Debian postgresql package "
                "(it creates that user) or run localstack as an ordinary user",
            ) from exc
    else:
        user = pwd.getpwuid(os.geteuid())
    link = cfg.stack / "postgres"
    if link.is_symlink():
        # Data kept outside the stack dir (see _pg_fallback); the socket lives beside it.
        data = link.resolve()
        layout = PgLayout(binary, data, data.parent / "run", user)
    else:
        sock = cfg.run / "pg"
        if len(str(sock)) + len("/.s.PGSQL.65535") >= 100:
            sock = PG_FALLBACK_BASE / f"sock-{_stack_digest(cfg)}"
        layout = PgLayout(binary, link, sock, user)
    if not create:
        return layout
    _pg_dirs(layout)
    if not _pg_reachable(layout):
        if link.is_symlink() or (link / "PG_VERSION").exists():
            raise StackError(
                "postgres",
                f"the `{user.pw_name}` user cannot reach {layout.data} any more (a parent "
                "directory is not searchable by others); make it searchable again",
            )
        layout = _pg_fallback(cfg, layout)
    return layout


PG_FALLBACK_BASE = Path("/var/lib/repovault")


def _stack_digest(cfg: Config) -> str:
    return hashlib.sha256(str(cfg.stack).encode()).hexdigest()[:12]


def _pg_dirs(layout: PgLayout) -> None:
    for directory in (layout.data, layout.socket_dir):
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        if os.geteuid() == 0:
            os.chown(directory, layout.user.pw_uid, layout.user.pw_gid)
        os.chmod(directory, 0o700)


def _pg_reachable(layout: PgLayout) -> bool:
    if layout.user.pw_uid == os.geteuid():
        return True
    probe = subprocess.run(
        layout.as_user(["test", "-w", str(layout.data), "-a", "-w", str(layout.socket_dir)]),
        check=False,
        capture_output=True,
    )
    return probe.returncode == 0


def _pg_fallback(cfg: Config, layout: PgLayout) -> PgLayout:
    """The stack dir sits under a directory the postgres user cannot enter (e.g. /root):
    keep the cluster in /var/lib/repovault/<digest>/ and link .stack/postgres to it."""
    base = PG_FALLBACK_BASE / _stack_digest(cfg)
    for directory in (PG_FALLBACK_BASE, base):
        directory.mkdir(parents=True, exist_ok=True)
        os.chmod(directory, 0o711)  # noqa: S103 - search only, so postgres can reach its dir
    moved = PgLayout(layout.bin, base / "data", base / "run", layout.user)
    _pg_dirs(moved)
    if not _pg_reachable(moved):
        raise StackError(
            "postgres",
            f"the `{layout.user.pw_name}` user can reach neither {layout.data} nor "
            f"{moved.data}. Set RV_STACK_DIR to a directory under a world-searchable path",
        )
    link = cfg.stack / "postgres"
    with contextlib.suppress(OSError):
        link.rmdir()  # the empty directory made a moment ago
    link.symlink_to(moved.data)
    with contextlib.suppress(OSError):
        layout.socket_dir.rmdir()
    say(f"postgres: {cfg.stack} is not reachable by `{layout.user.pw_name}`; data in {moved.data}")
    return moved


def pg_healthy(cfg: Config, layout: PgLayout) -> tuple[bool, str]:
    result = subprocess.run(
        [str(layout.bin / "pg_isready"), "-q", "-h", "127.0.0.1", "-p", str(cfg.pg_port),
         "-d", "postgres", "-t", "2"],
        check=False,
        capture_output=True,
    )  # fmt: skip
    return result.returncode == 0, f"pg_isready exit {result.returncode}"


def psql(cfg: Config, layout: PgLayout, database: str, script: str, what: str) -> None:
    """Run ``script`` through psql as the superuser over the socket; errors are redacted."""
    argv = layout.as_user(
        [
            str(layout.bin / "psql"), "-X", "-q", "-h", str(layout.socket_dir),
            "-p", str(cfg.pg_port), "-U", layout.user.pw_name, "-d", database,
            "-v", "ON_ERROR_STOP=1", "-f", "-",
        ]
    )  # fmt: skip
    result = subprocess.run(
        argv,
        input=script,
        capture_output=True,
        text=True,
        env=layout.env(),
        cwd=layout.data,
        check=False,
        timeout=120,
    )
    if result.returncode != 0:
        raise StackError(
            "postgres",
            f"{what} failed (psql exit {result.returncode}):\n"
            f"{redact((result.stderr or result.stdout).strip())}",
        )


KEYCLOAK_ROLE_SQL = """\
DO $$ BEGIN
  IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'keycloak') THEN
    CREATE ROLE keycloak LOGIN;
  END IF;
END $$;
"""
KEYCLOAK_DB_SQL = """\
SELECT 'CREATE DATABASE keycloak OWNER keycloak'
WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = 'keycloak')\\gexec
"""


def _alter_password(role: str, password: str) -> str:
    """``ALTER ROLE`` for one of our fixed role names; the password is quoted as a literal."""
    literal = "'" + password.replace("'", "''") + "'"
    return f"ALTER ROLE {role} WITH LOGIN PASSWORD {literal};\n"


def start_postgres(cfg: Config) -> tuple[PgLayout, subprocess.Popen[bytes] | None]:
    layout = pg_layout(cfg, create=True)
    if running_pid(cfg, "postgres") is not None:
        return layout, None
    if not (layout.data / "PG_VERSION").exists():
        say(f"postgres: initdb {layout.data}")
        run_logged(
            "postgres",
            layout.as_user(
                [
                    str(layout.bin / "initdb"), "-D", str(layout.data), "-E", "UTF8",
                    "--no-locale", "--auth-local=peer", "--auth-host=scram-sha-256",
                ]
            ),
            cfg.log("postgres"),
            "initdb",
            cwd=layout.data,
            env=layout.env(),
        )  # fmt: skip
    argv = layout.as_user(
        [
            str(layout.bin / "postgres"), "-D", str(layout.data),
            "-c", "listen_addresses=127.0.0.1",
            "-c", f"port={cfg.pg_port}",
            "-c", f"unix_socket_directories={layout.socket_dir}",
            "-c", "max_connections=200",
            "-c", "password_encryption=scram-sha-256",
            "-c", "log_line_prefix=%m [%p] %q%u@%d ",
        ]
    )  # fmt: skip
    return layout, spawn(cfg, "postgres", argv, layout.env(), layout.data)


def provision_postgres(cfg: Config, layout: PgLayout, creds: dict[str, str]) -> None:
    psql(
        cfg,
        layout,
        "postgres",
        "SELECT 'CREATE DATABASE rv' WHERE NOT EXISTS "
        "(SELECT FROM pg_database WHERE datname = 'rv')\\gexec\n",
        "creating database rv",
    )
    schema_path = cfg.repo / "schema.sql"
    try:
        schema = schema_path.read_text()
    except OSError as exc:
        raise StackError("postgres", f"cannot read {schema_path}: {exc}") from exc
    psql(
        cfg,
        layout,
        "rv",
        schema
        + "\n"
        + _alter_password("rv_writer", creds["pg_rv_writer_password"])
        + _alter_password("rv_reader", creds["pg_rv_reader_password"]),
        f"applying {schema_path}",
    )
    psql(
        cfg,
        layout,
        "postgres",
        KEYCLOAK_ROLE_SQL
        + _alter_password("keycloak", creds["pg_keycloak_password"])
        + KEYCLOAK_DB_SQL,
        "creating the keycloak role and database",
    )
    say("postgres: database rv provisioned (schema.sql applied, role passwords set)")


def reset_keycloak_db(cfg: Config, layout: PgLayout) -> None:
    psql(
        cfg,
        layout,
        "postgres",
        "DROP DATABASE IF EXISTS keycloak WITH (FORCE);\n"
        "CREATE DATABASE keycloak OWNER keycloak;\n",
        "recreating the keycloak database",
    )


# --------------------------------------------------------------------------------------
# Kafka
# --------------------------------------------------------------------------------------


def kafka_cluster_id() -> str:
    """A random Kafka Uuid (what `kafka-storage random-uuid` prints), without a JVM start."""
    while True:
        text = base64.urlsafe_b64encode(secrets.token_bytes(16)).decode().rstrip("=")
        if not text.startswith("-"):
            return text


KAFKA_LOG4J = """\
# Written by stack/localstack.py on every start.
status = warn
appender.stdout.type = Console
appender.stdout.name = STDOUT
appender.stdout.layout.type = PatternLayout
appender.stdout.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = INFO
rootLogger.appenderRef.stdout.ref = STDOUT
logger.kafka.name = kafka
logger.kafka.level = INFO
logger.apache.name = org.apache.kafka
logger.apache.level = INFO
logger.state.name = state.change.logger
logger.state.level = WARN
logger.request.name = kafka.request.logger
logger.request.level = WARN
"""


def kafka_properties(cfg: Config) -> str:
    data = cfg.stack / "kafka" / "data"
    return f"""\
# Written by stack/localstack.py on every start.
process.roles=broker,controller
node.id=1
controller.quorum.bootstrap.servers=127.0.0.1:{cfg.kafka_controller_port}
listeners=PLAINTEXT://127.0.0.1:{cfg.kafka_port},CONTROLLER://127.0.0.1:{cfg.kafka_controller_port}
advertised.listeners=PLAINTEXT://127.0.0.1:{cfg.kafka_port},CONTROLLER://127.0.0.1:{cfg.kafka_controller_port}
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT
log.dirs={data}
num.partitions=1
offsets.topic.replication.factor=1
offsets.topic.num.partitions=1
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
transaction.state.log.num.partitions=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
share.coordinator.state.topic.num.partitions=1
group.initial.rebalance.delay.ms=0
auto.create.topics.enable=false
delete.topic.enable=true
"""


def _recv_exact(sock: socket.socket, size: int) -> bytes:
    chunks = b""
    while len(chunks) < size:
        chunk = sock.recv(size - len(chunks))
        if not chunk:
            raise ConnectionError("connection closed by the broker")
        chunks += chunk
    return chunks


def kafka_metadata(port: int, timeout: float = 2.0) -> tuple[list[int], str | None]:
    """Send a real Metadata request (v4, no topics); return the broker ids and the cluster id."""
    client = b"rv-localstack"
    request = struct.pack(">hhih", 3, 4, 7, len(client)) + client + struct.pack(">ib", 0, 0)
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(struct.pack(">i", len(request)) + request)
        (size,) = struct.unpack(">i", _recv_exact(sock, 4))
        data = _recv_exact(sock, size)
    pos = 0

    def take(fmt: str) -> int:
        nonlocal pos
        (value,) = struct.unpack_from(fmt, data, pos)
        pos += struct.calcsize(fmt)
        return int(value)

    def string() -> str | None:
        nonlocal pos
        length = take(">h")
        if length < 0:
            return None
        text = data[pos : pos + length].decode()
        pos += length
        return text

    if take(">i") != 7:
        raise ConnectionError("wrong correlation id in the broker's answer")
    take(">i")  # throttle_time_ms
    brokers = []
    for _ in range(take(">i")):
        brokers.append(take(">i"))
        string()  # host
        take(">i")  # port
        string()  # rack
    return brokers, string()


def kafka_healthy(cfg: Config) -> tuple[bool, str]:
    try:
        brokers, cluster = kafka_metadata(cfg.kafka_port)
    except (OSError, struct.error, ValueError) as exc:
        return False, f"metadata request: {exc}"
    expected = read_state(cfg).get("kafka_cluster_id")
    if 1 not in brokers:
        return False, f"metadata lists brokers {brokers}, not node 1 yet"
    if expected and cluster != expected:
        return False, f"cluster id {cluster} is not this stack's {expected}"
    return True, "metadata ok"


def start_kafka(cfg: Config) -> subprocess.Popen[bytes] | None:
    if running_pid(cfg, "kafka") is not None:
        return None
    java = kafka_java()
    home = cfg.stack / "kafka"
    (home / "data").mkdir(parents=True, exist_ok=True)
    props = home / "server.properties"
    props.write_text(kafka_properties(cfg))
    log4j = home / "log4j2.properties"
    log4j.write_text(KAFKA_LOG4J)
    classpath = str(kafka_libs(cfg) / "*")
    state = read_state(cfg)
    formatted_port = state.get("kafka_formatted_controller_port")
    if (home / "data" / "meta.properties").exists():
        if formatted_port is not None and formatted_port != cfg.kafka_controller_port:
            raise StackError(
                "kafka",
                f"the storage in {home / 'data'} was formatted for controller port "
                f"{formatted_port}, not {cfg.kafka_controller_port}. Start with "
                f"RV_STACK_KAFKA_CONTROLLER_PORT={formatted_port}, or stop the stack and delete "
                f"{home / 'data'} (its topics are lost)",
            )
    else:
        cluster_id = state.get("kafka_cluster_id") or kafka_cluster_id()
        say(f"kafka: formatting storage {home / 'data'} (cluster id {cluster_id})")
        run_logged(
            "kafka",
            [
                java, f"-Dlog4j2.configurationFile={log4j}", "-cp", classpath,
                "kafka.tools.StorageTool", "format", "-t", cluster_id, "-c", str(props),
                "--standalone", "-g",
            ],
            cfg.log("kafka"),
            "formatting the Kafka storage",
            cwd=home,
        )  # fmt: skip
        update_state(
            cfg,
            kafka_cluster_id=cluster_id,
            kafka_formatted_controller_port=cfg.kafka_controller_port,
        )
    argv = [
        java, "-Xms256m", "-Xmx1g", "-XX:+UseG1GC", "-Djava.awt.headless=true",
        f"-Dlog4j2.configurationFile={log4j}", f"-Dkafka.logs.dir={cfg.logs}",
        "-cp", classpath, "kafka.Kafka", str(props),
    ]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KAFKA_", "RV_"))}
    return spawn(cfg, "kafka", argv, env, home)


# --------------------------------------------------------------------------------------
# MinIO
# --------------------------------------------------------------------------------------


def http_status(url: str, timeout: float = 2.0) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return int(response.status), bytes(response.read())
    except urllib.error.HTTPError as exc:
        return int(exc.code), b""
    except (OSError, ValueError):
        return 0, b""


def minio_healthy(cfg: Config) -> tuple[bool, str]:
    code, _ = http_status(f"http://127.0.0.1:{cfg.minio_port}/minio/health/ready")
    return code == 200, f"/minio/health/ready answered {code or 'nothing'}"


def start_minio(cfg: Config, creds: dict[str, str]) -> subprocess.Popen[bytes] | None:
    if running_pid(cfg, "minio") is not None:
        return None
    data = cfg.stack / "minio"
    data.mkdir(parents=True, exist_ok=True)
    certs = cfg.run / "minio-certs"
    certs.mkdir(parents=True, exist_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MINIO_", "RV_"))}
    env.update(
        MINIO_ROOT_USER=creds["minio_root_user"],
        MINIO_ROOT_PASSWORD=creds["minio_root_password"],
        MINIO_UPDATE="off",
    )
    argv = [
        str(minio_binary(cfg)), "server", str(data),
        "--address", f"127.0.0.1:{cfg.minio_port}",
        "--console-address", f"127.0.0.1:{cfg.minio_console_port}",
        "--certs-dir", str(certs),
    ]  # fmt: skip
    return spawn(cfg, "minio", argv, env, data)


# --------------------------------------------------------------------------------------
# Keycloak
# --------------------------------------------------------------------------------------


def keycloak_healthy(cfg: Config) -> tuple[bool, str]:
    code, body = http_status(f"http://127.0.0.1:{cfg.kc_mgmt_port}/health/ready")
    if code == 200 and b'"UP"' in body:
        return True, "ready"
    return False, f"/health/ready answered {code or 'nothing'}"


def realm_file(cfg: Config) -> Path:
    return cfg.repo / "realm" / "rv-realm.json"


def _fingerprint(text: str | bytes) -> str:
    return hashlib.sha256(text.encode() if isinstance(text, str) else text).hexdigest()


def prepare_keycloak_home(cfg: Config) -> Path:
    """This stack's own Keycloak home: hard links into the built cache copy, own data/."""
    source = keycloak_home(cfg)
    home = cfg.stack / "keycloak"
    stamp = home / ".rv-build"
    if not (stamp.exists() and stamp.read_text() == keycloak_build_stamp()):
        shutil.rmtree(home, ignore_errors=True)
        tmp = cfg.stack / "keycloak.partial"
        shutil.rmtree(tmp, ignore_errors=True)
        try:
            shutil.copytree(source, tmp, symlinks=True, copy_function=os.link)
        except OSError:
            shutil.rmtree(tmp, ignore_errors=True)
            shutil.copytree(source, tmp, symlinks=True)
        tmp.rename(home)
    return home


def start_keycloak(
    cfg: Config, layout: PgLayout, creds: dict[str, str]
) -> subprocess.Popen[bytes] | None:
    realm_bytes = realm_file(cfg).read_bytes()
    try:
        json.loads(realm_bytes)
    except ValueError as exc:
        raise StackError("keycloak", f"{realm_file(cfg)} is not valid JSON: {exc}") from exc
    want = {
        "keycloak_realm_hash": _fingerprint(realm_bytes),
        "keycloak_admin_hash": _fingerprint(creds["keycloak_admin_password"]),
    }
    state = read_state(cfg)
    stale = any(state.get(k) != v for k, v in want.items())
    if running_pid(cfg, "keycloak") is not None:
        if not stale:
            return None
        say("keycloak: realm/rv-realm.json changed since it was imported: restarting Keycloak")
        stop_service(cfg, "keycloak")
    java_home = keycloak_java_home()
    home = prepare_keycloak_home(cfg)
    if stale:
        say("keycloak: (re)creating its database so that the current realm file is imported")
        reset_keycloak_db(cfg, layout)
        update_state(cfg, keycloak_realm_hash=None, keycloak_admin_hash=None)
    import_dir = home / "data" / "import"
    import_dir.mkdir(parents=True, exist_ok=True)
    for old in import_dir.glob("*.json"):
        old.unlink()
    (import_dir / "rv-realm.json").write_bytes(realm_bytes)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KC_", "KEYCLOAK_", "RV_"))}
    env.update(
        JAVA_HOME=str(java_home),
        JAVA_OPTS_KC_HEAP="-Xms256m -Xmx1g",
        KC_DB_PASSWORD=creds["pg_keycloak_password"],
        KC_BOOTSTRAP_ADMIN_USERNAME=creds["keycloak_admin_user"],
        KC_BOOTSTRAP_ADMIN_PASSWORD=creds["keycloak_admin_password"],
    )
    argv = [
        str(home / "bin" / "kc.sh"), "start", "--optimized",
        "--cache=local",
        "--http-enabled=true",
        "--http-host=127.0.0.1",
        f"--http-port={cfg.kc_port}",
        f"--http-management-port={cfg.kc_mgmt_port}",
        f"--hostname=http://127.0.0.1:{cfg.kc_port}",
        f"--db-url=jdbc:postgresql://127.0.0.1:{cfg.pg_port}/keycloak",
        "--db-username=keycloak",
        "--db-pool-max-size=20",
        "--import-realm",
    ]  # fmt: skip
    return spawn(cfg, "keycloak", argv, env, home)


def _http_json(
    url: str,
    data: dict[str, str] | None = None,
    token: str | None = None,
    method: str | None = None,
    body: Any = None,
) -> Any:
    headers = {"Accept": "application/json"}
    payload: bytes | None = None
    if data is not None:
        payload = urllib.parse.urlencode(data).encode()
        headers["Content-Type"] = "application/x-www-form-urlencoded"
    elif body is not None:
        payload = json.dumps(body).encode()
        headers["Content-Type"] = "application/json"
    if token:
        headers["Authorization"] = f"Bearer {token}"
    request = urllib.request.Request(url, data=payload, headers=headers, method=method)
    with urllib.request.urlopen(request, timeout=30) as response:
        raw = response.read()
    return json.loads(raw) if raw else None


def provision_keycloak(cfg: Config, creds: dict[str, str]) -> None:
    """Read rv-cron's generated secret; configure the github identity provider from the env."""
    base = f"http://127.0.0.1:{cfg.kc_port}"
    try:
        discovery = _http_json(f"{base}/realms/{REALM}/.well-known/openid-configuration")
        if discovery.get("issuer") != f"{base}/realms/{REALM}":
            raise StackError(
                "keycloak",
                f"issuer is {discovery.get('issuer')!r}, expected {base}/realms/{REALM}; "
                f"see {cfg.log('keycloak')}",
            )
        token = _http_json(
            f"{base}/realms/master/protocol/openid-connect/token",
            data={
                "grant_type": "password",
                "client_id": "admin-cli",
                "username": creds["keycloak_admin_user"],
                "password": creds["keycloak_admin_password"],
            },
        )["access_token"]
        admin = f"{base}/admin/realms/{REALM}"
        clients = _http_json(
            f"{admin}/clients?clientId={urllib.parse.quote(CRON_CLIENT_ID)}", token=token
        )
        if not clients:
            raise StackError(
                "keycloak",
                f"realm {REALM} has no client {CRON_CLIENT_ID}: check {realm_file(cfg)}",
            )
        secret = _http_json(f"{admin}/clients/{clients[0]['id']}/client-secret", token=token)
        value = secret.get("value") if isinstance(secret, dict) else None
        if not value:
            raise StackError("keycloak", f"{CRON_CLIENT_ID} has no client secret in Keycloak")
        if load_secrets(cfg, create=False).get("rv_cron_client_secret") != value:
            store_secret(cfg, "rv_cron_client_secret", value)
        idp = _http_json(f"{admin}/identity-provider/instances/github", token=token)
        client_id = os.environ.get("RV_GITHUB_CLIENT_ID", "").strip()
        client_secret = os.environ.get("RV_GITHUB_CLIENT_SECRET", "").strip()
        if client_id and client_secret:
            _SECRET_VALUES.add(client_secret)
            idp["enabled"] = True
            idp.setdefault("config", {}).update(clientId=client_id, clientSecret=client_secret)
            _http_json(
                f"{admin}/identity-provider/instances/github", token=token, method="PUT", body=idp
            )
            say("keycloak: github identity provider configured and enabled")
        elif idp.get("enabled"):
            idp["enabled"] = False
            _http_json(
                f"{admin}/identity-provider/instances/github", token=token, method="PUT", body=idp
            )
            say("keycloak: github identity provider disabled (RV_GITHUB_CLIENT_ID/SECRET unset)")
    except urllib.error.HTTPError as exc:
        hint = (
            " (the bootstrap admin password does not match .stack/secrets.json: stop the stack "
            "and delete .stack/state.json so the Keycloak database is recreated)"
            if exc.code == 401
            else ""
        )
        raise StackError(
            "keycloak",
            f"admin API call {exc.url} answered {exc.code}{hint}; see {cfg.log('keycloak')}",
        ) from exc
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise StackError(
            "keycloak",
            f"provisioning through the admin API failed: {exc}; see {cfg.log('keycloak')}",
        ) from exc
    update_state(
        cfg,
        keycloak_realm_hash=_fingerprint(realm_file(cfg).read_bytes()),
        keycloak_admin_hash=_fingerprint(creds["keycloak_admin_password"]),
    )
    say("keycloak: realm rv ready, rv-cron client secret stored")


# --------------------------------------------------------------------------------------
# start / status / stop / env / logs
# --------------------------------------------------------------------------------------


def app_env(cfg: Config, creds: dict[str, str]) -> dict[str, str]:
    return {
        "RV_DATABASE_URL": (
            f"postgresql://rv_writer:{creds.get('pg_rv_writer_password', '')}"
            f"@127.0.0.1:{cfg.pg_port}/rv"
        ),
        "RV_DATABASE_READER_URL": (
            f"postgresql://rv_reader:{creds.get('pg_rv_reader_password', '')}"
            f"@127.0.0.1:{cfg.pg_port}/rv"
        ),
        "RV_KAFKA_BOOTSTRAP": f"127.0.0.1:{cfg.kafka_port}",
        "RV_S3_ENDPOINT": f"http://127.0.0.1:{cfg.minio_port}",
        "RV_S3_ACCESS_KEY": creds.get("minio_root_user", ""),
        "RV_S3_SECRET_KEY": creds.get("minio_root_password", ""),
        "RV_KEYCLOAK_URL": f"http://127.0.0.1:{cfg.kc_port}",
        "RV_KEYCLOAK_REALM": REALM,
        "RV_CRON_CLIENT_ID": CRON_CLIENT_ID,
        "RV_CRON_CLIENT_SECRET": creds.get("rv_cron_client_secret", ""),
    }


def env_lines(values: dict[str, str]) -> str:
    return "".join(f"export {key}={shlex.quote(value)}\n" for key, value in values.items())


def health(cfg: Config, service: str) -> tuple[bool, str]:
    if service == "postgres":
        try:
            return pg_healthy(cfg, pg_layout(cfg, create=False))
        except StackError as exc:
            return False, exc.message
    if service == "kafka":
        return kafka_healthy(cfg)
    if service == "minio":
        return minio_healthy(cfg)
    return keycloak_healthy(cfg)


def report_errors(errors: list[StackError]) -> int:
    if not errors:
        return 0
    for exc in errors:
        print(f"localstack: error: {redact(str(exc))}", file=sys.stderr)
    return 1


def print_ok(message: str) -> int:
    say(message)
    return 0


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
    errors: list[StackError] = []

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
        proc = start_kafka(cfg)
        wait_healthy(cfg, "kafka", lambda: kafka_healthy(cfg), proc)
        say("kafka: healthy")

    def minio_task() -> None:
        if running_pid(cfg, "minio") is None:
            install_minio(cfg)
        proc = start_minio(cfg, creds)
        wait_healthy(cfg, "minio", lambda: minio_healthy(cfg), proc)
        say("minio: healthy")

    def keycloak_task() -> None:
        keycloak_java_home()
        install_keycloak(cfg)
        pg_ready.wait()
        if "layout" not in pg_holder:
            raise StackError("keycloak", "not started because PostgreSQL did not come up")
        proc = start_keycloak(cfg, pg_holder["layout"], creds)
        wait_healthy(cfg, "keycloak", lambda: keycloak_healthy(cfg), proc)
        say("keycloak: healthy")
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
    _write_private(cfg.stack / "env", env_lines(values))
    say(f"stack healthy in {time.monotonic() - started:.1f}s")
    for service in SERVICES:
        print(f"{service:9} {cfg.listen(service):26} {cfg.details(service)}")
    print(f"env:      {cfg.stack / 'env'}  (or: python stack/localstack.py env)")
    print(f"logs:     {cfg.logs}")
    return 0


def status_report(cfg: Config) -> dict[str, dict[str, Any]]:
    report: dict[str, dict[str, Any]] = {}
    for service in SERVICES:
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


def cmd_stop(cfg: Config) -> int:
    if not cfg.stack.exists():
        return print_ok("nothing to stop")
    with file_lock(cfg.stack / ".lock", "this stack"):
        # Keycloak first (it holds connections to PostgreSQL), PostgreSQL last.
        stopped: list[str] = []
        errors = run_parallel(
            {
                s: (lambda s=s: stopped.append(s) if stop_service(cfg, s) else None)  # type: ignore[misc]
                for s in ("keycloak", "kafka", "minio")
            }
        )
        if stop_service(cfg, "postgres"):
            stopped.append("postgres")
    if errors:
        return report_errors(errors)
    left = [s for s in SERVICES if running_pid(cfg, s) is not None]
    if left:
        return report_errors([StackError(s, "is still running after stop") for s in left])
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
        for name in SERVICES:
            path = cfg.log(name)
            print(f"{name:9} {path}{'' if path.exists() else '  (not written yet)'}")
        return 0
    path = cfg.log(service)
    if not path.exists():
        print(f"localstack: error: {service}: no log yet at {path}", file=sys.stderr)
        return 1
    print(f"==> {path} <==")
    sys.stdout.write(_tail(path, lines) + "\n")
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="localstack",
        description="RepoVault's local services (PostgreSQL, Kafka, MinIO, Keycloak), no Docker.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("install", help="fetch/build what is missing into the cache")
    sub.add_parser("start", help="start every service that is not running; provision")
    status = sub.add_parser("status", help="which service is up and where (exit 3 if not all)")
    status.add_argument("--json", action="store_true")
    sub.add_parser("stop", help="stop the processes that start started")
    env = sub.add_parser("env", help="print export RV_...=... lines for the application")
    env.add_argument("--json", action="store_true")
    logs = sub.add_parser("logs", help="log paths, or the tail of one service's log")
    logs.add_argument("service", nargs="?", choices=SERVICES)
    logs.add_argument("-n", "--lines", type=int, default=50)
    logs.add_argument("-f", "--follow", action="store_true")
    args = parser.parse_args(argv)
    try:
        cfg = load_config()
        if args.command == "install":
            return cmd_install(cfg)
        if args.command == "start":
            return cmd_start(cfg)
        if args.command == "status":
            return cmd_status(cfg, args.json)
        if args.command == "stop":
            return cmd_stop(cfg)
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
