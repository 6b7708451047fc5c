"""Settings shared by the CLI and the daemons, read from ``RV_*`` variables at entry points only."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field

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
    log_level: str = "INFO"
    config_dir: str = ""

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Read every ``RV_*`` variable this project knows; unknown ones are ignored."""
        env = os.environ if environ is None else environ
        defaults = cls()

        def text(name: str, default: str) -> str:
            return env.get(name, default).strip()

        def listing(name: str, default: tuple[str, ...]) -> tuple[str, ...]:
            raw = env.get(name)
            if raw is None:
                return default
            return tuple(part.strip() for part in raw.split(",") if part.strip())

        def integer(name: str, default: int) -> int:
            raw = env.get(name)
            if raw is None or not raw.strip():
                return default
            try:
                value = int(raw)
            except ValueError:
                raise SettingsError(f"{name} must be a whole number, got {raw!r}") from None
            if value <= 0:
                raise SettingsError(f"{name} must be positive, got {value}")
            return value

        return cls(
            database_url=text("RV_DATABASE_URL", defaults.database_url),
            database_reader_url=text("RV_DATABASE_READER_URL", defaults.database_reader_url),
            kafka_bootstrap=text("RV_KAFKA_BOOTSTRAP", defaults.kafka_bootstrap),
            topic_prefix=text("RV_TOPIC_PREFIX", defaults.topic_prefix),
            s3_endpoint=text("RV_S3_ENDPOINT", defaults.s3_endpoint),
            s3_access_key=text("RV_S3_ACCESS_KEY", defaults.s3_access_key),
            s3_secret_key=text("RV_S3_SECRET_KEY", defaults.s3_secret_key),
            keycloak_url=text("RV_KEYCLOAK_URL", defaults.keycloak_url).rstrip("/"),
            keycloak_realm=text("RV_KEYCLOAK_REALM", defaults.keycloak_realm),
            cli_client_id=text("RV_CLI_CLIENT_ID", defaults.cli_client_id),
            audience=text("RV_AUDIENCE", defaults.audience),
            cron_client_id=text("RV_CRON_CLIENT_ID", defaults.cron_client_id),
            cron_client_secret=text("RV_CRON_CLIENT_SECRET", defaults.cron_client_secret),
            intake_url=text("RV_INTAKE_URL", defaults.intake_url).rstrip("/"),
            intake_listen=text("RV_INTAKE_LISTEN", defaults.intake_listen),
            worker_health_listen=text("RV_WORKER_HEALTH_LISTEN", defaults.worker_health_listen),
            allowed_hosts=listing("RV_ALLOWED_HOSTS", defaults.allowed_hosts),
            allow_private_hosts=listing("RV_ALLOW_PRIVATE_HOSTS", defaults.allow_private_hosts),
            max_repo_bytes=integer("RV_MAX_REPO_BYTES", defaults.max_repo_bytes),
            work_dir=text("RV_WORK_DIR", defaults.work_dir),
            github_api_url=text("RV_GITHUB_API_URL", defaults.github_api_url).rstrip("/"),
            github_token=text("RV_GITHUB_TOKEN", defaults.github_token),
            log_level=text("RV_LOG_LEVEL", defaults.log_level),
            config_dir=text("RV_CONFIG_DIR", defaults.config_dir),
        )

    def require(self, *names: str) -> None:
        """Fail with the variable to set when a setting this entry point needs is empty."""
        missing = [name for name in names if not getattr(self, name)]
        if missing:
            variables = ", ".join("RV_" + name.upper() for name in missing)
            raise SettingsError(
                f'{variables} not set; run `make up` and `eval "$(make -s env)"`, '
                "or see the README's configuration table"
            )

    @property
    def issuer(self) -> str:
        """The token issuer Keycloak uses for our realm."""
        return f"{self.keycloak_url}/realms/{self.keycloak_realm}"
