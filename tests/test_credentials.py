"""Private repositories: HTTPS tokens and SSH keys configured on the worker, never carried
in job rows, messages, buckets or logs; host keys checked, never trusted blindly."""

from __future__ import annotations

import getpass
import json
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from repovault import db
from repovault.buckets import bucket_for
from repovault.snapshots import s3_client
from tests.conftest import GitServers, Pipeline, start_pipeline
from tests.daemons import topic_text
from tests.gitserve import SmartHttp, refs_of
from tests.sshserve import SshServer, keypair

TOKEN = "ghp_" + secrets.token_hex(16)
USER = getpass.getuser()


@dataclass
class Private:
    http: SmartHttp
    ssh: SshServer
    trusted: Pipeline  # right token, right key, right known_hosts
    wrong_key: Pipeline  # wrong token, wrong key
    unknown_host: Pipeline  # right key, known_hosts without this server


@pytest.fixture(scope="module")
def private(
    stack_env: dict[str, str], git_servers: GitServers, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Private]:
    base = tmp_path_factory.mktemp("private")
    key = keypair(base / "worker_key")
    other_key = keypair(base / "other_key")
    ssh = SshServer(base / "sshd", key)
    known = base / "known_hosts"
    known.write_text(ssh.known_hosts_line())
    stranger = keypair(base / "stranger_host_key")
    unknown = base / "known_hosts_other"
    unknown.write_text(
        f"[127.0.0.1]:{ssh.port} "
        + " ".join(Path(f"{stranger}.pub").read_text().split()[:2])
        + "\n"
    )
    good_netrc = base / "netrc"
    good_netrc.write_text(f"machine 127.0.0.1 login alice password {TOKEN}\n")
    bad_netrc = base / "netrc-bad"
    bad_netrc.write_text("machine 127.0.0.1 login alice password wrong-token\n")
    for path in (good_netrc, bad_netrc):
        path.chmod(0o600)
    http = SmartHttp(git_servers.repos.root, credentials=("alice", TOKEN))
    trusted = start_pipeline(
        stack_env,
        base / "trusted",
        RV_GIT_CREDENTIALS_FILE=str(good_netrc),
        RV_SSH_KEY_FILE=str(key),
        RV_SSH_KNOWN_HOSTS_FILE=str(known),
    )
    wrong = start_pipeline(
        stack_env,
        base / "wrong",
        RV_GIT_CREDENTIALS_FILE=str(bad_netrc),
        RV_SSH_KEY_FILE=str(other_key),
        RV_SSH_KNOWN_HOSTS_FILE=str(known),
    )
    unknown_host = start_pipeline(
        stack_env, base / "unknown", RV_SSH_KEY_FILE=str(key), RV_SSH_KNOWN_HOSTS_FILE=str(unknown)
    )
    yield Private(http, ssh, trusted, wrong, unknown_host)
    for pipeline in (trusted, wrong, unknown_host):
        pipeline.stop()
    http.stop()
    ssh.stop()


def archive(pipeline: Pipeline, url: str) -> dict[str, object]:
    result = pipeline.rv("submit", "--wait", "--json", "--timeout", "120", url)
    assert result.exit_code in (0, 3), result.output
    [job] = json.loads(result.stdout)
    assert isinstance(job, dict)
    return job


class TestPrivateHttps:
    def test_archived_with_the_configured_token(
        self, private: Private, git_servers: GitServers, name: str, tmp_path: Path
    ) -> None:
        """The worker's netrc token opens the repository; it restores identically."""
        source = git_servers.repos.create(name, branches=2, tags=1)
        job = archive(private.trusted, private.http.url(name))
        assert job["state"] == "done", job
        result = private.trusted.rv("restore", str(job["id"]), str(tmp_path / "restored"))
        assert result.exit_code == 0, result.output
        assert refs_of(tmp_path / "restored") == refs_of(source)
        assert any(h.get("authorization", "").startswith("Basic ") for h in private.http.requests)

    def test_a_refused_token_fails_with_a_clear_reason(
        self, private: Private, git_servers: GitServers, name: str
    ) -> None:
        """A wrong token ends the job failed, saying the token was refused."""
        git_servers.repos.create(name)
        job = archive(private.wrong_key, private.http.url(name))
        assert job["state"] == "failed"
        assert job[
            "error"
        ] == "the token configured for 127.0.0.1 was refused for " + private.http.url(name)

    def test_the_token_is_nowhere_to_be_found(
        self, private: Private, git_servers: GitServers, name: str
    ) -> None:
        """Not in the bucket, the job rows, the topics or the daemons' logs."""
        git_servers.repos.create(name, files={"a.txt": "a\n"})
        url = private.http.url(name)
        job = archive(private.trusted, url)
        assert job["state"] == "done"
        env = private.trusted.env
        client = s3_client(env["RV_S3_ENDPOINT"], env["RV_S3_ACCESS_KEY"], env["RV_S3_SECRET_KEY"])
        for item in client.list_objects(bucket_for(url), recursive=True):
            body = client.get_object(bucket_for(url), item.object_name).read()
            assert TOKEN.encode() not in body, item.object_name
        with db.connect(env["RV_DATABASE_READER_URL"]) as conn:
            rows = json.dumps(conn.execute("SELECT row_to_json(jobs) FROM jobs").fetchall())
        assert TOKEN not in rows
        logs = private.trusted.injector.log_text() + private.trusted.workers[0].log_text()
        assert TOKEN not in logs
        assert TOKEN not in topic_text(private.trusted.env)


class TestSsh:
    def test_archived_with_the_right_key(
        self, private: Private, git_servers: GitServers, name: str, tmp_path: Path
    ) -> None:
        """ssh:// with the worker's key and a known host key archives and restores."""
        source = git_servers.repos.create(name, branches=2, tags=2)
        job = archive(private.trusted, private.ssh.url(source, USER))
        assert job["state"] == "done", job
        result = private.trusted.rv("restore", str(job["id"]), str(tmp_path / "restored"))
        assert result.exit_code == 0, result.output
        assert refs_of(tmp_path / "restored") == refs_of(source)

    def test_a_wrong_key_is_refused(
        self, private: Private, git_servers: GitServers, name: str
    ) -> None:
        """A key the server does not accept ends the job failed, naming the key setting."""
        source = git_servers.repos.create(name)
        job = archive(private.wrong_key, private.ssh.url(source, USER))
        assert job["state"] == "failed"
        assert "refused the worker's SSH key (RV_SSH_KEY_FILE)" in str(job["error"])

    def test_an_unknown_host_key_is_refused(
        self, private: Private, git_servers: GitServers, name: str
    ) -> None:
        """A server whose host key is not the known one is never trusted."""
        source = git_servers.repos.create(name)
        job = archive(private.unknown_host, private.ssh.url(source, USER))
        assert job["state"] == "failed"
        assert "SSH host key of 127.0.0.1 is not in the worker's known_hosts" in str(job["error"])

    def test_without_ssh_settings_the_job_says_what_to_set(
        self, pipeline: Pipeline, private: Private, git_servers: GitServers, name: str
    ) -> None:
        """A worker with no SSH key configured fails the job, naming RV_SSH_KEY_FILE."""
        source = git_servers.repos.create(name)
        job = archive(pipeline, private.ssh.url(source, USER))
        assert job["state"] == "failed"
        assert "the worker has no SSH key (set RV_SSH_KEY_FILE)" in str(job["error"])
