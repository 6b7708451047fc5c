"""PostgreSQL: the binaries, the cluster's directories, start, health, provisioning with psql."""

from __future__ import annotations

import contextlib
import hashlib
import os
import pwd
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from .config import Config
from .console import StackError, redact, say
from .processes import run_logged, running_pid, spawn

PG_FALLBACK_BASE = Path("/var/lib/repovault")


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


def postgres_health(cfg: Config) -> tuple[bool, str]:
    """Health of a running cluster for `status` (no directories are created)."""
    try:
        return pg_healthy(cfg, pg_layout(cfg, create=False))
    except StackError as exc:
        return False, exc.message


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
