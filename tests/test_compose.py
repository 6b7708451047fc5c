"""The Docker Compose deployment, checked without a Docker engine.

compose.yml is validated against the Compose Specification JSON schema (vendored in
tests/data/, see compose-spec.README.md there), before and after interpolation with
.env.example; then compared with the application (RV_* settings, topics, realm, entry
points) and with the local stack (ports, Kafka and Keycloak versions).
"""

from __future__ import annotations

import ast
import copy
import hashlib
import importlib
import json
import re
import tomllib
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from repovault.settings import Settings
from repovault.topics import Topics

ROOT = Path(__file__).resolve().parent.parent
COMPOSE_FILE = ROOT / "compose.yml"
ENV_EXAMPLE = ROOT / ".env.example"
DOCKERFILE = ROOT / "Dockerfile"
SCHEMA_FILE = ROOT / "tests" / "data" / "compose-spec.json"
SCHEMA_SHA256 = "d549057ebc2925f39f62799eab0db7b9e2c18b35b6c00595199116da3ed10e64"

IMAGE_SERVICES = ("injector", "worker", "rv")  # run the image built from ./Dockerfile
ONE_SHOTS = ("postgres-provision", "keycloak-provision")
TOOLS = ("rv",)

INJECTOR_NEEDS = (
    "RV_DATABASE_URL",
    "RV_KAFKA_BOOTSTRAP",
    "RV_S3_ENDPOINT",
    "RV_S3_ACCESS_KEY",
    "RV_S3_SECRET_KEY",
    "RV_KEYCLOAK_URL",
    "RV_KEYCLOAK_REALM",
    "RV_INTAKE_LISTEN",
)
WORKER_NEEDS = (
    "RV_DATABASE_URL",
    "RV_KAFKA_BOOTSTRAP",
    "RV_S3_ENDPOINT",
    "RV_S3_ACCESS_KEY",
    "RV_S3_SECRET_KEY",
    "RV_WORKER_HEALTH_LISTEN",
    "RV_WORK_DIR",
)

METRICS = (
    "rv_worker_jobs_total",
    "rv_worker_archive_seconds",
    "rv_worker_queue_wait_seconds",
    "rv_worker_bytes_stored_total",
    "rv_injector_jobs_total",
    "rv_injector_jobs_accepted_total",
    "rv_injector_jobs_rejected_total",
)


# --------------------------------------------------------------------------- helpers


def load_compose() -> dict[str, Any]:
    data = yaml.safe_load(COMPOSE_FILE.read_text())
    assert isinstance(data, dict)
    return data


def compose_text() -> str:
    """compose.yml without its comments (they may show ${VAR} syntax as an example)."""
    return re.sub(r"(?m)(^|\s)#.*$", "", COMPOSE_FILE.read_text())


def env_example() -> dict[str, str]:
    """KEY=value lines of .env.example (comments and blanks skipped)."""
    values: dict[str, str] = {}
    for line in ENV_EXAMPLE.read_text().splitlines():
        text = line.strip()
        if not text or text.startswith("#"):
            continue
        key, sep, value = text.partition("=")
        assert sep, f".env.example: not KEY=value: {line!r}"
        values[key.strip()] = value.strip()
    return values


_VARIABLE = re.compile(
    r"\$(?:(?P<escaped>\$)|\{(?P<braced>[A-Za-z_][A-Za-z0-9_]*)"
    r"(?:(?P<op>:?[-?+])(?P<arg>[^}]*))?\}|(?P<plain>[A-Za-z_][A-Za-z0-9_]*))"
)


class MissingVariableError(KeyError):
    pass


def interpolate_text(text: str, env: dict[str, str]) -> str:
    """Compose's interpolation: $$, $VAR, ${VAR}, ${VAR:-d}, ${VAR-d}, ${VAR:?e}, ${VAR:+r}."""

    def replace(match: re.Match[str]) -> str:
        if match["escaped"]:
            return "$"
        name = match["braced"] or match["plain"]
        op, arg = match["op"], match["arg"] or ""
        value = env.get(name)
        unset_or_empty = value is None or (value == "" and op is not None and op[0] == ":")
        if op in (":-", "-"):
            return arg if (value is None if op == "-" else unset_or_empty) else str(value)
        if op in (":?", "?"):
            if value is None if op == "?" else unset_or_empty:
                raise MissingVariableError(f"{name}: {arg}")
            return str(value)
        if op in (":+", "+"):
            return "" if (value is None if op == "+" else unset_or_empty) else arg
        return value or ""

    return _VARIABLE.sub(replace, text)


def interpolate(node: Any, env: dict[str, str]) -> Any:
    if isinstance(node, str):
        return interpolate_text(node, env)
    if isinstance(node, dict):
        return {key: interpolate(value, env) for key, value in node.items()}
    if isinstance(node, list):
        return [interpolate(value, env) for value in node]
    return node


def rendered() -> dict[str, Any]:
    """compose.yml as Compose sees it after `cp .env.example .env`."""
    return interpolate(load_compose(), env_example())


def environment(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.partition("=")[::2] for item in env)
    return {key: "" if value is None else str(value) for key, value in env.items()}


def schema_validator() -> jsonschema.protocols.Validator:
    schema = json.loads(SCHEMA_FILE.read_text())
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    return cls(schema)


def schema_errors(document: Any) -> list[str]:
    return [
        f"{'/'.join(map(str, error.absolute_path)) or '<root>'}: {error.message}"
        for error in schema_validator().iter_errors(document)
    ]


def stack_constants() -> dict[str, Any]:
    """Module-level string constants of the local stack (stack/rvstack/settings.py), read
    without importing it."""
    tree = ast.parse((ROOT / "stack" / "rvstack" / "settings.py").read_text())
    constants: dict[str, Any] = {}
    for node in tree.body:
        if isinstance(node, ast.Assign | ast.AnnAssign):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for target in targets:
                if isinstance(target, ast.Name) and node.value is not None:
                    try:
                        constants[target.id] = ast.literal_eval(node.value)
                    except ValueError:
                        continue
    return constants


def image_tag(image: str) -> tuple[str, str]:
    name, _, tag = image.rpartition(":")
    assert name, f"image {image!r} has no tag"
    assert "/" not in tag, f"image {image!r} has no tag"
    return name, tag


def published(service: dict[str, Any]) -> dict[int, int]:
    """container port -> host port of a service's `ports` (short syntax, as used here)."""
    ports: dict[int, int] = {}
    for entry in service.get("ports", []):
        parts = str(entry).split(":")
        ports[int(parts[-1])] = int(parts[-2])
    return ports


def port_of(listen: str) -> int:
    return int(listen.rpartition(":")[2])


def project_scripts() -> dict[str, str]:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    scripts = pyproject["project"]["scripts"]
    assert isinstance(scripts, dict)
    return scripts


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    instructions = []
    for line in text.splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        keyword, _, rest = stripped.partition(" ")
        instructions.append((keyword.upper(), rest.strip()))
    return instructions


# ------------------------------------------------------------------ schema validation


def test_vendored_schema_is_the_published_one() -> None:
    digest = hashlib.sha256(SCHEMA_FILE.read_bytes()).hexdigest()
    assert digest == SCHEMA_SHA256, "tests/data/compose-spec.json changed: see its README"


def test_compose_file_follows_the_compose_specification() -> None:
    assert schema_errors(load_compose()) == []


def test_compose_file_is_valid_after_interpolation_with_env_example() -> None:
    assert schema_errors(rendered()) == []


def _unknown_key(doc: dict[str, Any]) -> None:
    doc["services"]["worker"]["helthcheck"] = doc["services"]["worker"].pop("healthcheck")


def _bad_condition(doc: dict[str, Any]) -> None:
    doc["services"]["injector"]["depends_on"]["kafka"]["condition"] = "service_ready"


def _ports_as_mapping(doc: dict[str, Any]) -> None:
    doc["services"]["postgres"]["ports"] = {"5432": 55432}


def _healthcheck_retries_list(doc: dict[str, Any]) -> None:
    doc["services"]["minio"]["healthcheck"]["retries"] = ["many"]


def _services_as_list(doc: dict[str, Any]) -> None:
    doc["services"] = list(doc["services"])


def _unknown_top_level(doc: dict[str, Any]) -> None:
    doc["service"] = doc["services"]


@pytest.mark.parametrize(
    "breakage",
    [
        _unknown_key,
        _bad_condition,
        _ports_as_mapping,
        _healthcheck_retries_list,
        _services_as_list,
        _unknown_top_level,
    ],
)
def test_a_broken_compose_file_fails_validation(breakage: Any) -> None:
    broken = copy.deepcopy(load_compose())
    breakage(broken)
    assert schema_errors(broken), f"{breakage.__name__} was accepted by the schema"


def test_broken_yaml_on_disk_fails(tmp_path: Path) -> None:
    copy_path = tmp_path / "compose.yml"
    copy_path.write_text(
        COMPOSE_FILE.read_text().replace("condition: service_healthy", "condition: healthy", 1)
    )
    assert schema_errors(yaml.safe_load(copy_path.read_text()))


# ------------------------------------------------------------------ compose structure


def test_env_example_is_enough() -> None:
    """Every ${VAR:?...} compose.yml insists on has a non-empty value in .env.example."""
    required = set(re.findall(r"\$\{([A-Za-z_][A-Za-z0-9_]*):?\?", compose_text()))
    values = env_example()
    assert required, "compose.yml should refuse to start without its secrets"
    missing = sorted(name for name in required if not values.get(name))
    assert missing == []


def test_every_variable_compose_uses_is_listed_in_env_example() -> None:
    text = compose_text().replace("$$", "")
    used = set(re.findall(r"\$\{([A-Za-z_][A-Za-z0-9_]*)", text))
    assert sorted(used - set(env_example())) == []


def test_every_service_has_a_healthcheck_and_one_shots_complete() -> None:
    services = load_compose()["services"]
    waited_for_completion = {
        name
        for service in services.values()
        for name, dep in (service.get("depends_on") or {}).items()
        if dep.get("condition") == "service_completed_successfully"
    }
    for name, service in services.items():
        check = service.get("healthcheck")
        assert check, f"{name} has no healthcheck"
        if check.get("disable"):
            assert name in ONE_SHOTS + TOOLS, f"{name} disables its healthcheck"
            continue
        assert check.get("test"), f"{name}: healthcheck without a test"
        assert service.get("restart") == "unless-stopped", f"{name} is not restarted"
    for name in ONE_SHOTS:
        assert services[name]["restart"] == "no"
        assert name in waited_for_completion, f"nobody waits for {name} to finish"


def test_dependencies_wait_for_health() -> None:
    services = load_compose()["services"]
    for name, service in services.items():
        depends = service.get("depends_on") or {}
        assert isinstance(depends, dict), f"{name}: depends_on needs conditions"
        for dep, spec in depends.items():
            assert dep in services, f"{name} depends on unknown {dep}"
            expected = "service_completed_successfully" if dep in ONE_SHOTS else "service_healthy"
            assert spec["condition"] == expected, f"{name} -> {dep}"
            if "brokers3" in services[dep].get("profiles", []):
                assert spec.get("required") is False, f"{name} needs {dep} in every profile"


def test_worker_can_be_scaled() -> None:
    worker = load_compose()["services"]["worker"]
    assert "container_name" not in worker
    assert "ports" not in worker, "a fixed host port would stop `--scale worker=N`"
    assert "hostname" not in worker


def test_volumes_are_named_and_declared() -> None:
    doc = load_compose()
    declared = set(doc.get("volumes") or {})
    for name, service in doc["services"].items():
        for volume in service.get("volumes", []):
            source = str(volume).split(":", 1)[0]
            if source.startswith(("./", "/")):
                assert str(volume).endswith(":ro"), f"{name}: bind mount {volume} is writable"
            else:
                assert source in declared, f"{name}: volume {source} not declared"
    stateful = {"postgres", "keycloak-db", "kafka", "kafka-2", "kafka-3", "minio"}
    for name in stateful:
        mounts = doc["services"][name].get("volumes", [])
        assert any(str(m).split(":", 1)[0] in declared for m in mounts), f"{name} has no volume"


def test_images_are_pinned() -> None:
    for name, service in load_compose()["services"].items():
        image = service.get("image")
        assert image, f"{name} has no image"
        if name in IMAGE_SERVICES:
            assert service.get("build"), f"{name} should build ./Dockerfile"
            continue
        _, tag = image_tag(image)
        assert tag != "latest", f"{name}: {image} is not pinned"
        assert re.search(r"\d", tag), f"{name}: {image} is not pinned"


def test_no_secret_is_written_into_compose_file() -> None:
    """Passwords and keys come from .env: every such value is an interpolation."""
    for name, service in load_compose()["services"].items():
        for key, value in environment(service).items():
            if re.search(r"PASSWORD|SECRET|ACCESS_KEY|TOKEN", key):
                assert value == "" or "${" in value, f"{name}: {key} is written in compose.yml"
            if key.endswith(("DATABASE_URL", "READER_URL")):
                assert "${" in value.partition("@")[0], f"{name}: {key} embeds a password"


# ------------------------------------------------------------------ parity with the app


def test_daemons_get_every_setting_they_need() -> None:
    services = rendered()["services"]
    for name, needs in (("injector", INJECTOR_NEEDS), ("worker", WORKER_NEEDS)):
        env = environment(services[name])
        missing = [variable for variable in needs if not env.get(variable)]
        assert missing == [], f"{name} lacks {missing}"
        Settings.from_env(env)  # parses: numbers are numbers, lists are lists


def test_every_rv_variable_is_a_real_setting() -> None:
    known = set(Settings.variables())
    files = [COMPOSE_FILE, ENV_EXAMPLE, *sorted((ROOT / "docker").rglob("*.sh"))]
    for path in files:
        names = set(re.findall(r"\bRV_[A-Z0-9_]*[A-Z0-9]\b", path.read_text()))
        unknown = sorted(names - known)
        assert unknown == [], f"{path.relative_to(ROOT)} uses {unknown}, not in Settings"


def test_containers_listen_on_all_interfaces_on_the_default_ports() -> None:
    services = rendered()["services"]
    defaults = Settings()
    intake = environment(services["injector"])["RV_INTAKE_LISTEN"]
    health = environment(services["worker"])["RV_WORKER_HEALTH_LISTEN"]
    assert intake == f"0.0.0.0:{port_of(defaults.intake_listen)}"
    assert health == f"0.0.0.0:{port_of(defaults.worker_health_listen)}"
    assert published(services["injector"]) == {port_of(intake): port_of(defaults.intake_url)}
    for name, port in (("injector", port_of(intake)), ("worker", port_of(health))):
        probe = " ".join(services[name]["healthcheck"]["test"])
        assert f"127.0.0.1:{port}/healthz" in probe, f"{name} healthcheck probes another port"


def test_topics_and_realm_agree_with_the_application() -> None:
    services = rendered()["services"]
    realm = json.loads((ROOT / "realm" / "rv-realm.json").read_text())
    for name in IMAGE_SERVICES:
        assert environment(services[name])["RV_KEYCLOAK_REALM"] == realm["realm"]
    assert environment(services["keycloak-provision"])["KEYCLOAK_REALM"] == realm["realm"]
    assert Settings().keycloak_realm == realm["realm"]

    clients = {client["clientId"]: client for client in realm["clients"]}
    cron = environment(services["keycloak-provision"])["RV_CRON_CLIENT_ID"]
    assert environment(services["rv"])["RV_CRON_CLIENT_ID"] == cron
    assert clients[cron]["serviceAccountsEnabled"]
    assert not clients[cron]["publicClient"]

    keycloak = services["keycloak"]
    assert "--import-realm" in keycloak["command"]
    assert "./realm:/opt/keycloak/data/import:ro" in keycloak["volumes"]

    prefixes = {environment(services[name])["RV_TOPIC_PREFIX"] for name in ("injector", "worker")}
    assert len(prefixes) == 1, "injector and worker must share the topic prefix"
    topics = Topics(prefix=prefixes.pop()).all()
    assert topics == ("pending", "in-progress", "completed", "dead-letter")
    docs = (ROOT / "docs" / "operations.md").read_text()
    for topic in topics:
        assert f"`{topic}`" in docs, f"docs/operations.md does not name topic {topic}"


def test_versions_and_ports_match_the_local_stack() -> None:
    constants = stack_constants()
    services = rendered()["services"]

    keycloak_major = str(constants["KEYCLOAK_VERSION"]).split(".")[0]
    for name in ("keycloak", "keycloak-provision"):
        image, tag = image_tag(services[name]["image"])
        assert image == "quay.io/keycloak/keycloak"
        assert tag.split(".")[0] == keycloak_major, f"{name}: Keycloak {tag}"

    kafka_services = [n for n, s in services.items() if s["image"].startswith("apache/kafka:")]
    assert set(kafka_services) == {"kafka", "kafka-2", "kafka-3"}
    for name in kafka_services:
        assert image_tag(services[name]["image"])[1] == constants["KAFKA_VERSION"]

    assert environment(services["keycloak"])["KC_HTTP_MANAGEMENT_PORT"] == str(
        constants["PORT_SETTINGS"]["kc_mgmt_port"][1]
    )
    stack_ports = {key: default for key, (_, default) in constants["PORT_SETTINGS"].items()}
    assert published(services["postgres"]) == {5432: stack_ports["pg_port"]}
    assert published(services["kafka"])[stack_ports["kafka_port"]] == stack_ports["kafka_port"]
    assert published(services["minio"]) == {
        9000: stack_ports["minio_port"],
        9001: stack_ports["minio_console_port"],
    }
    assert published(services["keycloak"]) == {
        stack_ports["kc_port"]: stack_ports["kc_port"],
        stack_ports["kc_mgmt_port"]: stack_ports["kc_mgmt_port"],
    }
    for name in ("postgres", "postgres-provision", "keycloak-db"):
        assert image_tag(services[name]["image"])[1].startswith("15."), "PostgreSQL 15"


def test_three_broker_profile_replicates() -> None:
    doc = load_compose()
    services = doc["services"]
    assert "profiles" not in services["kafka"]
    for name in ("kafka-2", "kafka-3"):
        assert services[name]["profiles"] == ["brokers3"]
    env = dict(env_example(), KAFKA_REPLICATION_FACTOR="3", KAFKA_MIN_INSYNC_REPLICAS="2")
    brokers = interpolate(doc, env)["services"]
    node_ids = set()
    for name in ("kafka", "kafka-2", "kafka-3"):
        broker_env = environment(brokers[name])
        node_ids.add(broker_env["KAFKA_NODE_ID"])
        assert broker_env["KAFKA_DEFAULT_REPLICATION_FACTOR"] == "3"
        assert broker_env["KAFKA_MIN_INSYNC_REPLICAS"] == "2"
        assert broker_env["KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR"] == "3"
        assert broker_env["KAFKA_CONTROLLER_QUORUM_VOTERS"] == "1@kafka:9093"
    assert node_ids == {"1", "2", "3"}
    one = environment(rendered()["services"]["kafka"])
    assert one["KAFKA_DEFAULT_REPLICATION_FACTOR"] == one["KAFKA_MIN_INSYNC_REPLICAS"] == "1"


def test_commands_are_entry_points_of_the_project() -> None:
    scripts = project_scripts()
    services = load_compose()["services"]
    commands = set()
    for name in IMAGE_SERVICES:
        argv = services[name].get("entrypoint") or services[name].get("command")
        commands.add(argv[0])
    assert commands == {"rv", "rv-injector", "rv-worker"}
    for instruction, args in dockerfile_instructions():
        if instruction in ("CMD", "ENTRYPOINT"):
            commands.add(json.loads(args)[0])
        if instruction == "RUN":
            commands.update(re.findall(r"(?<![\w/-])(rv(?:-[a-z]+)?)(?= )", args))
    assert commands <= set(scripts), f"not in [project.scripts]: {commands - set(scripts)}"
    for command in commands:
        module, _, attribute = scripts[command].partition(":")
        target = importlib.import_module(module)
        for part in attribute.split("."):
            target = getattr(target, part)
        assert callable(target), f"{command} -> {scripts[command]} is not callable"


# ------------------------------------------------------------------------ Dockerfile


def test_dockerfile_is_multi_stage_pinned_and_non_root() -> None:
    instructions = dockerfile_instructions()
    args = {}
    for instruction, rest in instructions:
        if instruction == "ARG" and "=" in rest:
            key, _, value = rest.partition("=")
            args[key] = value
    bases = [
        re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], rest.split()[0])
        for instruction, rest in instructions
        if instruction == "FROM"
    ]
    assert len(bases) >= 2, "build the wheel in one stage, run it in another"
    for base in bases:
        name, tag = image_tag(base)
        assert name == "python"
        assert re.match(r"3\.11\.\d+-slim-", tag), f"base {base} is not an exact version"
    users = [rest for instruction, rest in instructions if instruction == "USER"]
    assert users, "the image must switch to a non-root USER"
    assert users[-1].split(":")[0] not in ("root", "0")
    runs = " ".join(rest for instruction, rest in instructions if instruction == "RUN")
    assert re.search(r"apt-get install[^&]*\bgit\b", runs), "the worker needs git"


def test_dockerignore_keeps_secrets_and_local_data_out() -> None:
    lines = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert lines[0] == "*", "allow-list: ignore everything, then name what the build needs"
    allowed = {line[1:].rstrip("/") for line in lines if line.startswith("!")}
    assert {"pyproject.toml", "core", "cli", "daemons"} <= allowed
    assert not allowed & {".env", ".stack", "tests", ".git"}


# ------------------------------------------------------------------- docs and Makefile


def test_operations_doc_covers_metrics_and_health() -> None:
    docs = (ROOT / "docs" / "operations.md").read_text()
    for metric in METRICS:
        assert metric in docs, f"docs/operations.md does not mention {metric}"
    for needle in ("/healthz", "/metrics", "--scale worker=", "brokers3", "pg_dump", "mc mirror"):
        assert needle in docs, f"docs/operations.md does not mention {needle}"


def test_makefile_chooses_compose_or_the_local_stack() -> None:
    text = (ROOT / "Makefile").read_text()
    for target in ("up", "down", "logs"):
        match = re.search(rf"^{target}:.*\n((?:\t.*\n)+)", text, re.MULTILINE)
        assert match, f"Makefile has no {target} target"
        recipe = match.group(1)
        assert "docker compose" in recipe, f"make {target} never uses Compose"
        assert "$(STACK)" in recipe, f"make {target} lost the local stack"
