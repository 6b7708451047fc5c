"""Settings shared by the CLI and the daemons, read from ``RV_*`` variables at entry points only."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields

GIB = 1024**3


class SettingsError(ValueError):
    """A setting is missing or malformed; the message names the variable and the fix."""


@dataclass(frozen=True)
class Settings:
    """Everything rv needs to reach its services, and the policy knobs operators may turn.

    Built once by an entry point (``Settings.from_env()``) and passed down; nothing
    below an entry point reads the environment.
    """

    database_url: str = field(default="", repr=False)
    database_reader_url: str = field(default="", repr=False)
    kafka_bootstrap: str = "127.0.0.1:59092"
    topic_prefix: str = ""
    s3_endpoint: str = "http://127.0.0.1:59000"
    s3_access_key: str = field(default="", repr=False)
    s3_secret_key: str = field(default="", repr=False)
    keycloak_url: str = "http://127.0.0.1:58080"
    keycloak_realm: str = "rv"
    cli_client_id: str = "rv-cli"
    audience: str = "rv-api"
    submit_role: str = "rv-submit"
    operator_role: str = "rv-operator"
    cron_client_id: str = ""
    cron_client_secret: str = field(default="", repr=False)
    intake_url: str = "http://127.0.0.1:58180"
    intake_listen: str = "127.0.0.1:58180"
    worker_health_listen: str = "127.0.0.1:58181"
    allowed_hosts: tuple[str, ...] = ("*",)
    allow_private_hosts: tuple[str, ...] = ()
    max_repo_bytes: int = 2 * GIB
    work_dir: str = ""
    github_api_url: str = "https://api.github.com"
    github_token: str = field(default="", repr=False)
    git_credentials_file: str = ""  # netrc file: per-host tokens for private HTTPS repositories
    ssh_key_file: str = ""  # private key for ssh:// and git@host:path repositories
    ssh_known_hosts_file: str = ""  # host keys accepted for SSH (no blind trust)
    log_level: str = "INFO"
    config_dir: str = ""

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Read ``RV_<FIELD>`` for every field; unset variables keep their defaults."""
        env = os.environ if environ is None else environ
        values: dict[str, object] = {}
        for spec in fields(cls):
            raw = env.get(variable_name(spec.name))
            if raw is None:
                continue
            values[spec.name] = _parse(variable_name(spec.name), str(spec.type), raw)
        return cls(**values)  # type: ignore[arg-type]

    @classmethod
    def variables(cls) -> list[str]:
        """Every environment variable rv reads, for documentation and deployment checks."""
        return [variable_name(spec.name) for spec in fields(cls)]

    def require(self, *names: str) -> None:
        """Fail with the variable to set when a setting this entry point needs is empty."""
        missing = [name for name in names if not getattr(self, name)]
        if missing:
            variables = ", ".join(variable_name(name) for name in missing)
            raise SettingsError(
                f'{variables} not set; run `make up` and `eval "$(make -s env)"`, '
                "or see the README's configuration table"
            )

    @property
    def issuer(self) -> str:
        """The token issuer Keycloak uses for our realm."""
        return f"{self.keycloak_url}/realms/{self.keycloak_realm}"


def variable_name(field_name: str) -> str:
    return f"RV_{field_name.upper()}"


def _parse(name: str, declared: str, raw: str) -> object:
    text = raw.strip()
    if declared.startswith("tuple"):
        return tuple(part.strip() for part in text.split(",") if part.strip())
    if declared == "int":
        try:
            value = int(text)
        except ValueError:
            raise SettingsError(f"{name} must be a whole number, got {raw!r}") from None
        if value <= 0:
            raise SettingsError(f"{name} must be positive, got {value}")
        return value
    return text.rstrip("/") if name.endswith("_URL") and "://" in text else text
