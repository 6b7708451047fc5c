"""What a stack remembers between runs: .stack/state.json and the generated .stack/secrets.json."""

from __future__ import annotations

import os
import secrets
import stat
import threading
from typing import Any

from .config import Config
from .console import register_secret
from .files import read_json, write_private_json
from .settings import KEYCLOAK_ADMIN_USER, MINIO_ROOT_USER

_STATE_LOCK = threading.Lock()


def update_state(cfg: Config, **values: Any) -> None:
    with _STATE_LOCK:
        state = read_json(cfg.stack / "state.json")
        state.update(values)
        write_private_json(cfg.stack / "state.json", state)


def read_state(cfg: Config) -> dict[str, Any]:
    return read_json(cfg.stack / "state.json")


def _new_password() -> str:
    return secrets.token_urlsafe(24)


def load_secrets(cfg: Config, create: bool) -> dict[str, str]:
    """The generated credentials of this stack, made on first start (``.stack/secrets.json``)."""
    path = cfg.stack / "secrets.json"
    data = {k: str(v) for k, v in read_json(path).items()}
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
        write_private_json(path, data)
    elif path.exists() and stat.S_IMODE(path.stat().st_mode) != 0o600:
        os.chmod(path, 0o600)
    for key, value in data.items():
        if key not in ("minio_root_user", "keycloak_admin_user"):
            register_secret(value)
    return data


def store_secret(cfg: Config, key: str, value: str) -> None:
    path = cfg.stack / "secrets.json"
    with _STATE_LOCK:
        data = read_json(path)
        data[key] = value
        write_private_json(path, data)
    register_secret(value)
