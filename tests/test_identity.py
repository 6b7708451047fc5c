"""Identity: device-flow login, tokens the daemons verify, and what is refused. Real
Keycloak from the local stack; no path archives a repository without a verified user."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from keycloak import KeycloakAdmin

from repovault import db
from repovault.buckets import bucket_for
from repovault.settings import Settings
from repovault.snapshots import s3_client
from repovault_cli import _tokens
from tests.browser import approve_device
from tests.conftest import REPO_ROOT, GitServers, Pipeline
from tests.daemons import topic_text

USERS = {"demo": "demo", "nobody": "nobody", "operator": "operator"}


def login(pipeline: Pipeline, config_dir: Path, username: str) -> dict[str, str]:
    """Run `rv login` for real and approve it as ``username``; return the user's env."""
    env = {**pipeline.env, "RV_CONFIG_DIR": str(config_dir), "RV_CRON_CLIENT_SECRET": ""}
    process = subprocess.Popen(
        [sys.executable, "-m", "repovault_cli", "login", "--no-browser"],
        env={k: v for k, v in env.items()},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None
    lines = []
    for line in process.stdout:
        lines.append(line)
        if line.startswith("(or open "):
            approve_device(
                line.removeprefix("(or open ").strip().rstrip(")"), username, USERS[username]
            )
            break
    out, err = process.communicate(timeout=60)
    assert process.returncode == 0, (lines, out, err)
    assert f"Logged in as {username}." in out
    return env


@pytest.fixture
def user_env(pipeline: Pipeline, tmp_path: Path) -> dict[str, str]:
    return login(pipeline, tmp_path / "demo-config", "demo")


def rv_as(pipeline: Pipeline, env: dict[str, str], *args: str):  # type: ignore[no-untyped-def]
    return pipeline.rv(*args, env={k: v for k, v in env.items() if k.startswith("RV_")})


def token_file(env: dict[str, str]) -> Path:
    return Path(env["RV_CONFIG_DIR"]) / "tokens.json"


@pytest.fixture(scope="module")
def admin(stack_env: dict[str, str]) -> KeycloakAdmin:
    stack_dir = Path(os.environ.get("RV_STACK_DIR", REPO_ROOT / ".stack"))
    secrets = json.loads((stack_dir / "secrets.json").read_text())
    return KeycloakAdmin(
        server_url=stack_env["RV_KEYCLOAK_URL"],
        username=secrets["keycloak_admin_user"],
        password=secrets["keycloak_admin_password"],
        realm_name="rv",
        user_realm_name="master",
    )


@contextmanager
def service_client(
    admin: KeycloakAdmin, stack_env: dict[str, str], prefix: str, **extra: Any
) -> Iterator[str]:
    """A throwaway confidential client of realm rv; yields an access token of its own."""
    client_id = f"{prefix}-{uuid.uuid4().hex[:6]}"
    secret = uuid.uuid4().hex
    roles = extra.pop("roles", [])
    admin.create_client(
        {
            "clientId": client_id,
            "serviceAccountsEnabled": True,
            "publicClient": False,
            "standardFlowEnabled": False,
            "secret": secret,
            **extra,
        }
    )
    try:
        account = admin.get_client_service_account_user(admin.get_client_id(client_id))
        if roles:
            admin.assign_realm_roles(account["id"], [admin.get_realm_role(r) for r in roles])
        yield httpx.post(
            f"{stack_env['RV_KEYCLOAK_URL']}/realms/rv/protocol/openid-connect/token",
            data={
                "grant_type": "client_credentials",
                "client_id": client_id,
                "client_secret": secret,
            },
        ).json()["access_token"]
    finally:
        admin.delete_client(admin.get_client_id(client_id))


AUDIENCE_MAPPER = {
    "name": "audience rv-api",
    "protocol": "openid-connect",
    "protocolMapper": "oidc-audience-mapper",
    "config": {"included.custom.audience": "rv-api", "access.token.claim": "true"},
}


def submit_with_token(pipeline: Pipeline, token: str, url: str) -> httpx.Response:
    return httpx.post(
        f"{pipeline.injector.url}/v1/jobs",
        json={"urls": [url]},
        headers={"Authorization": f"Bearer {token}"},
        timeout=30,
    )


def nothing_archived(pipeline: Pipeline, git_servers: GitServers, url: str, before: int) -> None:
    """No request reached the git server and no bucket exists for the URL."""
    assert len(git_servers.http.requests) == before
    env = pipeline.env
    client = s3_client(env["RV_S3_ENDPOINT"], env["RV_S3_ACCESS_KEY"], env["RV_S3_SECRET_KEY"])
    assert not client.bucket_exists(bucket_for(url))


def rejected_rows(pipeline: Pipeline, url: str) -> list[db.Job]:
    with db.connect(pipeline.env["RV_DATABASE_READER_URL"]) as conn:
        return db.list_jobs(conn, repo_url=url)


class TestDeviceLogin:
    def test_login_then_submit_records_the_verified_user(
        self, pipeline: Pipeline, user_env: dict[str, str], git_servers: GitServers, name: str
    ) -> None:
        """After the device flow, `rv whoami` names the user and a submission is archived
        with that user recorded; the token file is readable by its owner only."""
        assert stat.S_IMODE(token_file(user_env).stat().st_mode) == 0o600
        whoami = rv_as(pipeline, user_env, "whoami", "--json")
        assert whoami.exit_code == 0, whoami.output
        assert json.loads(whoami.stdout)["user"] == "demo"
        assert json.loads(whoami.stdout)["roles"] == ["rv-submit"]
        git_servers.repos.create(name)
        result = rv_as(pipeline, user_env, "submit", "--wait", "--json", git_servers.http.url(name))
        assert result.exit_code == 0, result.output
        [job] = json.loads(result.stdout)
        assert (job["state"], job["submitted_by"]) == ("done", "demo")

    def test_refresh_after_the_access_token_expires(
        self, pipeline: Pipeline, user_env: dict[str, str]
    ) -> None:
        """An expired access token is refreshed silently and the new one is stored."""
        stored = json.loads(token_file(user_env).read_text())
        stored["expires_at"] = time.time() - 10
        token_file(user_env).write_text(json.dumps(stored))
        result = rv_as(pipeline, user_env, "whoami", "--json")
        assert result.exit_code == 0, result.output
        renewed = json.loads(token_file(user_env).read_text())
        assert renewed["access_token"] != stored["access_token"]
        assert renewed["expires_at"] > time.time()

    def test_logout_revokes_and_submitting_asks_to_log_in(
        self, pipeline: Pipeline, user_env: dict[str, str], stack_env: dict[str, str]
    ) -> None:
        """`rv logout` ends the session at Keycloak: the old refresh token no longer works,
        and submitting says to log in again."""
        refresh_token = json.loads(token_file(user_env).read_text())["refresh_token"]
        result = rv_as(pipeline, user_env, "logout")
        assert (result.exit_code, result.output) == (0, "Logged out.\n")
        assert not token_file(user_env).exists()
        refused = httpx.post(
            f"{stack_env['RV_KEYCLOAK_URL']}/realms/rv/protocol/openid-connect/token",
            data={
                "grant_type": "refresh_token",
                "refresh_token": refresh_token,
                "client_id": "rv-cli",
            },
        )
        assert refused.status_code == 400
        submit = rv_as(pipeline, user_env, "submit", "git://127.0.0.1:9/a.git")
        assert submit.exit_code == 1
        assert "not logged in; run `rv login`" in submit.output


class TestDevicePolling:
    """The polling loop of `rv login` against Keycloak's real token endpoint."""

    def _settings(self, pipeline: Pipeline, tmp_path: Path) -> Settings:
        return Settings.from_env({**pipeline.env, "RV_CONFIG_DIR": str(tmp_path)})

    def test_slow_down_makes_the_poll_slower(self, pipeline: Pipeline, tmp_path: Path) -> None:
        """Polling faster than asked earns `slow_down`; the interval then grows by 5 s."""
        settings = self._settings(pipeline, tmp_path)
        code = _tokens.start_device_flow(settings)
        waits: list[float] = []

        def sleep(seconds: float) -> None:
            """Too fast on purpose until the poll slows down; then approve and wait properly."""
            if seconds > code.interval and not approved:
                approve_device(code.verification_uri_complete, "demo", "demo")
                approved.append(True)
            if approved:
                time.sleep(code.interval)
            waits.append(seconds)

        approved: list[bool] = []

        tokens = _tokens.poll_device_flow(settings, code, sleep=sleep)
        assert code.interval + 5 in waits
        assert _tokens.claims(tokens.access_token)["preferred_username"] == "demo"

    def test_a_denied_login_says_so(self, pipeline: Pipeline, tmp_path: Path) -> None:
        """Denying the grant in the browser ends `rv login` with a clear message."""
        settings = self._settings(pipeline, tmp_path)
        code = _tokens.start_device_flow(settings)
        approve_device(code.verification_uri_complete, "demo", "demo", grant=False)
        with pytest.raises(_tokens.LoginFailed, match="the login was denied in the browser"):
            _tokens.poll_device_flow(settings, code, sleep=lambda _: time.sleep(code.interval))
        assert not _tokens.token_path(settings).exists()

    def test_an_expired_code_says_so(self, pipeline: Pipeline, tmp_path: Path) -> None:
        """Nobody approves before the code expires: `rv login` says to start again."""
        settings = self._settings(pipeline, tmp_path)
        code = replace(_tokens.start_device_flow(settings), expires_in=2)
        with pytest.raises(_tokens.LoginFailed, match="the code expired before the login"):
            _tokens.poll_device_flow(settings, code, sleep=lambda _: time.sleep(1))


class TestOperatorRole:
    def test_trending_needs_the_operator_role(
        self, pipeline: Pipeline, user_env: dict[str, str], git_servers: GitServers, name: str
    ) -> None:
        """`demo` may submit but is not an operator: `rv trending` is refused and nothing is
        queued; the cron service account, an operator, may."""
        from tests.github_fake import FakeGitHub, repo_item

        git_servers.repos.create(name)
        url = git_servers.http.url(name)
        github = FakeGitHub()
        try:
            github.items.append(repo_item(f"octo/{name}", url, stars=5))
            env = {**user_env, "RV_GITHUB_API_URL": github.url}
            refused = rv_as(pipeline, env, "trending", "--limit", "1")
            assert refused.exit_code == 1
            assert "not allowed: user demo lacks the role rv-operator" in refused.output
            assert [job.state for job in rejected_rows(pipeline, url)] == ["rejected"]
            allowed = pipeline.rv(
                "trending", "--limit", "1", "--json", env={"RV_GITHUB_API_URL": github.url}
            )
            assert allowed.exit_code == 0, allowed.output
        finally:
            github.stop()

    def test_retry_is_for_operators(
        self, pipeline: Pipeline, user_env: dict[str, str], git_servers: GitServers, name: str
    ) -> None:
        """A failed job is retried by an operator once the cause is gone; `demo` may not
        retry, and a job that did not fail is not retried."""
        url = git_servers.http.url(name)
        failed = pipeline.rv("submit", "--wait", "--json", url)
        [job] = json.loads(failed.stdout)
        assert job["state"] == "failed"
        refused = rv_as(pipeline, user_env, "retry", job["id"][:8])
        assert refused.exit_code == 1
        assert "not allowed: user demo lacks the role rv-operator" in refused.output
        git_servers.repos.create(name)
        retried = pipeline.rv("retry", "--wait", "--json", job["id"][:8])
        assert retried.exit_code == 0, retried.output
        [again] = json.loads(retried.stdout)
        assert (again["repo_url"], again["state"]) == (url, "done")
        not_failed = pipeline.rv("retry", again["id"])
        assert not_failed.exit_code == 1
        assert f"only failed or rejected jobs are retried, not {again['id'][:8]} (done)" in (
            not_failed.output
        )


class TestRefusedIdentities:
    def test_a_user_without_the_submit_role_is_rejected(
        self, pipeline: Pipeline, git_servers: GitServers, name: str, tmp_path: Path
    ) -> None:
        """`nobody` has a genuine token but no rv-submit role: refused, recorded as rejected
        under that user, nothing cloned or stored."""
        env = login(pipeline, tmp_path / "nobody", "nobody")
        git_servers.repos.create(name)
        url = git_servers.http.url(name)
        before = len(git_servers.http.requests)
        result = rv_as(pipeline, env, "submit", url)
        assert result.exit_code == 1
        assert "not allowed: user nobody lacks the role rv-submit" in result.output
        [row] = rejected_rows(pipeline, url)
        assert (row.state, row.submitted_by) == ("rejected", "nobody")
        time.sleep(1)
        nothing_archived(pipeline, git_servers, url, before)

    def test_a_token_signed_by_another_key_is_rejected(
        self, pipeline: Pipeline, git_servers: GitServers, name: str, stack_env: dict[str, str]
    ) -> None:
        """Right claims, real key id, wrong key: the signature check refuses it."""
        issuer = f"{stack_env['RV_KEYCLOAK_URL']}/realms/rv"
        keys = httpx.get(f"{issuer}/protocol/openid-connect/certs").json()["keys"]
        kid = next(k["kid"] for k in keys if k.get("use") == "sig" and k["alg"] == "RS256")
        forger = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        now = int(time.time())
        claims = {
            "iss": issuer,
            "aud": ["rv-api"],
            "sub": str(uuid.uuid4()),
            "iat": now,
            "exp": now + 300,
            "preferred_username": "mallory",
            "realm_access": {"roles": ["rv-submit"]},
        }
        forged = jwt.encode(claims, forger, algorithm="RS256", headers={"kid": kid})
        git_servers.repos.create(name)
        url = git_servers.http.url(name)
        before = len(git_servers.http.requests)
        response = submit_with_token(pipeline, forged, url)
        assert response.status_code == 401
        assert response.json()["error"] == "token signature does not verify"
        unknown_kid = jwt.encode(claims, forger, algorithm="RS256", headers={"kid": "nope"})
        response = submit_with_token(pipeline, unknown_kid, url)
        assert response.status_code == 401
        assert "not signed by a key of" in response.json()["error"]
        rows = rejected_rows(pipeline, url)
        assert [row.state for row in rows] == ["rejected", "rejected"]
        assert all(row.submitted_by is None for row in rows)
        nothing_archived(pipeline, git_servers, url, before)

    def test_a_token_for_another_audience_is_rejected(
        self, pipeline: Pipeline, admin: KeycloakAdmin, stack_env: dict[str, str]
    ) -> None:
        """A genuine token of the realm without the rv-api audience is refused."""
        with service_client(admin, stack_env, "other", roles=["rv-submit"]) as token:
            response = submit_with_token(pipeline, token, "https://example.org/x.git")
        assert response.status_code == 401
        assert response.json()["error"] == "token is not meant for rv-api"

    def test_an_expired_token_is_rejected(
        self, pipeline: Pipeline, admin: KeycloakAdmin, stack_env: dict[str, str]
    ) -> None:
        """A token whose lifetime ran out is refused with a clear reason."""
        with service_client(
            admin,
            stack_env,
            "short",
            roles=["rv-submit"],
            attributes={"access.token.lifespan": "2"},
            protocolMappers=[AUDIENCE_MAPPER],
        ) as token:
            time.sleep(9)  # lifetime 2 s plus the verifier's 5 s leeway
            response = submit_with_token(pipeline, token, "https://example.org/x.git")
        assert response.status_code == 401
        assert response.json()["error"] == "token expired; log in again (`rv login`)"

    def test_no_token_at_all(self, pipeline: Pipeline) -> None:
        """The intake refuses anonymous submissions."""
        response = httpx.post(
            f"{pipeline.injector.url}/v1/jobs", json={"urls": ["https://example.org/a.git"]}
        )
        assert response.status_code == 401
        assert response.json()["error"] == "no bearer token; run `rv login` first"


class TestSecretsStayOut:
    def test_tokens_appear_in_no_log_row_or_message(
        self, pipeline: Pipeline, user_env: dict[str, str], git_servers: GitServers, name: str
    ) -> None:
        """The user's access and refresh tokens are in no daemon log, job row or message."""
        git_servers.repos.create(name)
        result = rv_as(pipeline, user_env, "submit", "--wait", git_servers.http.url(name))
        assert result.exit_code == 0, result.output
        stored = json.loads(token_file(user_env).read_text())
        secrets = [
            stored["access_token"],
            stored["refresh_token"],
            pipeline.env["RV_CRON_CLIENT_SECRET"],
        ]
        logs = pipeline.injector.log_text() + "".join(w.log_text() for w in pipeline.workers)
        with db.connect(pipeline.env["RV_DATABASE_READER_URL"]) as conn:
            rows = json.dumps(conn.execute("SELECT row_to_json(jobs) FROM jobs").fetchall())
        messages = topic_text(pipeline.env)
        for secret in secrets:
            for part in secret.split("."):  # a JWT's pieces, or the whole opaque secret
                if len(part) > 20:
                    assert part not in logs
                    assert part not in rows
                    assert part not in messages
        assert "Bearer" not in logs
