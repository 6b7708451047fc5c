"""Where the stack lives and on which ports, and the RV_* settings it gives the application."""

from __future__ import annotations

import os
import shlex
from dataclasses import dataclass
from pathlib import Path

from .console import StackError
from .files import read_json
from .settings import CRON_CLIENT_ID, PORT_SETTINGS, REALM, REPO_ROOT


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
    recorded = read_json(stack / "state.json").get("ports", {})
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


def app_env(cfg: Config, creds: dict[str, str]) -> dict[str, str]:
    """The RV_* settings with which the application reaches this stack."""
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
