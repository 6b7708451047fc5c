"""Where the stack lives and on which ports, and the RV_* settings it gives the application."""

from __future__ import annotations

import os
import shlex
from dataclasses import dataclass
from pathlib import Path

from .console import StackError
from .files import read_json
from .settings import CRON_CLIENT_ID, KAFKA_BROKER_COUNTS, PORT_SETTINGS, REALM, REPO_ROOT, SERVICES

# (unit, label) -> the Config field holding that port (its variable is in PORT_SETTINGS)
_PORT_KEYS = {
    ("postgres", "port"): "pg_port",
    ("kafka", "port"): "kafka_port",
    ("kafka", "controller port"): "kafka_controller_port",
    ("kafka-2", "port"): "kafka_broker_2_port",
    ("kafka-3", "port"): "kafka_broker_3_port",
    ("minio", "port"): "minio_port",
    ("minio", "console port"): "minio_console_port",
    ("keycloak", "port"): "kc_port",
    ("keycloak", "management port"): "kc_mgmt_port",
}


def service_of(unit: str) -> str:
    """The service a unit (process) belongs to: kafka-2 and kafka-3 are Kafka."""
    return unit.split("-")[0]


@dataclass(frozen=True)
class KafkaNode:
    """One Kafka process: node 1 is broker and controller, the others brokers only."""

    unit: str  # its pid file and log name: kafka, kafka-2, kafka-3
    node_id: int
    port: int  # the PLAINTEXT (client) listener
    home: Path  # server.properties and data/

    @property
    def controller(self) -> bool:
        return self.node_id == 1


@dataclass(frozen=True)
class Config:
    repo: Path
    cache: Path
    stack: Path
    pg_port: int
    kafka_port: int
    kafka_controller_port: int
    kafka_broker_2_port: int
    kafka_broker_3_port: int
    minio_port: int
    minio_console_port: int
    kc_port: int
    kc_mgmt_port: int
    kafka_brokers: int = 1

    @property
    def logs(self) -> Path:
        return self.stack / "logs"

    @property
    def run(self) -> Path:
        return self.stack / "run"

    def log(self, unit: str) -> Path:
        return self.logs / f"{unit}.log"

    def ports(self) -> dict[str, int]:
        return {name: int(getattr(self, name)) for name in PORT_SETTINGS}

    def kafka_nodes(self) -> list[KafkaNode]:
        units = ["kafka" if n == 1 else f"kafka-{n}" for n in range(1, self.kafka_brokers + 1)]
        return [
            KafkaNode(unit, n, self.service_ports(unit)[0][1], self.stack / unit)
            for n, unit in enumerate(units, start=1)
        ]

    def kafka_bootstrap(self) -> str:
        return ",".join(f"127.0.0.1:{node.port}" for node in self.kafka_nodes())

    def units(self, services: tuple[str, ...] = SERVICES) -> list[str]:
        """The processes of ``services`` with this configuration, in start order."""
        kafka = [node.unit for node in self.kafka_nodes()]
        return [u for s in services for u in (kafka if s == "kafka" else [s])]

    def service_ports(self, unit: str) -> list[tuple[str, int]]:
        return [
            (label, int(getattr(self, key))) for (u, label), key in _PORT_KEYS.items() if u == unit
        ]

    def port_key(self, unit: str, label: str) -> str:
        return _PORT_KEYS[(unit, label)]

    def port_env(self, unit: str, label: str) -> str:
        return PORT_SETTINGS[self.port_key(unit, label)][0]

    def listen(self, unit: str) -> str:
        scheme = "http://" if unit in ("minio", "keycloak") else ""
        return f"{scheme}127.0.0.1:{self.service_ports(unit)[0][1]}"

    def details(self, unit: str) -> str:
        if service_of(unit) == "kafka" and unit != "kafka":
            return f"broker {unit.split('-')[1]} of {self.kafka_brokers}"
        return {
            "postgres": "databases rv, keycloak",
            "kafka": f"controller 127.0.0.1:{self.kafka_controller_port}"
            + (f"; broker 1 of {self.kafka_brokers}" if self.kafka_brokers > 1 else ""),
            "minio": f"console http://127.0.0.1:{self.minio_console_port}",
            "keycloak": f"realm {REALM}; health http://127.0.0.1:{self.kc_mgmt_port}/health/ready",
        }[unit]


def _dir_from_env(name: str, default: Path) -> Path:
    value = os.environ.get(name, "").strip()
    return Path(value).expanduser().resolve() if value else default.resolve()


def _brokers(recorded: object) -> int:
    raw = os.environ.get("RV_STACK_KAFKA_BROKERS", "").strip()
    if not raw:
        return recorded if isinstance(recorded, int) and recorded in KAFKA_BROKER_COUNTS else 1
    if not raw.isdigit() or int(raw) not in KAFKA_BROKER_COUNTS:
        allowed = " or ".join(map(str, KAFKA_BROKER_COUNTS))
        raise StackError("config", f"RV_STACK_KAFKA_BROKERS={raw!r}: allowed are {allowed}")
    return int(raw)


def load_config() -> Config:
    """Ports and the number of Kafka brokers come from RV_STACK_*, else from the last start
    (state.json), else defaults."""
    stack = _dir_from_env("RV_STACK_DIR", REPO_ROOT / ".stack")
    cache = _dir_from_env("RV_CACHE_DIR", Path.home() / ".cache" / "repovault")
    state = read_json(stack / "state.json")
    recorded = state.get("ports", {})
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
    cfg = Config(
        repo=REPO_ROOT,
        cache=cache,
        stack=stack,
        kafka_brokers=_brokers(state.get("kafka_brokers")),
        **ports,
    )
    seen: dict[int, str] = {}
    for unit in cfg.units():
        for label, port in cfg.service_ports(unit):
            env = cfg.port_env(unit, label)
            if port in seen:
                raise StackError(
                    "config",
                    f"{env} and {seen[port]} both use port {port}; give each service its own port",
                )
            seen[port] = env
    return cfg


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
        "RV_KAFKA_BOOTSTRAP": cfg.kafka_bootstrap(),
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
