"""The shared core on its own: URLs, bucket names, messages, settings. No services."""

from __future__ import annotations

import json
import re

import pytest

from repovault.buckets import bucket_for
from repovault.messages import DispatchedJob, MalformedMessage, PendingJob, decode, encode
from repovault.settings import Settings, SettingsError
from repovault.urls import InvalidRepoUrl, check_host_policy, parse_repo_url


class TestParseRepoUrl:
    @pytest.mark.parametrize(
        ("raw", "normalised"),
        [
            ("https://github.com/Owner/Repo.git", "https://github.com/Owner/Repo.git"),
            ("https://GitHub.com/owner/repo/", "https://github.com/owner/repo"),
            ("git://127.0.0.1:9418/demo.git", "git://127.0.0.1:9418/demo.git"),
            (
                "ssh://git@example.org:2222/owner/repo.git",
                "ssh://git@example.org:2222/owner/repo.git",
            ),
            ("git@github.com:owner/repo.git", "ssh://git@github.com/owner/repo.git"),
            ("  https://example.org/a.git  ", "https://example.org/a.git"),
        ],
    )
    def test_accepted_forms_are_normalised(self, raw: str, normalised: str) -> None:
        """Supported URLs come back in one canonical form, the job's key."""
        assert parse_repo_url(raw).url == normalised

    def test_a_password_never_appears_in_the_error(self) -> None:
        """Credentials in a URL are refused and masked in the message."""
        with pytest.raises(InvalidRepoUrl) as caught:
            parse_repo_url("https://alice:hunter2@example.org/r.git")
        assert "hunter2" not in str(caught.value)
        assert "alice:***@" in str(caught.value)

    @pytest.mark.parametrize(
        "raw",
        [
            "",
            "file:///etc",
            "ext::sh -c x",
            "fd::17",
            "/local/path",
            "https://example.org",
            "https://example.org/r?x=1",
            "https://ex ample.org/r",
            "https://example.org:99999/r",
        ],
    )
    def test_refused_forms(self, raw: str) -> None:
        """Anything git could use to run a command or read a local path is refused."""
        with pytest.raises(InvalidRepoUrl):
            parse_repo_url(raw)


class TestHostPolicy:
    def test_private_addresses_need_explicit_permission(self) -> None:
        """A host resolving to a private address is refused unless the operator allows it."""
        repo = parse_repo_url("https://internal.example/r.git")
        with pytest.raises(InvalidRepoUrl, match=re.escape("non-public address 10.0.0.5")):
            check_host_policy(repo, ["*"], [], resolve=lambda _: ["10.0.0.5"])
        check_host_policy(repo, ["*"], ["internal.example"], resolve=lambda _: ["10.0.0.5"])
        check_host_policy(repo, ["*"], ["10.0.0.5"], resolve=lambda _: ["10.0.0.5"])

    def test_public_addresses_pass(self) -> None:
        """A public address needs no permission."""
        repo = parse_repo_url("https://example.org/r.git")
        check_host_policy(repo, ["*"], [], resolve=lambda _: ["93.184.215.14"])

    def test_the_allow_list_is_checked_first(self) -> None:
        """Hosts outside RV_ALLOWED_HOSTS are refused without resolving anything."""
        repo = parse_repo_url("https://example.org/r.git")
        with pytest.raises(InvalidRepoUrl, match=re.escape("host example.org is not allowed")):
            check_host_policy(repo, ["github.com"], [], resolve=lambda _: pytest.fail("resolved"))


class TestBucketFor:
    def test_names_are_valid_s3_bucket_names(self) -> None:
        """3-63 characters of lowercase letters, digits and hyphens, alphanumeric ends."""
        for url in [
            "https://github.com/Owner/Repo.git",
            "ssh://git@h/" + "x" * 300,
            "git://127.0.0.1:9418/ñandú.git",
            "https://h/---",
        ]:
            name = bucket_for(url)
            assert re.fullmatch(r"[a-z0-9][a-z0-9-]{1,61}[a-z0-9]", name), name

    def test_names_are_deterministic_and_do_not_collide(self) -> None:
        """The same URL gives the same bucket; look-alike URLs get different ones."""
        assert bucket_for("https://h/a/b-c") == bucket_for("https://h/a/b-c")
        assert bucket_for("https://h/a/b-c") != bucket_for("https://h/a-b/c")
        assert bucket_for("https://h/" + "x" * 200 + "1") != bucket_for(
            "https://h/" + "x" * 200 + "2"
        )


class TestMessages:
    def test_round_trip(self) -> None:
        """What is encoded decodes to the same message."""
        message = PendingJob("1b4e28ba-2fa1-11d2-883f-0016d3cca427", "https://h/r", "alice")
        assert decode(PendingJob, encode(message)) == message

    @pytest.mark.parametrize(
        ("payload", "reason"),
        [
            (b"", "empty message"),
            (b"\xff", "not JSON"),
            (b"[]", "not a JSON object"),
            (b'{"v": 2}', "unsupported schema version 2"),
            (b'{"v": 1, "job_id": "x", "repo_url": "u"}', "missing field 'bucket'"),
            (
                b'{"v": 1, "job_id": "x", "repo_url": "u", "bucket": "b"}',
                "job_id 'x' is not a UUID",
            ),
            (
                b'{"v": 1, "job_id": 5, "repo_url": "u", "bucket": "b"}',
                "field 'job_id' should be str",
            ),
        ],
    )
    def test_malformed_payloads_say_why(self, payload: bytes, reason: str) -> None:
        """Each malformed payload raises MalformedMessage naming the problem."""
        with pytest.raises(MalformedMessage, match=re.escape(reason)):
            decode(DispatchedJob, payload)

    def test_messages_carry_no_token_field(self) -> None:
        """The schema has no place for credentials: only ids, URLs, users and outcomes."""
        document = json.loads(encode(PendingJob("1b4e28ba-2fa1-11d2-883f-0016d3cca427", "u", "a")))
        assert set(document) == {"v", "job_id", "repo_url", "submitted_by"}


class TestSettings:
    def test_every_field_has_its_variable(self) -> None:
        """RV_<FIELD> sets each field; lists split on commas; numbers are checked."""
        settings = Settings.from_env(
            {
                "RV_ALLOWED_HOSTS": "github.com, gitlab.com",
                "RV_MAX_REPO_BYTES": "1000",
                "RV_KEYCLOAK_URL": "http://kc:8080/",
            }
        )
        assert settings.allowed_hosts == ("github.com", "gitlab.com")
        assert settings.max_repo_bytes == 1000
        assert settings.issuer == "http://kc:8080/realms/rv"
        assert "RV_DATABASE_URL" in Settings.variables()

    def test_bad_numbers_name_the_variable(self) -> None:
        """A malformed value says which variable and what it should be."""
        with pytest.raises(SettingsError, match="RV_MAX_REPO_BYTES must be a whole number"):
            Settings.from_env({"RV_MAX_REPO_BYTES": "lots"})

    def test_secrets_are_not_in_the_repr(self) -> None:
        """Printing settings never shows passwords or keys."""
        settings = Settings(s3_secret_key="topsecret", database_url="postgresql://u:pw@h/db")
        assert "topsecret" not in repr(settings)
        assert "pw@" not in repr(settings)

    def test_missing_settings_name_the_variables(self) -> None:
        """require() lists what to set."""
        with pytest.raises(SettingsError, match="RV_DATABASE_URL, RV_S3_SECRET_KEY not set"):
            Settings().require("database_url", "s3_secret_key")
