"""The archive pipeline end to end: rv submit -> intake -> pending -> injector ->
in-progress -> worker -> MinIO, every step in PostgreSQL. Real services throughout."""

from __future__ import annotations

import json
import os
import signal
import time
import uuid
from pathlib import Path

import httpx
import pytest
from confluent_kafka import Consumer, Producer

from repovault import db
from repovault.buckets import bucket_for
from repovault.snapshots import list_manifests, s3_client
from tests.conftest import GitServers, Pipeline, start_pipeline
from tests.daemons import read_topics
from tests.gitserve import git, iter_files, refs_of


def submit_and_wait(
    pipeline: Pipeline, *urls: str, timeout: float = 120
) -> list[dict[str, object]]:
    result = pipeline.rv("submit", "--wait", "--json", "--timeout", str(timeout), *urls)
    assert result.exit_code in (0, 3), result.output
    jobs: list[dict[str, object]] = json.loads(result.stdout)
    return jobs


def restored_matches(pipeline: Pipeline, source: Path, target: str, dest: Path) -> None:
    """Restore ``target`` into ``dest`` and compare refs and the checked-out files with a
    plain `git clone` of the source."""
    result = pipeline.rv("restore", target, str(dest))
    assert result.exit_code == 0, result.output
    assert refs_of(dest) == refs_of(source)
    assert set(git("rev-parse", "--all", cwd=dest).split()) == set(
        git("rev-parse", "--all", cwd=source).split()
    )
    reference = dest.parent / f"{dest.name}-reference"
    git("clone", "--quiet", str(source), str(reference))
    assert list(iter_files(dest)) == list(iter_files(reference))


def storage(pipeline: Pipeline):  # type: ignore[no-untyped-def]
    env = pipeline.env
    return s3_client(env["RV_S3_ENDPOINT"], env["RV_S3_ACCESS_KEY"], env["RV_S3_SECRET_KEY"])


class TestArchiveAndRestore:
    def test_a_rich_repository_over_git_daemon_round_trips(
        self, pipeline: Pipeline, git_servers: GitServers, name: str, tmp_path: Path
    ) -> None:
        """Branches, annotated and light tags, binary files, symlinks and non-ASCII paths
        all come back from the bucket exactly as they were."""
        source = git_servers.repos.create(
            name,
            files={
                "README.md": "# demo\n",
                "src/main.py": "print('hi')\n",
                "data/blob.bin": os.urandom(200_000),
                "docs/ñandú/über.txt": "non-ascii path\n",
                "docs/日本語.md": "日本語\n",
            },
            symlinks={"link-to-readme": "README.md", "dangling": "../outside/nowhere"},
            branches=12,
            tags=6,
        )
        [job] = submit_and_wait(pipeline, git_servers.daemon.url(name))
        assert job["state"] == "done", job
        assert job["submitted_by"] == "service-account-rv-cron"
        assert job["head_commit"] == refs_of(source)["refs/heads/main"]
        for stamp in (
            "creation_timestamp",
            "injector_timestamp",
            "worker_start_timestamp",
            "worker_finishing_timestamp",
        ):
            assert job[stamp] is not None
        assert job["creation_timestamp"] <= job["injector_timestamp"]  # type: ignore[operator]
        assert job["injector_timestamp"] <= job["worker_start_timestamp"]  # type: ignore[operator]
        assert job["worker_start_timestamp"] <= job["worker_finishing_timestamp"]  # type: ignore[operator]
        restored_matches(pipeline, source, git_servers.daemon.url(name), tmp_path / "restored")
        assert os.readlink(tmp_path / "restored" / "dangling") == "../outside/nowhere"

    def test_smart_http_round_trips_and_restore_by_job_id(
        self, pipeline: Pipeline, git_servers: GitServers, name: str, tmp_path: Path
    ) -> None:
        """A repository served over git's smart HTTP protocol is archived and restored by
        the job id rv printed."""
        source = git_servers.repos.create(name, branches=3, tags=2)
        [job] = submit_and_wait(pipeline, git_servers.http.url(name))
        assert job["state"] == "done", job
        restored_matches(pipeline, source, str(job["id"]), tmp_path / "restored")

    def test_bucket_holds_bundle_files_and_manifest(
        self, pipeline: Pipeline, git_servers: GitServers, name: str
    ) -> None:
        """The bucket has the bundle, each default-branch file, and a manifest whose file
        list carries sizes and sha256 sums; the symlink is stored as its target."""
        git_servers.repos.create(
            name, files={"a.txt": "alpha\n", "b/c.txt": "gamma\n"}, symlinks={"l": "a.txt"}
        )
        url = git_servers.daemon.url(name)
        [job] = submit_and_wait(pipeline, url)
        client = storage(pipeline)
        bucket = bucket_for(url)
        assert job["bucket"] == bucket
        [manifest] = list_manifests(client, bucket)
        assert {f.path: f.size for f in manifest.files} == {"a.txt": 6, "b/c.txt": 6, "l": 5}
        names = {o.object_name for o in client.list_objects(bucket, recursive=True)}
        snapshot = f"snapshots/{job['snapshot']}/"
        assert {
            f"{snapshot}repo.bundle",
            f"{snapshot}manifest.json",
            f"{snapshot}files/a.txt",
            f"{snapshot}files/b/c.txt",
            f"{snapshot}files/l",
            "latest",
        } == names
        link = client.get_object(bucket, f"{snapshot}files/l")
        assert link.read() == b"a.txt"
        assert job["bytes_stored"] == manifest.bytes_stored

    def test_an_empty_repository_is_archived_and_restores_empty(
        self, pipeline: Pipeline, git_servers: GitServers, name: str, tmp_path: Path
    ) -> None:
        """An empty repository is a valid snapshot with no refs and no bundle."""
        git_servers.repos.create(name, empty=True)
        [job] = submit_and_wait(pipeline, git_servers.daemon.url(name))
        assert job["state"] == "done", job
        assert job["head_commit"] is None
        result = pipeline.rv("restore", git_servers.daemon.url(name), str(tmp_path / "empty"))
        assert result.exit_code == 0, result.output
        assert refs_of(tmp_path / "empty") == {}

    def test_large_files_are_streamed(
        self, pipeline: Pipeline, git_servers: GitServers, name: str, tmp_path: Path
    ) -> None:
        """A file above the streaming threshold is stored whole and restores byte for byte."""
        big = os.urandom(20 * 1024 * 1024)
        source = git_servers.repos.create(name, files={"big.bin": big})
        [job] = submit_and_wait(pipeline, git_servers.daemon.url(name))
        assert job["state"] == "done", job
        client = storage(pipeline)
        stored = client.stat_object(
            str(job["bucket"]), f"snapshots/{job['snapshot']}/files/big.bin"
        )
        assert stored.size == len(big)
        restored_matches(pipeline, source, str(job["id"]), tmp_path / "restored")


class TestSnapshots:
    def test_unchanged_then_changed(
        self, pipeline: Pipeline, git_servers: GitServers, name: str
    ) -> None:
        """Archiving an unchanged repository uploads nothing; a new commit makes a second
        snapshot in the same bucket, which becomes the latest."""
        git_servers.repos.create(name)
        url = git_servers.daemon.url(name)
        [first] = submit_and_wait(pipeline, url)
        [again] = submit_and_wait(pipeline, url)
        assert (first["state"], again["state"]) == ("done", "unchanged")
        assert again["snapshot"] == first["snapshot"]
        assert again["bytes_stored"] == 0
        git_servers.repos.commit(name, "new.txt", "new\n")
        [changed] = submit_and_wait(pipeline, url)
        assert changed["state"] == "done"
        assert changed["snapshot"] != first["snapshot"]
        manifests = list_manifests(storage(pipeline), bucket_for(url))
        assert [m.snapshot for m in manifests] == [first["snapshot"], changed["snapshot"]]


class TestFailures:
    def test_a_repository_deleted_before_the_clone_fails_with_the_reason(
        self, pipeline: Pipeline, git_servers: GitServers, name: str
    ) -> None:
        """The job ends failed, saying the repository does not exist; --wait exits 3."""
        git_servers.repos.create(name)
        git_servers.repos.delete(name)
        result = pipeline.rv("submit", "--wait", "--json", git_servers.http.url(name))
        assert result.exit_code == 3
        [job] = json.loads(result.stdout)
        assert job["state"] == "failed"
        assert "does not exist" in job["error"]

    def test_a_repository_over_the_size_cap_fails(
        self, pipeline: Pipeline, git_servers: GitServers, name: str
    ) -> None:
        """Past RV_MAX_REPO_BYTES the clone is abandoned and the job says why."""
        git_servers.repos.create(name, files={"huge.bin": os.urandom(48 * 1024 * 1024)})
        [job] = submit_and_wait(pipeline, git_servers.daemon.url(name))
        assert job["state"] == "failed"
        assert "exceeds the size cap" in str(job["error"])
        assert not list(Path(pipeline.env["RV_WORK_DIR"]).iterdir()), "temporary clone left"

    def test_a_repository_needing_credentials_fails(
        self, pipeline: Pipeline, tmp_path: Path, git_servers: GitServers, name: str
    ) -> None:
        """A server that answers 401 ends the job failed with a reason about credentials."""
        from tests.gitserve import SmartHttp

        git_servers.repos.create(name)
        locked = SmartHttp(git_servers.repos.root, credentials=("alice", "s3cret"))
        try:
            [job] = submit_and_wait(pipeline, locked.url(name))
        finally:
            locked.stop()
        assert job["state"] == "failed"
        assert "needs credentials" in str(job["error"])


class TestDuplicates:
    def test_a_second_submission_while_the_first_runs_is_a_duplicate(
        self, pipeline: Pipeline, git_servers: GitServers, name: str
    ) -> None:
        """The second job ends `duplicate`, naming the job already running; only one
        snapshot is made."""
        git_servers.repos.create(name)
        url = git_servers.slow_http.url(name)
        jobs = submit_and_wait(pipeline, url, url)
        states = sorted(str(job["state"]) for job in jobs)
        assert states == ["done", "duplicate"]
        duplicate = next(job for job in jobs if job["state"] == "duplicate")
        done = next(job for job in jobs if job["state"] == "done")
        assert f"already queued or running as job {done['id']}" == duplicate["error"]
        assert len(list_manifests(storage(pipeline), bucket_for(url))) == 1


class TestBadInput:
    @pytest.mark.parametrize(
        ("url", "message"),
        [
            ("file:///etc/passwd", "file:///etc/passwd: scheme 'file' is not supported"),
            ("ext::sh -c id", "ext::sh -c id: URLs cannot contain spaces"),
            ("ext::ssh", "ext::ssh: git remote helpers (transport::address) are not allowed"),
            ("/srv/repo.git", "/srv/repo.git: not a URL (local paths are not archived)"),
            ("https://", "https://: the URL has no host"),
            ("https://user:pw@example.org/r.git", "credentials do not belong in the URL"),
            ("https://10.1.2.3/r.git", "resolves to the non-public address 10.1.2.3"),
            ("https://exa_mple.org/r.git", "'exa_mple.org' is not a valid host name"),
        ],
    )
    def test_refused_urls_say_why_and_queue_nothing(
        self, pipeline: Pipeline, url: str, message: str
    ) -> None:
        """Each refused URL gets a clear message, exit code 1, and no job row at all."""
        with db.connect(pipeline.env["RV_DATABASE_READER_URL"]) as conn:
            before = conn.execute("SELECT count(*) FROM jobs").fetchone()
            result = pipeline.rv("submit", url)
            after = conn.execute("SELECT count(*) FROM jobs").fetchone()
        assert result.exit_code == 1
        assert message in result.output
        assert "nothing was queued" in result.output
        assert "pw@" not in result.output
        assert before == after

    def test_one_bad_url_in_a_list_queues_none(self, pipeline: Pipeline, tmp_path: Path) -> None:
        """Lists are all or nothing: one bad line and nothing from the file is queued."""
        listing = tmp_path / "urls.txt"
        listing.write_text("# cron list\nhttps://example.org/a.git\n\nftp://example.org/b\n")
        result = pipeline.rv("submit", "--file", str(listing))
        assert result.exit_code == 1
        assert "scheme 'ftp' is not supported" in result.output

    def test_urls_from_stdin_are_read_too(self, pipeline: Pipeline) -> None:
        """`rv submit -` reads the list from stdin, with the same all-or-nothing check."""
        result = pipeline.rv("submit", "-", input="https://example.org/a.git\nnot a url\n")
        assert result.exit_code == 1
        assert "not a url: URLs cannot contain spaces or control characters" in result.output

    def test_no_urls_at_all(self, pipeline: Pipeline) -> None:
        """Nothing to submit is an error that says how to give URLs."""
        result = pipeline.rv("submit")
        assert result.exit_code == 1
        assert "no repository URLs given; pass URLs, or --file F / - for a list" in result.output

    def test_hosts_outside_the_allow_list_are_refused(self, pipeline: Pipeline) -> None:
        """RV_ALLOWED_HOSTS restricts where repositories may come from."""
        result = pipeline.rv(
            "submit", "https://example.org/a.git", env={"RV_ALLOWED_HOSTS": "github.com"}
        )
        assert result.exit_code == 1
        assert "host example.org is not allowed; allowed hosts are github.com" in result.output


class TestPoisonMessages:
    def test_malformed_messages_go_to_the_dead_letter_topic(
        self, pipeline: Pipeline, git_servers: GitServers, name: str
    ) -> None:
        """Garbage on `pending` and `in-progress`, and a well-formed message for a job that
        never came through the intake, are dead-lettered; the daemons carry on."""
        prefix = pipeline.env["RV_TOPIC_PREFIX"]
        producer = Producer({"bootstrap.servers": pipeline.env["RV_KAFKA_BOOTSTRAP"]})
        forged = json.dumps(
            {
                "v": 1,
                "job_id": str(uuid.uuid4()),
                "repo_url": "git://x/y",
                "submitted_by": "mallory",
            }
        ).encode()
        producer.produce(f"{prefix}pending", b"\xff not json")
        producer.produce(f"{prefix}in-progress", b'{"v": 1, "job_id": "nope"}')
        producer.produce(f"{prefix}pending", forged)
        producer.flush(10)
        consumer = Consumer(
            {
                "bootstrap.servers": pipeline.env["RV_KAFKA_BOOTSTRAP"],
                "group.id": f"dlq-{uuid.uuid4()}",
                "auto.offset.reset": "earliest",
            }
        )
        consumer.subscribe([f"{prefix}dead-letter"])
        reasons: list[str] = []
        deadline = time.monotonic() + 60
        while len(reasons) < 3 and time.monotonic() < deadline:
            message = consumer.poll(0.5)
            if message is not None and not message.error():
                headers = dict(message.headers() or [])
                reasons.append(headers["rv-reason"].decode())
        consumer.close()
        assert any(r.startswith("malformed: not JSON") for r in reasons), reasons
        assert any("job_id 'nope' is not a UUID" in r or "missing field" in r for r in reasons)
        assert any("jobs enter only through the intake" in r for r in reasons), reasons
        git_servers.repos.create(name)
        [job] = submit_and_wait(pipeline, git_servers.daemon.url(name))
        assert job["state"] == "done"


def submit_until_running(pipeline: Pipeline, conn: db.Connection, url: str) -> db.Job:
    """Submit ``url`` and return its job once a worker has claimed it."""
    submitted = pipeline.rv("submit", "--json", url)
    assert submitted.exit_code == 0, submitted.output
    [job_id] = [uuid.UUID(item["id"]) for item in json.loads(submitted.stdout)]
    deadline = time.monotonic() + 30
    while (job := db.get_job(conn, job_id)) is None or job.state != "running":
        assert time.monotonic() < deadline, "the job never started"
        time.sleep(0.05)
    return job


class TestKilledWorker:
    def test_a_job_held_by_a_killed_worker_is_finished_by_another(
        self, stack_env: dict[str, str], git_servers: GitServers, name: str, tmp_path: Path
    ) -> None:
        """SIGKILL the worker mid-clone: the job is redelivered to the other worker of the
        group, which finishes it; one job row, one snapshot, two attempts."""
        own = start_pipeline(stack_env, tmp_path, workers=2)
        try:
            git_servers.repos.create(name)
            url = git_servers.slow_http.url(name)
            with db.connect(own.env["RV_DATABASE_READER_URL"]) as conn:
                job = submit_until_running(own, conn, url)
                job_id = str(job.id)
                holder = next(w for w in own.workers if job.worker_id.endswith(f"-{w.process.pid}"))
                holder.stop(signal.SIGKILL)
                deadline = time.monotonic() + 90
                while not (job := db.require_job(conn, uuid.UUID(job_id))).state.is_final:
                    assert time.monotonic() < deadline, "the job was never finished"
                    time.sleep(0.2)
            assert job.state == "done", job
            assert job.attempts == 2
            assert not job.worker_id.endswith(f"-{holder.process.pid}")
            assert len(list_manifests(storage(own), bucket_for(url))) == 1
        finally:
            own.stop()

    def test_sigterm_lets_the_worker_finish_its_job(
        self, stack_env: dict[str, str], git_servers: GitServers, name: str, tmp_path: Path
    ) -> None:
        """A worker asked to stop mid-job finishes that job first, then exits 0."""
        own = start_pipeline(stack_env, tmp_path, workers=1)
        try:
            git_servers.repos.create(name)
            with db.connect(own.env["RV_DATABASE_READER_URL"]) as conn:
                job = submit_until_running(own, conn, git_servers.slow_http.url(name))
                assert own.workers[0].stop(signal.SIGTERM) == 0
                assert db.require_job(conn, job.id).state == "done"
        finally:
            own.stop()


class TestTransientFailures:
    def test_a_worker_without_its_database_retries_and_loses_nothing(
        self, stack_env: dict[str, str], git_servers: GitServers, name: str, tmp_path: Path
    ) -> None:
        """With PostgreSQL out of reach the worker reports unhealthy and keeps retrying
        without committing; a worker that can reach it later finishes the same job."""
        own = start_pipeline(stack_env, tmp_path, workers=0)
        try:
            broken = own.add_worker(
                "broken", RV_DATABASE_URL="postgresql://rv_writer:x@127.0.0.1:9/rv"
            )
            git_servers.repos.create(name)
            submitted = own.rv("submit", "--json", git_servers.daemon.url(name))
            [job_id] = [uuid.UUID(item["id"]) for item in json.loads(submitted.stdout)]
            deadline = time.monotonic() + 30
            while httpx.get(f"{broken.url}/healthz").status_code != 503:
                assert time.monotonic() < deadline, "the worker never noticed"
                time.sleep(0.2)
            assert "transient failure, retrying" in broken.log_text()
            assert broken.stop() == 0
            own.add_worker("healthy")
            with db.connect(own.env["RV_DATABASE_READER_URL"]) as conn:
                deadline = time.monotonic() + 60
                while not (job := db.require_job(conn, job_id)).state.is_final:
                    assert time.monotonic() < deadline, "the job was lost"
                    time.sleep(0.2)
            assert job.state == "done"
            assert 'rv_worker_queue_lag{topic="' in own.extra[-1].metrics()
        finally:
            own.stop()

    def test_a_daemon_started_before_kafka_waits_for_it(
        self, pipeline: Pipeline, tmp_path: Path
    ) -> None:
        """No broker yet: the worker logs that it waits, stays up, and stops cleanly."""
        from tests.daemons import Daemon

        early = Daemon(
            "worker", {**pipeline.env, "RV_KAFKA_BOOTSTRAP": "127.0.0.1:9"}, tmp_path, "w"
        )
        time.sleep(7)
        assert early.process.poll() is None, early.log_text()
        assert "Kafka not reachable yet; waiting" in early.log_text()
        assert early.stop(timeout=15) == 0


class TestSeeingIt:
    def test_status_stats_and_metrics(
        self, pipeline: Pipeline, git_servers: GitServers, name: str
    ) -> None:
        """`rv status`, `rv stats` and `rv stats REPO` report the job; the worker's metrics
        count it; the daemons' logs are JSON carrying the job id, and never the token."""
        git_servers.repos.create(name)
        url = git_servers.daemon.url(name)
        [job] = submit_and_wait(pipeline, url)
        status = pipeline.rv("status", "--json", str(job["id"]))
        assert status.exit_code == 0
        assert json.loads(status.stdout)[0]["state"] == "done"
        table = pipeline.rv("status", "--limit", "5")
        assert table.exit_code == 0
        assert "done" in table.output
        stats = json.loads(pipeline.rv("stats", "--json", url).stdout)
        assert stats["jobs_by_state"] == {"done": 1}
        assert [s["name"] for s in stats["stages"]] == [
            "intake to injector",
            "injector to worker",
            "clone and upload",
            "end to end",
        ]
        assert stats["history"][0]["id"] == job["id"]
        assert pipeline.rv("stats").exit_code == 0
        assert 'rv_worker_jobs_total{outcome="done"}' in pipeline.workers[0].metrics()
        announced = [json.loads(m.value()) for m in read_topics(pipeline.env, ("completed",), 5)]
        assert {"job_id": job["id"], "state": "done", "snapshot": job["snapshot"]}.items() <= next(
            a for a in announced if a["job_id"] == job["id"]
        ).items()
        lines = [
            json.loads(line)
            for line in pipeline.workers[0].log_text().splitlines()
            if line.startswith("{")
        ]
        assert any(line.get("job_id") == job["id"] for line in lines)
        short = pipeline.rv("status", "--json", str(job["id"])[:8])
        assert [row["id"] for row in json.loads(short.stdout)] == [job["id"]]
        unknown = pipeline.rv("status", str(uuid.uuid4()))
        assert unknown.exit_code == 1
        assert "no such job" in unknown.output
        not_an_id = pipeline.rv("status", "zz")
        assert not_an_id.exit_code == 1
        assert "'zz' is not a job id" in not_an_id.output
