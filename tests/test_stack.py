"""Smoke tests of the local service stack: each service does real work for the application."""

from __future__ import annotations

import io
import json
import os
import socket
import stat
import time
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import jwt
import psycopg
import pytest
from confluent_kafka import Consumer, KafkaException, Producer
from confluent_kafka.admin import AdminClient, NewTopic
from minio import Minio

from tests.browser import approve_device
from tests.conftest import REPO_ROOT, localstack
from tests.gitserve import free_port


def _stack_dir() -> Path:
    configured = os.environ.get("RV_STACK_DIR", "").strip()
    return Path(configured).expanduser().resolve() if configured else REPO_ROOT / ".stack"


class TestPostgres:
    def test_writer_inserts_and_reads_back_a_job(self, stack_env: dict[str, str]) -> None:
        """rv_writer can insert a job row and read it back (rolled back: it has no DELETE)."""
        job_id = uuid.uuid4()
        with psycopg.connect(stack_env["RV_DATABASE_URL"], connect_timeout=10) as conn:
            conn.execute(
                "INSERT INTO jobs (id, repo_url, state, submitted_by) VALUES (%s, %s, %s, %s)",
                (job_id, "https://example.org/stack-test.git", "queued", "stack-test"),
            )
            row = conn.execute(
                "SELECT repo_url, state, attempts FROM jobs WHERE id = %s", (job_id,)
            ).fetchone()
            conn.rollback()
        assert row == ("https://example.org/stack-test.git", "queued", 0)

    def test_writer_cannot_delete(self, stack_env: dict[str, str]) -> None:
        """rv_writer has no DELETE privilege on jobs (job rows are history)."""
        with (
            psycopg.connect(stack_env["RV_DATABASE_URL"], connect_timeout=10) as conn,
            pytest.raises(psycopg.errors.InsufficientPrivilege),
        ):
            conn.execute("DELETE FROM jobs WHERE id = %s", (uuid.uuid4(),))

    def test_reader_reads_but_cannot_insert(self, stack_env: dict[str, str]) -> None:
        """rv_reader (the CLI) may SELECT from jobs but an INSERT is refused."""
        with psycopg.connect(stack_env["RV_DATABASE_READER_URL"], connect_timeout=10) as conn:
            count = conn.execute("SELECT count(*) FROM jobs").fetchone()
            assert count is not None
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute(
                    "INSERT INTO jobs (id, repo_url, state) VALUES (%s, %s, %s)",
                    (uuid.uuid4(), "https://example.org/reader.git", "queued"),
                )

    def test_wrong_password_is_refused(self, stack_env: dict[str, str]) -> None:
        """Loopback TCP logins need the generated password (scram-sha-256, no trust)."""
        url = urlsplit(stack_env["RV_DATABASE_URL"])
        bad = url._replace(netloc=f"rv_writer:wrong@{url.hostname}:{url.port}").geturl()
        with pytest.raises(psycopg.OperationalError):
            psycopg.connect(bad, connect_timeout=10).close()


class TestKafka:
    def test_topic_produce_consume_delete(self, stack_env: dict[str, str]) -> None:
        """A new topic takes a message that a consumer reads back; the topic is then deleted."""
        bootstrap = stack_env["RV_KAFKA_BOOTSTRAP"]
        topic = f"rv-stack-test-{uuid.uuid4().hex[:12]}"
        admin = AdminClient({"bootstrap.servers": bootstrap})
        admin.create_topics([NewTopic(topic, num_partitions=1, replication_factor=1)])[
            topic
        ].result(timeout=30)
        try:
            producer = Producer({"bootstrap.servers": bootstrap, "acks": "all"})
            payload = json.dumps({"test": topic}).encode()
            producer.produce(topic, key=b"k", value=payload)
            assert producer.flush(30) == 0
            consumer = Consumer(
                {
                    "bootstrap.servers": bootstrap,
                    "group.id": f"{topic}-group",
                    "auto.offset.reset": "earliest",
                    "enable.auto.commit": False,
                }
            )
            try:
                consumer.subscribe([topic])
                received = None
                deadline = time.monotonic() + 60
                while received is None and time.monotonic() < deadline:
                    message = consumer.poll(1.0)
                    if message is None:
                        continue
                    if message.error():
                        raise KafkaException(message.error())
                    received = message.value()
            finally:
                consumer.close()
            assert received == payload
        finally:
            admin.delete_topics([topic])[topic].result(timeout=30)

    def test_topics_are_not_auto_created(self, stack_env: dict[str, str]) -> None:
        """Producing to an unknown topic fails: the application creates its topics itself."""
        topic = f"rv-stack-missing-{uuid.uuid4().hex[:12]}"
        admin = AdminClient({"bootstrap.servers": stack_env["RV_KAFKA_BOOTSTRAP"]})
        metadata = admin.list_topics(topic=topic, timeout=10)
        assert metadata.topics[topic].error is not None
        assert topic not in admin.list_topics(timeout=10).topics


class TestMinio:
    def test_bucket_put_get_remove(self, stack_env: dict[str, str]) -> None:
        """A bucket is made, an object stored and read back byte for byte, then both removed."""
        endpoint = urlsplit(stack_env["RV_S3_ENDPOINT"])
        client = Minio(
            endpoint.netloc,
            access_key=stack_env["RV_S3_ACCESS_KEY"],
            secret_key=stack_env["RV_S3_SECRET_KEY"],
            secure=endpoint.scheme == "https",
        )
        bucket = f"rv-stack-test-{uuid.uuid4().hex[:12]}"
        data = os.urandom(64 * 1024)
        client.make_bucket(bucket)
        try:
            client.put_object(bucket, "snapshots/test.bin", io.BytesIO(data), len(data))
            response = client.get_object(bucket, "snapshots/test.bin")
            try:
                assert response.read() == data
            finally:
                response.close()
                response.release_conn()
            client.remove_object(bucket, "snapshots/test.bin")
        finally:
            client.remove_bucket(bucket)
        assert not client.bucket_exists(bucket)


class TestKeycloak:
    def _token_endpoint(self, env: dict[str, str]) -> str:
        return f"{env['RV_KEYCLOAK_URL']}/realms/{env['RV_KEYCLOAK_REALM']}/protocol/openid-connect"

    def _cron_token(self, env: dict[str, str]) -> str:
        response = httpx.post(
            f"{self._token_endpoint(env)}/token",
            data={"grant_type": "client_credentials"},
            auth=(env["RV_CRON_CLIENT_ID"], env["RV_CRON_CLIENT_SECRET"]),
            timeout=30,
        )
        assert response.status_code == 200, response.text
        token = response.json()["access_token"]
        assert isinstance(token, str)
        return token

    def test_cron_client_credentials_token(self, stack_env: dict[str, str]) -> None:
        """rv-cron gets a signed token for audience rv-api with sub, rv-submit and our issuer."""
        token = self._cron_token(stack_env)
        issuer = f"{stack_env['RV_KEYCLOAK_URL']}/realms/{stack_env['RV_KEYCLOAK_REALM']}"
        jwks = jwt.PyJWKClient(f"{issuer}/protocol/openid-connect/certs")
        claims: dict[str, Any] = jwt.decode(
            token,
            jwks.get_signing_key_from_jwt(token).key,
            algorithms=["RS256"],
            audience="rv-api",
            issuer=issuer,
        )
        audience = claims["aud"] if isinstance(claims["aud"], list) else [claims["aud"]]
        assert "rv-api" in audience
        assert claims["sub"]
        assert "rv-submit" in claims["realm_access"]["roles"]
        assert "rv-operator" in claims["realm_access"]["roles"]  # cron may run trending
        assert claims["azp"] == "rv-cron"
        assert claims["iss"] == issuer
        assert claims["exp"] - claims["iat"] == 300

    def test_wrong_cron_secret_is_refused(self, stack_env: dict[str, str]) -> None:
        """The client credentials grant needs rv-cron's real secret."""
        response = httpx.post(
            f"{self._token_endpoint(stack_env)}/token",
            data={"grant_type": "client_credentials"},
            auth=(stack_env["RV_CRON_CLIENT_ID"], "not-the-secret"),
            timeout=30,
        )
        assert response.status_code == 401

    def test_device_authorization_for_cli(self, stack_env: dict[str, str]) -> None:
        """The device authorization endpoint answers rv-cli with codes, 600 s and a 5 s interval."""
        response = httpx.post(
            f"{self._token_endpoint(stack_env)}/auth/device",
            data={"client_id": "rv-cli", "scope": "openid offline_access"},
            timeout=30,
        )
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["device_code"]
        assert body["user_code"]
        assert body["verification_uri"].startswith(stack_env["RV_KEYCLOAK_URL"])
        assert body["expires_in"] == 600
        assert body["interval"] == 5

    def test_cli_has_no_password_grant(self, stack_env: dict[str, str]) -> None:
        """rv-cli cannot log in with a password directly (direct access grants are off)."""
        response = httpx.post(
            f"{self._token_endpoint(stack_env)}/token",
            data={
                "grant_type": "password",
                "client_id": "rv-cli",
                "username": "demo",
                "password": "demo",
            },
            timeout=30,
        )
        assert response.status_code in (400, 401)
        assert response.json()["error"] == "unauthorized_client"


class TestDeviceLogin:
    @pytest.mark.parametrize(
        ("user", "roles"),
        [
            ("demo", {"rv-submit"}),
            ("operator", {"rv-submit", "rv-operator"}),
            ("nobody", set()),
        ],
    )
    def test_device_login_gives_rv_roles(
        self, stack_env: dict[str, str], user: str, roles: set[str]
    ) -> None:
        """A demo user logs in through the device flow (form, consent) and rv-cli gets an
        offline-capable token for rv-api carrying exactly that user's rv roles."""
        issuer = f"{stack_env['RV_KEYCLOAK_URL']}/realms/{stack_env['RV_KEYCLOAK_REALM']}"
        oidc = f"{issuer}/protocol/openid-connect"
        device = httpx.post(
            f"{oidc}/auth/device",
            data={"client_id": "rv-cli", "scope": "openid offline_access"},
            timeout=30,
        ).json()
        done = approve_device(device["verification_uri_complete"], user, user)
        assert "Device Login Successful" in done
        response = httpx.post(
            f"{oidc}/token",
            data={
                "grant_type": "urn:ietf:params:oauth:grant-type:device_code",
                "client_id": "rv-cli",
                "device_code": device["device_code"],
            },
            timeout=30,
        )
        assert response.status_code == 200, response.text
        tokens = response.json()
        assert "offline_access" in tokens["scope"].split()
        claims = jwt.decode(tokens["access_token"], options={"verify_signature": False})
        assert claims["preferred_username"] == user
        assert claims["iss"] == issuer
        assert claims["sub"]
        assert "rv-api" in claims["aud"]
        assert {r for r in claims["realm_access"]["roles"] if r.startswith("rv-")} == roles


class TestLocalstackScript:
    def test_status_json_lists_four_services_up(self, stack_env: dict[str, str]) -> None:
        """`status --json` reports postgres, kafka, minio and keycloak as up, exit 0."""
        result = localstack("status", "--json")
        assert result.returncode == 0, result.stdout + result.stderr
        report = json.loads(result.stdout)
        assert report["healthy"] is True
        assert set(report["services"]) == {"postgres", "kafka", "minio", "keycloak"}
        assert all(entry["up"] for entry in report["services"].values())

    def test_env_file_and_secrets_are_private(self, stack_env: dict[str, str]) -> None:
        """.stack/env and .stack/secrets.json are mode 0600 and env matches `env --json`."""
        stack = _stack_dir()
        for name in ("env", "secrets.json"):
            assert stat.S_IMODE((stack / name).stat().st_mode) == 0o600
        text = (stack / "env").read_text()
        for key, value in stack_env.items():
            assert f"export {key}=" in text
            assert value in text

    def test_start_again_is_harmless(self, stack_env: dict[str, str]) -> None:
        """A second `start` finds everything running, re-provisions and keeps the same secrets."""
        result = localstack("start", timeout=600)
        assert result.returncode == 0, result.stderr
        assert "already running: postgres, kafka, minio, keycloak" in result.stderr
        again = json.loads(localstack("env", "--json").stdout)
        assert again == stack_env

    def test_port_in_use_names_the_service(self, tmp_path: Path) -> None:
        """Starting with a port taken by another program fails fast, naming service and port."""
        ports = {
            name: str(free_port())
            for name in (
                "RV_STACK_KAFKA_PORT",
                "RV_STACK_KAFKA_CONTROLLER_PORT",
                "RV_STACK_MINIO_PORT",
                "RV_STACK_MINIO_CONSOLE_PORT",
                "RV_STACK_KEYCLOAK_PORT",
                "RV_STACK_KEYCLOAK_MGMT_PORT",
            )
        }
        with socket.socket() as squatter:
            squatter.bind(("127.0.0.1", 0))
            squatter.listen(1)
            taken = squatter.getsockname()[1]
            env = {
                **os.environ,
                **ports,
                "RV_STACK_PG_PORT": str(taken),
                "RV_STACK_DIR": str(tmp_path / "stack"),
            }
            started = time.monotonic()
            result = localstack("start", env=env, timeout=120)
        assert result.returncode != 0
        assert time.monotonic() - started < 30
        assert "postgres" in result.stderr
        assert f"127.0.0.1:{taken}" in result.stderr
        assert "RV_STACK_PG_PORT" in result.stderr
        status = localstack("status", "--json", env=env)
        assert status.returncode == 3
        assert not any(e["running"] for e in json.loads(status.stdout)["services"].values())
