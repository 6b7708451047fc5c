"""MinIO: built from source with Go into the cache, started as one server, health-checked."""

from __future__ import annotations

import os
import re
import subprocess
import time
from pathlib import Path

from .config import Config
from .console import StackError, say
from .files import file_lock
from .processes import environment_without, run_logged, running_pid, spawn
from .settings import MIN_GO, MINIO_MODULE
from .tools import http_status, need_tool


def minio_binary(cfg: Config) -> Path:
    return cfg.cache / "minio" / "bin" / "minio"


def other_minio_build() -> int | None:
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


def install_minio(cfg: Config) -> None:
    home = cfg.cache / "minio"
    binary = minio_binary(cfg)
    with file_lock(home / ".lock", "the MinIO build"):
        build_log = home / "build.log"
        # A build started by hand (or by an older localstack) may still be running: wait for it
        # rather than compiling the same thing twice on two cores.
        last_size = -1
        while not binary.exists():
            other = other_minio_build()
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
    env = environment_without("MINIO_", "RV_")
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
