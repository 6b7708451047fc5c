"""The pipeline benchmark behind `make bench` (a benchmark, not a timed test).

It generates a corpus (many small repositories, a few large ones with real history) with
`git fast-import`, serves it with `git daemon` on loopback, and measures in the same run:

* the floor: a plain sequential script that, for each repository, runs
  `git clone --mirror`, `git bundle create --all` and uploads the bundle to a fresh MinIO
  bucket with `fput_object`;
* the pipeline: a fresh injector and one worker (`tests.conftest.start_pipeline`), every
  URL sent in one `rv submit --json`, wall time from the submit to the last job final,
  p50/p95 per stage from the four PostgreSQL timestamps;
* the idle queue wait: single small repositories submitted one at a time, each waited.

Goals (issue "Benchmark (not a timed test)"): pipeline wall time at most 1.25x the floor
with one worker; queue wait (creation to worker start) p50 at most 250 ms when idle.
The exit status is 0 whether or not a goal is met (MISSED is printed); it is 1 only when
the benchmark itself could not run (a job failed, a service is down).

``--profile`` also runs the worker's archive step in-process on the same corpus with
timers around each phase (ls-remote, pygit2 fetch, bundle, uploads) and prints where the
time goes next to `git clone --mirror` of the same repositories.

Figures go to stdout as tables and to ``bench-results/latest.json``.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import os
import platform
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from minio import Minio
from minio.deleteobjects import DeleteObject
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from repovault import db
from repovault.jobs import Job
from repovault.snapshots import s3_client
from tests.conftest import MAX_REPO_BYTES, Pipeline, localstack, start_pipeline
from tests.gitserve import GIT_ENV, GitDaemon, git

REPO_ROOT = Path(__file__).resolve().parent.parent
RESULTS = REPO_ROOT / "bench-results" / "latest.json"
MIB = 1024 * 1024

WALL_RATIO_GOAL = 1.25  # pipeline wall time / floor wall time, one worker
IDLE_QUEUE_WAIT_GOAL = 0.250  # seconds, p50 of creation -> worker start on an idle system

# Wide enough for the tables when stdout is a file or a pipe (rich would assume 80).
out = Console(width=shutil.get_terminal_size((150, 24)).columns)
note = Console(stderr=True)


class BenchError(RuntimeError):
    """The benchmark could not produce figures (not a missed goal)."""


# --- corpus: bare repositories written with git fast-import ---------------------------------

_WORDS = (
    "def return self value index config buffer for in if else None True False import from "
    "class yield lambda result error count items name path data open close read write "
    "append = + - ( ) : [ ] , 0 1 2 42 len range dict list str int await async with as"
)
_VOCABULARY = _WORDS.split()


def _line(rng: random.Random) -> str:
    return " " * 4 * rng.randint(0, 3) + " ".join(rng.choices(_VOCABULARY, k=rng.randint(2, 12)))


def _text(lines: list[str]) -> bytes:
    return ("\n".join(lines) + "\n").encode()


def _edit(rng: random.Random, lines: list[str]) -> None:
    for _ in range(rng.randint(1, 6)):
        lines[rng.randrange(len(lines))] = _line(rng)
    if rng.random() < 0.5:
        lines.extend(_line(rng) for _ in range(rng.randint(1, 8)))


class _Stream:
    """A `git fast-import` stream built in memory."""

    def __init__(self) -> None:
        self.chunks: list[bytes] = []
        self.marks = 0
        self.when = 1_700_000_000
        self.commits = 0

    def _mark(self) -> int:
        self.marks += 1
        return self.marks

    def blob(self, data: bytes) -> int:
        mark = self._mark()
        self.chunks.append(b"blob\nmark :%d\ndata %d\n%b\n" % (mark, len(data), data))
        return mark

    def commit(
        self,
        ref: str,
        message: str,
        changes: dict[str, tuple[str, int] | None],
        parent: int | None,
    ) -> int:
        """A commit on ``ref``: path -> (mode, blob mark) to write, or None to delete."""
        mark = self._mark()
        self.when += 97
        self.commits += 1
        ident = b"Bench <bench@example.org> %d +0000" % self.when
        text = message.encode()
        self.chunks.append(
            b"commit %b\nmark :%d\nauthor %b\ncommitter %b\ndata %d\n%b\n"
            % (ref.encode(), mark, ident, ident, len(text), text)
        )
        if parent is not None:
            self.chunks.append(b"from :%d\n" % parent)
        for path, change in changes.items():
            if change is None:
                self.chunks.append(b"D %b\n" % path.encode())
            else:
                mode, blob = change
                self.chunks.append(b"M %b :%d %b\n" % (mode.encode(), blob, path.encode()))
        self.chunks.append(b"\n")
        return mark

    def tag(self, name: str, commit: int, annotated: bool) -> None:
        if annotated:
            text = f"release {name}".encode()
            self.chunks.append(
                b"tag %b\nfrom :%d\ntagger Bench <bench@example.org> %d +0000\ndata %d\n%b\n"
                % (name.encode(), commit, self.when, len(text), text)
            )
        else:
            self.chunks.append(b"reset refs/tags/%b\nfrom :%d\n\n" % (name.encode(), commit))

    def data(self) -> bytes:
        return b"".join([*self.chunks, b"done\n"])


@dataclass(frozen=True)
class Repo:
    name: str
    kind: str  # small, large, idle or warmup
    commits: int
    head_files: int
    disk_bytes: int


def _small(stream: _Stream, rng: random.Random) -> int:
    """A few files, a few commits, sometimes a tag. Returns the head tree's file count."""
    files = {
        f"{'src/' if index % 2 else ''}file{index}.{rng.choice(['py', 'md', 'txt'])}": [
            _line(rng) for _ in range(rng.randint(5, 60))
        ]
        for index in range(rng.randint(3, 6))
    }
    tip = stream.commit(
        "refs/heads/main",
        "first",
        {path: ("100644", stream.blob(_text(lines))) for path, lines in files.items()},
        None,
    )
    for index in range(rng.randint(1, 3)):
        path = rng.choice(list(files))
        _edit(rng, files[path])
        tip = stream.commit(
            "refs/heads/main",
            f"change {index}",
            {path: ("100644", stream.blob(_text(files[path])))},
            tip,
        )
    if rng.random() < 0.5:
        stream.tag("v1.0", tip, annotated=True)
    return len(files)


def _large(stream: _Stream, rng: random.Random, commits: int, binary_mib: float) -> int:
    """Real history: ~120 source files edited over ``commits`` commits, binary assets
    replaced every 15 commits (``binary_mib`` MiB of incompressible bytes in all),
    files added and deleted, feature branches, annotated and lightweight tags."""
    texts = {
        f"src/pkg{package:02d}/module{index:02d}.py": [
            _line(rng) for _ in range(rng.randint(40, 160))
        ]
        for package in range(12)
        for index in range(10)
    }
    texts["README.md"] = [_line(rng) for _ in range(30)]
    binaries = [f"assets/blob{index:02d}.bin" for index in range(8)]
    replacements = max(1, commits // 15)
    binary_size = max(1024, int(binary_mib * MIB / (len(binaries) + replacements)))
    tree: dict[str, tuple[str, int] | None] = {
        path: ("100644", stream.blob(_text(lines))) for path, lines in texts.items()
    }
    for path in binaries:
        tree[path] = ("100644", stream.blob(rng.randbytes(binary_size)))
    for index in range(3):
        script = f"#!/bin/sh\necho tool {index}\n".encode()
        tree[f"bin/tool{index}.sh"] = ("100755", stream.blob(script))
    tree["link-to-readme"] = ("120000", stream.blob(b"README.md"))
    head_files = len(tree)
    tip = stream.commit("refs/heads/main", "initial import", tree, None)
    history = [tip]
    added = 0
    for number in range(1, commits):
        changes: dict[str, tuple[str, int] | None] = {}
        for path in rng.sample(sorted(texts), k=rng.randint(1, 3)):
            _edit(rng, texts[path])
            changes[path] = ("100644", stream.blob(_text(texts[path])))
        if number % 15 == 0:
            changes[rng.choice(binaries)] = ("100644", stream.blob(rng.randbytes(binary_size)))
        if number % 40 == 0:
            path = f"docs/note{added:02d}.md"
            added += 1
            texts[path] = [_line(rng) for _ in range(rng.randint(10, 40))]
            changes[path] = ("100644", stream.blob(_text(texts[path])))
            head_files += 1
        if number % 55 == 0:
            victim = rng.choice(sorted(p for p in texts if p.startswith("src/")))
            del texts[victim]
            changes[victim] = None
            head_files -= 1
        tip = stream.commit("refs/heads/main", f"change {number}", changes, tip)
        history.append(tip)
    for branch in range(4):
        base = rng.choice(history[len(history) // 2 :])
        for step in range(3):
            lines = [_line(rng) for _ in range(rng.randint(10, 50))]
            base = stream.commit(
                f"refs/heads/feature-{branch}",
                f"feature {branch} step {step}",
                {f"notes/feature{branch}-{step}.md": ("100644", stream.blob(_text(lines)))},
                base,
            )
    for index in range(6):
        stream.tag(f"v0.{index + 1}", history[(index + 1) * len(history) // 7], annotated=True)
    stream.tag("light-a", history[len(history) // 3], annotated=False)
    stream.tag("light-b", history[-1], annotated=False)
    return head_files


def _disk_bytes(path: Path) -> int:
    return sum(item.stat().st_size for item in path.rglob("*") if item.is_file())


def _write(root: Path, name: str, stream: _Stream) -> Path:
    bare = root / f"{name}.git"
    git("init", "--quiet", "--bare", "-b", "main", str(bare))
    result = subprocess.run(
        ["git", "--git-dir", str(bare), "fast-import", "--quiet"],
        input=stream.data(),
        env={**os.environ, **GIT_ENV},
        capture_output=True,
        check=False,
    )
    if result.returncode != 0:
        raise BenchError(f"git fast-import failed for {name}: {result.stderr.decode()[-2000:]}")
    git("--git-dir", str(bare), "repack", "-a", "-d", "-q")
    return bare


@dataclass
class Corpus:
    root: Path
    small: list[Repo]
    large: list[Repo]
    idle: list[Repo]
    warmup: Repo
    seconds: float

    @property
    def timed(self) -> list[Repo]:
        """The repositories both the floor and the pipeline archive."""
        return [*self.small, *self.large]


def make_corpus(
    root: Path,
    small: int,
    large: int,
    idle: int,
    large_commits: int,
    large_mib: float,
    seed: int,
) -> Corpus:
    started = time.perf_counter()
    root.mkdir(parents=True)
    rng = random.Random(seed)  # noqa: S311 -- a reproducible corpus, not a secret

    def build(name: str, kind: str, fill: Callable[[_Stream], int]) -> Repo:
        stream = _Stream()
        head_files = fill(stream)
        bare = _write(root, name, stream)
        return Repo(name, kind, stream.commits, head_files, _disk_bytes(bare))

    corpus = Corpus(
        root,
        small=[
            build(f"small-{index:03d}", "small", lambda s: _small(s, rng)) for index in range(small)
        ],
        large=[
            build(
                f"large-{index:02d}",
                "large",
                lambda s: _large(s, rng, large_commits, large_mib),
            )
            for index in range(large)
        ],
        idle=[
            build(f"idle-{index:02d}", "idle", lambda s: _small(s, rng)) for index in range(idle)
        ],
        warmup=build("warmup", "warmup", lambda s: _small(s, rng)),
        seconds=0.0,
    )
    corpus.seconds = time.perf_counter() - started
    return corpus


# --- figures -----------------------------------------------------------------------------


def percentile(values: Sequence[float], fraction: float) -> float | None:
    """Linear interpolation between closest ranks (PostgreSQL's percentile_cont)."""
    if not values:
        return None
    ordered = sorted(values)
    position = fraction * (len(ordered) - 1)
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


STAGES: dict[str, tuple[str, str]] = {
    "queue wait (creation -> worker start)": ("creation_timestamp", "worker_start_timestamp"),
    "intake -> injector": ("creation_timestamp", "injector_timestamp"),
    "injector -> worker start": ("injector_timestamp", "worker_start_timestamp"),
    "clone + upload (worker start -> finish)": (
        "worker_start_timestamp",
        "worker_finishing_timestamp",
    ),
    "end to end (creation -> finish)": ("creation_timestamp", "worker_finishing_timestamp"),
}
QUEUE_WAIT = "queue wait (creation -> worker start)"
CLONE_UPLOAD = "clone + upload (worker start -> finish)"


def durations(jobs: Sequence[Job], start: str, end: str) -> list[float]:
    values = []
    for job in jobs:
        first, last = getattr(job, start), getattr(job, end)
        if first is not None and last is not None:
            values.append((last - first).total_seconds())
    return values


def summary(values: Sequence[float]) -> dict[str, float | int | None]:
    return {
        "n": len(values),
        "p50": percentile(values, 0.5),
        "p95": percentile(values, 0.95),
        "max": max(values) if values else None,
    }


def stage_figures(jobs: Sequence[Job]) -> dict[str, dict[str, float | int | None]]:
    return {name: summary(durations(jobs, *columns)) for name, columns in STAGES.items()}


# --- the floor: clone --mirror, bundle, one upload each, sequentially ---------------------------


def run_floor(
    repos: Sequence[Repo],
    daemon: GitDaemon,
    storage: Minio,
    scratch: Path,
    tag: str,
    buckets: list[str],
) -> dict[str, Any]:
    """Time the plain sequential script; the buckets it makes are appended to ``buckets``."""
    phases: dict[str, list[float]] = {"clone": [], "bundle": [], "upload": [], "total": []}
    started = time.perf_counter()
    for index, repo in enumerate(repos):
        begin = time.perf_counter()
        work = Path(tempfile.mkdtemp(prefix="floor-", dir=scratch))
        try:
            mirror = work / "repo.git"
            git("clone", "--mirror", "--quiet", daemon.url(repo.name), str(mirror))
            cloned = time.perf_counter()
            bundle = work / "repo.bundle"
            git("bundle", "create", "--quiet", str(bundle), "--all", cwd=mirror)
            bundled = time.perf_counter()
            bucket = f"rvbench-floor-{tag}-{index:03d}"
            storage.make_bucket(bucket)
            buckets.append(bucket)
            storage.fput_object(bucket, "repo.bundle", str(bundle))
            uploaded = time.perf_counter()
        finally:
            shutil.rmtree(work, ignore_errors=True)
        phases["clone"].append(cloned - begin)
        phases["bundle"].append(bundled - cloned)
        phases["upload"].append(uploaded - bundled)
        phases["total"].append(time.perf_counter() - begin)
    wall = time.perf_counter() - started
    return {
        "wall_seconds": wall,
        "repos": len(repos),
        "repos_per_minute": len(repos) / wall * 60,
        "phase_sums_seconds": {name: sum(values) for name, values in phases.items()},
        "per_repo_seconds": {name: summary(values) for name, values in phases.items()},
        "total_by_kind": {
            kind: summary(
                [t for t, r in zip(phases["total"], repos, strict=True) if r.kind == kind]
            )
            for kind in ("small", "large")
        },
    }


# --- the pipeline ------------------------------------------------------------------------


def stack_env() -> dict[str, str]:
    """The RV_* settings of the local stack, started first when `status` says it is down."""
    if localstack("status", "--json").returncode != 0:
        note.print("[bold]the local stack is not up: starting it (stack/localstack.py start)")
        if localstack("start", timeout=3600).returncode != 0:
            raise BenchError("the local stack did not start; run `make up` to see why")
    printed = localstack("env", "--json")
    if printed.returncode != 0:
        raise BenchError(f"`localstack env --json` failed:\n{printed.stderr}")
    return {str(key): str(value) for key, value in json.loads(printed.stdout).items()}


def _children() -> set[int]:
    """Pids of this process's direct children (daemons a failed start left behind)."""
    found = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError, ValueError, IndexError):
            stat = (entry / "stat").read_text()
            if int(stat.rsplit(")", 1)[1].split()[1]) == os.getpid():
                found.add(int(entry.name))
    return found


@contextlib.contextmanager
def running_pipeline(env: dict[str, str], base: Path) -> Iterator[Pipeline]:
    """A fresh injector and one worker on topics of their own; stopped by pid at the end.
    If the start fails half-way, the daemons it had started are stopped by their pid."""
    before = _children()
    try:
        pipeline = start_pipeline(env, base, workers=1)
    except BaseException:
        for pid in sorted(_children() - before):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        raise
    try:
        yield pipeline
    finally:
        pipeline.stop()


def submit(pipeline: Pipeline, urls: Sequence[str]) -> list[dict[str, str]]:
    result = pipeline.rv("submit", "--json", *urls)
    if result.exit_code != 0:
        raise BenchError(f"rv submit exited {result.exit_code}: {result.output[-3000:]}")
    submitted: list[dict[str, str]] = json.loads(result.stdout)
    return submitted


def wait_final(
    conn: db.Connection, ids: Sequence[uuid.UUID], timeout: float, interval: float
) -> list[Job]:
    deadline = time.monotonic() + timeout
    while True:
        jobs = db.list_jobs(conn, ids=ids, limit=len(ids))
        if len(jobs) == len(ids) and all(job.state.is_final for job in jobs):
            return jobs
        if time.monotonic() > deadline:
            waiting = [f"{job.repo_url}: {job.state}" for job in jobs if not job.state.is_final]
            raise BenchError(f"jobs not final after {timeout:.0f} s: {waiting[:5]}")
        time.sleep(interval)


def submit_and_wait(
    pipeline: Pipeline,
    conn: db.Connection,
    urls: Sequence[str],
    timeout: float,
    interval: float,
    buckets: list[str],
) -> tuple[list[Job], float]:
    """Submit ``urls`` in one `rv submit --json`; the final jobs and the wall time from the
    submit to the moment all of them were seen final. Their buckets go to ``buckets``."""
    started = time.perf_counter()
    submitted = submit(pipeline, urls)
    buckets += [item["bucket"] for item in submitted]
    jobs = wait_final(conn, [uuid.UUID(item["id"]) for item in submitted], timeout, interval)
    wall = time.perf_counter() - started
    failed = [
        f"{job.repo_url}: {job.state} {job.error or ''}" for job in jobs if job.state != "done"
    ]
    if failed:
        raise BenchError("jobs did not end done:\n  " + "\n  ".join(failed[:10]))
    return jobs, wall


def _worker_gaps(jobs: Sequence[Job]) -> list[float]:
    """Worker idle time between consecutive jobs (previous finish -> next start)."""
    spans = sorted(
        (job.worker_start_timestamp, job.worker_finishing_timestamp)
        for job in jobs
        if job.worker_start_timestamp is not None and job.worker_finishing_timestamp is not None
    )
    return [
        (following[0] - previous[1]).total_seconds()
        for previous, following in itertools.pairwise(spans)
    ]


def logs_dir(output: Path) -> Path:
    """Where the daemons' logs go: ``<output stem>-logs/`` next to the JSON figures."""
    return output.parent / f"{output.stem}-logs"


def keep_logs(base: Path, log_dir: Path) -> None:
    """Copy the daemons' logs (JSON lines) out of the temporary directory."""
    log_dir.mkdir(parents=True, exist_ok=True)
    for log in base.glob("*.log"):
        shutil.copyfile(log, log_dir / log.name)


def peak_rss_bytes(pid: int) -> int:
    """The process's peak resident memory (VmHWM) so far, from /proc."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return 0


def run_pipeline(
    corpus: Corpus,
    daemon: GitDaemon,
    env: dict[str, str],
    base: Path,
    timeout: float,
    idle_pause: float,
    log_dir: Path,
    buckets: list[str],
) -> dict[str, Any]:
    """Warm-up job, timed batch, idle single submits; buckets are appended to ``buckets``."""
    kinds = {daemon.url(repo.name): repo.kind for repo in corpus.timed}
    try:
        with (
            running_pipeline(env, base) as pipeline,
            db.connect(env["RV_DATABASE_READER_URL"]) as conn,
        ):
            # One job first: the worker joins its consumer group on the first poll (seconds),
            # which is start-up cost, not queue wait.
            warm, warm_wall = submit_and_wait(
                pipeline, conn, [daemon.url(corpus.warmup.name)], timeout, 0.02, buckets
            )
            time.sleep(idle_pause)
            urls = [daemon.url(repo.name) for repo in corpus.timed]
            jobs, wall = submit_and_wait(pipeline, conn, urls, timeout, 0.05, buckets)
            idle_jobs: list[Job] = []
            for repo in corpus.idle:
                time.sleep(idle_pause)
                [job], _ = submit_and_wait(
                    pipeline, conn, [daemon.url(repo.name)], timeout, 0.02, buckets
                )
                idle_jobs.append(job)
            peak_rss = peak_rss_bytes(pipeline.workers[0].process.pid)
    finally:
        keep_logs(base, log_dir)

    first = min(job.creation_timestamp for job in jobs)
    last = max(job.worker_finishing_timestamp for job in jobs if job.worker_finishing_timestamp)
    busy = durations(jobs, *STAGES[CLONE_UPLOAD])
    by_kind = {
        kind: summary(
            durations([j for j in jobs if kinds[j.repo_url] == kind], *STAGES[CLONE_UPLOAD])
        )
        for kind in ("small", "large")
    }
    return {
        "wall_seconds": wall,
        "db_span_seconds": (last - first).total_seconds(),
        "repos": len(jobs),
        "repos_per_minute": len(jobs) / wall * 60,
        "bytes_stored": sum(job.bytes_stored or 0 for job in jobs),
        "stages": stage_figures(jobs),
        "stage_seconds": {name: durations(jobs, *columns) for name, columns in STAGES.items()},
        "clone_upload_by_kind": by_kind,
        "worker_busy_seconds": sum(busy),
        "worker_gap_seconds": summary(_worker_gaps(jobs)),
        "workerpeak_rss_bytes": peak_rss,
        "warmup": {
            "wall_seconds": warm_wall,
            "queue_wait_seconds": warm[0].queue_wait_seconds,
        },
        "idle": {
            "samples": len(idle_jobs),
            "stages": stage_figures(idle_jobs),
            "queue_wait_seconds": [job.queue_wait_seconds for job in idle_jobs],
        },
    }


# --- profile: the worker's archive step in-process, with timers ---------------------------


class _Timings:
    """Intervals per name, from any thread."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.spans: dict[str, list[tuple[float, float]]] = {}

    def add(self, name: str, start: float, end: float) -> None:
        with self.lock:
            self.spans.setdefault(name, []).append((start, end))

    def total(self, name: str) -> float:
        return sum(end - start for start, end in self.spans.get(name, []))

    def count(self, name: str) -> int:
        return len(self.spans.get(name, []))

    def wall(self, name: str) -> float:
        spans = self.spans.get(name, [])
        return max(e for _, e in spans) - min(s for s, _ in spans) if spans else 0.0

    def timed(self, name: str, function: Callable[..., Any]) -> Callable[..., Any]:
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                self.add(name, start, time.perf_counter())

        return wrapper


class _TimedStorage:
    """A Minio client whose every call is timed (file uploads apart from other PUTs)."""

    def __init__(self, inner: Minio, timings: _Timings) -> None:
        self._inner = inner
        self._timings = timings

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self._inner, name)
        if not callable(attribute):
            return attribute

        def call(*args: Any, **kwargs: Any) -> Any:
            key = name
            if name == "put_object" and len(args) > 1 and "/files/" in str(args[1]):
                key = "put_object[file]"
            start = time.perf_counter()
            try:
                return attribute(*args, **kwargs)
            finally:
                self._timings.add(f"s3.{key}", start, time.perf_counter())

        return call


PROFILE_PHASES = (
    ("ls-remote (pygit2 list_heads)", "remote.list"),
    ("fetch (pygit2)", "remote.fetch"),
    ("git bundle create", "bundle.create"),
    ("bundle upload (fput_object)", "s3.fput_object"),
    ("default-branch files (wall, thread pool)", "files.wall"),
    ("manifest + latest (put_object)", "s3.put_object"),
    ("bucket_exists / make_bucket / manifest lookups", "s3.lookups"),
)


def profile_worker(
    corpus: Corpus,
    daemon: GitDaemon,
    storage: Minio,
    scratch: Path,
    tag: str,
    buckets: list[str],
) -> list[dict[str, Any]]:
    """Archive every timed repository with the worker's own code, in-process, timing each
    phase; then `git clone --mirror` the same repositories for comparison."""
    from repovault_daemons import _archive
    from repovault_daemons._fetch import GitCredentials

    limits = _archive.ArchiveLimits(max_repo_bytes=MAX_REPO_BYTES)
    per_repo: list[dict[str, Any]] = []
    originals = {
        name: getattr(_archive, name)
        for name in ("list_remote", "fetch", "subprocess", "_upload_file")
    }
    try:
        # Untimed first archive: one-time costs (thread pool, first connections, lazy
        # imports) are not per-repository work.
        buckets.append(f"rvbench-prof-{tag}-warmup")
        _archive.archive(
            storage,
            daemon.url(corpus.warmup.name),
            buckets[-1],
            str(uuid.uuid4()),
            str(scratch),
            limits,
            GitCredentials(),
        )
        for index, repo in enumerate(corpus.timed):
            timings = _Timings()
            timed = {
                "list_remote": timings.timed("remote.list", originals["list_remote"]),
                "fetch": timings.timed("remote.fetch", originals["fetch"]),
                "_upload_file": timings.timed("files.upload", originals["_upload_file"]),
                "subprocess": _SubprocessShim(timings),
            }
            for name, value in timed.items():
                setattr(_archive, name, value)
            bucket = f"rvbench-prof-{tag}-{index:03d}"
            buckets.append(bucket)
            client = _TimedStorage(storage, timings)
            start = time.perf_counter()
            result = _archive.archive(
                client,  # type: ignore[arg-type]
                daemon.url(repo.name),
                bucket,
                str(uuid.uuid4()),
                str(scratch),
                limits,
                GitCredentials(),
            )
            total = time.perf_counter() - start
            clone = _timed_mirror_clone(daemon.url(repo.name), scratch)
            lookups = sum(
                timings.total(f"s3.{name}")
                for name in ("bucket_exists", "make_bucket", "get_object")
            )
            phases = {
                "remote.list": timings.total("remote.list"),
                "remote.fetch": timings.total("remote.fetch"),
                "bundle.create": timings.total("bundle.create"),
                "s3.fput_object": timings.total("s3.fput_object"),
                "files.wall": timings.wall("files.upload"),
                "s3.put_object": timings.total("s3.put_object"),
                "s3.lookups": lookups,
            }
            per_repo.append(
                {
                    "repo": repo.name,
                    "kind": repo.kind,
                    "state": str(result.state),
                    "bytes_stored": result.bytes_stored,
                    "archive_seconds": total,
                    "phases": phases,
                    "other_seconds": total - sum(phases.values()),
                    "files": timings.count("files.upload"),
                    "file_put_sum_seconds": timings.total("s3.put_object[file]"),
                    "s3_calls": {
                        name.removeprefix("s3."): [timings.count(name), timings.total(name)]
                        for name in sorted(timings.spans)
                        if name.startswith("s3.")
                    },
                    "git_clone_mirror_seconds": clone,
                }
            )
    finally:
        for name, value in originals.items():
            setattr(_archive, name, value)
    return per_repo


class _SubprocessShim:
    """Stands in for the `subprocess` module inside the worker's archive code, timing
    `run` (the `git bundle create` call) and passing everything else through."""

    def __init__(self, timings: _Timings) -> None:
        self.run = timings.timed("bundle.create", subprocess.run)

    def __getattr__(self, name: str) -> Any:
        return getattr(subprocess, name)


def _timed_mirror_clone(url: str, scratch: Path) -> float:
    work = Path(tempfile.mkdtemp(prefix="prof-", dir=scratch))
    try:
        start = time.perf_counter()
        git("clone", "--mirror", "--quiet", url, str(work / "repo.git"))
        return time.perf_counter() - start
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _add_calls(rows: Iterator[dict[str, list[float]]]) -> dict[str, list[float]]:
    """S3 method -> [calls, seconds] summed over repositories."""
    total: dict[str, list[float]] = {}
    for row in rows:
        for name, (count, seconds) in row.items():
            entry = total.setdefault(name, [0, 0.0])
            entry[0] += count
            entry[1] += seconds
    return total


def profile_summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
    document: dict[str, Any] = {}
    for kind in ("small", "large", "all"):
        chosen = [row for row in rows if kind in ("all", row["kind"])]
        if not chosen:
            continue
        total = sum(row["archive_seconds"] for row in chosen)
        phases = {key: sum(row["phases"][key] for row in chosen) for _, key in PROFILE_PHASES}
        document[kind] = {
            "repos": len(chosen),
            "archive_seconds": total,
            "phases_seconds": phases,
            "other_seconds": sum(row["other_seconds"] for row in chosen),
            "files": sum(row["files"] for row in chosen),
            "file_put_sum_seconds": sum(row["file_put_sum_seconds"] for row in chosen),
            "git_clone_mirror_seconds": sum(row["git_clone_mirror_seconds"] for row in chosen),
            "s3_calls": _add_calls(row["s3_calls"] for row in chosen),
        }
    return document


# --- cleanup ------------------------------------------------------------------------------


def drop_buckets(storage: Minio, buckets: Sequence[str]) -> list[str]:
    """Delete the buckets this run made (objects first); the names that could not be."""
    left = []
    for bucket in dict.fromkeys(buckets):
        try:
            if not storage.bucket_exists(bucket):
                continue
            names = [
                DeleteObject(item.object_name)
                for item in storage.list_objects(bucket, recursive=True)
                if item.object_name
            ]
            errors = list(storage.remove_objects(bucket, names))
            if errors:
                left.append(bucket)
                continue
            storage.remove_bucket(bucket)
        except Exception:  # noqa: BLE001 -- cleanup is best effort; the figures stand
            left.append(bucket)
    return left


# --- report -------------------------------------------------------------------------------


def _ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1000:,.0f} ms"


def _s(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds:,.2f} s"


def _verdict(met: bool) -> str:
    return "[bold green]met[/]" if met else "[bold red]MISSED[/]"


def combine(rounds: list[dict[str, Any]], corpus: Corpus) -> dict[str, Any]:
    floor_walls = [r["floor"]["wall_seconds"] for r in rounds]
    pipe_walls = [r["pipeline"]["wall_seconds"] for r in rounds]
    floor_wall = statistics.median(floor_walls)
    pipe_wall = statistics.median(pipe_walls)
    repos = len(corpus.timed)
    idle_waits = [w for r in rounds for w in r["pipeline"]["idle"]["queue_wait_seconds"]]
    stages: dict[str, dict[str, float | int | None]] = {}
    for name in STAGES:
        # p50/p95 over every batch job of every round
        values = [v for r in rounds for v in r["pipeline"]["stage_seconds"][name]]
        stages[name] = summary(values)
    ratio = pipe_wall / floor_wall
    idle_p50 = percentile(idle_waits, 0.5)
    return {
        "floor_wall_seconds": floor_wall,
        "pipeline_wall_seconds": pipe_wall,
        "ratio_pipeline_over_floor": ratio,
        "floor_repos_per_minute": repos / floor_wall * 60,
        "pipeline_repos_per_minute": repos / pipe_wall * 60,
        "stages": stages,
        "idle_queue_wait": summary(idle_waits),
        "goals": {
            "wall_ratio": {
                "goal": f"pipeline wall <= {WALL_RATIO_GOAL}x floor (one worker)",
                "value": ratio,
                "limit": WALL_RATIO_GOAL,
                "met": ratio <= WALL_RATIO_GOAL,
            },
            "idle_queue_wait_p50": {
                "goal": f"idle queue wait p50 <= {IDLE_QUEUE_WAIT_GOAL * 1000:.0f} ms",
                "value": idle_p50,
                "limit": IDLE_QUEUE_WAIT_GOAL,
                "met": idle_p50 is not None and idle_p50 <= IDLE_QUEUE_WAIT_GOAL,
            },
        },
    }


def print_report(document: dict[str, Any]) -> None:
    result = document["summary"]
    config = document["config"]
    goals = result["goals"]
    repos = config["small"] + config["large"]
    rounds = document["rounds"]
    main = Table(
        title=(
            f"RepoVault pipeline benchmark: {repos} repos ({config['small']} small, "
            f"{config['large']} large), one worker, {len(rounds)} round(s)"
            + (", medians" if len(rounds) > 1 else "")
        )
    )
    main.add_column("measure")
    main.add_column("floor", justify="right")
    main.add_column("pipeline", justify="right")
    main.add_column("goal", justify="right")
    main.add_column("result")
    main.add_row("wall time", _s(result["floor_wall_seconds"]), _s(result["pipeline_wall_seconds"]))
    main.add_row(
        "repositories per minute",
        f"{result['floor_repos_per_minute']:,.1f}",
        f"{result['pipeline_repos_per_minute']:,.1f}",
    )
    main.add_row(
        "pipeline / floor",
        "",
        f"{result['ratio_pipeline_over_floor']:.2f}x",
        f"<= {WALL_RATIO_GOAL:.2f}x",
        _verdict(goals["wall_ratio"]["met"]),
    )
    idle = result["idle_queue_wait"]
    main.add_row(
        f"idle queue wait p50 ({idle['n']} single submits)",
        "",
        _ms(idle["p50"]),
        f"<= {IDLE_QUEUE_WAIT_GOAL * 1000:.0f} ms",
        _verdict(goals["idle_queue_wait_p50"]["met"]),
    )
    peak = max(r["pipeline"]["workerpeak_rss_bytes"] for r in rounds)
    main.add_row("worker peak memory (VmHWM)", "", f"{peak / 2**20:.0f} MiB")
    out.print(main)

    stages = Table(title="pipeline stages, batch jobs (from the four PostgreSQL timestamps)")
    stages.add_column("stage")
    stages.add_column("n", justify="right")
    stages.add_column("p50", justify="right")
    stages.add_column("p95", justify="right")
    stages.add_column("max", justify="right")
    for name, figures in result["stages"].items():
        stages.add_row(
            name, str(figures["n"]), _ms(figures["p50"]), _ms(figures["p95"]), _ms(figures["max"])
        )
    stages.add_row(
        "idle queue wait (one job at a time)",
        str(idle["n"]),
        _ms(idle["p50"]),
        _ms(idle["p95"]),
        _ms(idle["max"]),
    )
    out.print(stages)

    detail = Table(title="per round")
    for column in (
        "round",
        "order",
        "floor wall",
        "pipeline wall",
        "ratio",
        "floor per repo p50 small / large",
        "clone+upload p50 small / large",
        "worker busy",
        "gap between jobs p50",
        "cold-start queue wait",
    ):
        detail.add_column(column, justify="left" if column in ("round", "order") else "right")
    for number, entry in enumerate(rounds, 1):
        pipe, floor = entry["pipeline"], entry["floor"]
        kinds = pipe["clone_upload_by_kind"]
        floor_kinds = floor["total_by_kind"]
        detail.add_row(
            str(number),
            " then ".join(entry["order"]),
            _s(floor["wall_seconds"]),
            _s(pipe["wall_seconds"]),
            f"{pipe['wall_seconds'] / floor['wall_seconds']:.2f}x",
            f"{_ms(floor_kinds['small']['p50'])} / {_ms(floor_kinds['large']['p50'])}",
            f"{_ms(kinds['small']['p50'])} / {_ms(kinds['large']['p50'])}",
            _s(pipe["worker_busy_seconds"]),
            _ms(pipe["worker_gap_seconds"]["p50"]),
            _ms(pipe["warmup"]["queue_wait_seconds"]),
        )
    out.print(detail)

    if "profile" in document:
        print_profile(document["profile"]["summary"])

    missed = [entry["goal"] for entry in goals.values() if not entry["met"]]
    if missed:
        out.print("[bold red]MISSED:[/] " + "; ".join(missed))
    else:
        out.print("[bold green]all goals met[/]")
    out.print(f"figures written to {document['results_path']}")


def print_profile(profile: dict[str, Any]) -> None:
    table = Table(title="where the worker's archive step spends its time (in-process, timed)")
    table.add_column("phase")
    kinds = [kind for kind in ("small", "large", "all") if kind in profile]
    for kind in kinds:
        table.add_column(f"{kind} ({profile[kind]['repos']} repos)", justify="right")

    def cell(kind: str, seconds: float) -> str:
        total = profile[kind]["archive_seconds"]
        return f"{seconds:,.2f} s  {seconds / total * 100:4.0f}%"

    for label, key in PROFILE_PHASES:
        table.add_row(label, *(cell(k, profile[k]["phases_seconds"][key]) for k in kinds))
    table.add_row(
        "other (tempdir, pygit2 init, tree walk, ...)",
        *(cell(k, profile[k]["other_seconds"]) for k in kinds),
    )
    table.add_row("archive() total", *(_s(profile[k]["archive_seconds"]) for k in kinds))
    table.add_row("files uploaded (PUT requests)", *(str(profile[k]["files"]) for k in kinds))
    table.add_row(
        "  sum of per-file PUT times", *(_s(profile[k]["file_put_sum_seconds"]) for k in kinds)
    )
    calls = {k: profile[k]["s3_calls"] for k in kinds}
    for method in sorted({name for entry in calls.values() for name in entry}):
        table.add_row(
            escape(f"  S3 {method}: calls, seconds"),
            *(
                "{:.0f}, {:.2f} s".format(*calls[k][method]) if method in calls[k] else "-"
                for k in kinds
            ),
        )
    table.add_row(
        "git clone --mirror, same repos",
        *(_s(profile[k]["git_clone_mirror_seconds"]) for k in kinds),
    )
    out.print(table)


# --- main ---------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.pipeline",
        description="Archive a generated corpus through the pipeline and through a plain "
        "sequential floor script; print repos/min and p50/p95 per stage.",
    )
    parser.add_argument("--small", type=int, default=40, help="small repositories (default 40)")
    parser.add_argument("--large", type=int, default=3, help="large repositories (default 3)")
    parser.add_argument(
        "--large-commits", type=int, default=300, help="commits on main per large repository"
    )
    parser.add_argument(
        "--large-mib",
        type=float,
        default=3.0,
        help="MiB of incompressible binary content in each large repository's history",
    )
    parser.add_argument(
        "--rounds", type=int, default=1, help="floor+pipeline rounds, order alternating"
    )
    parser.add_argument(
        "--idle-samples", type=int, default=10, help="single submits for idle queue wait"
    )
    parser.add_argument(
        "--idle-pause",
        type=float,
        default=0.5,
        help="seconds of idleness before each single submit",
    )
    parser.add_argument("--timeout", type=float, default=900, help="seconds to wait for a batch")
    parser.add_argument("--seed", type=int, default=1, help="corpus random seed")
    parser.add_argument(
        "--profile",
        action="store_true",
        help="also time the worker's archive phases in-process on the same corpus",
    )
    parser.add_argument("--keep-buckets", action="store_true", help="leave the buckets in MinIO")
    parser.add_argument(
        "--output",
        type=Path,
        default=RESULTS,
        help=f"JSON figures (default {RESULTS.relative_to(REPO_ROOT)})",
    )
    args = parser.parse_args(argv)
    if args.small < 0 or args.large < 0 or args.small + args.large == 0:
        parser.error("--small and --large must not be negative and not both zero")
    if args.rounds < 1 or args.idle_samples < 1:
        parser.error("--rounds and --idle-samples must be at least 1")
    return args


def _git_version() -> str:
    return git("--version").strip()


def run(args: argparse.Namespace) -> dict[str, Any]:
    env = stack_env()
    storage = s3_client(env["RV_S3_ENDPOINT"], env["RV_S3_ACCESS_KEY"], env["RV_S3_SECRET_KEY"])
    tag = uuid.uuid4().hex[:8]
    buckets: list[str] = []
    document: dict[str, Any] = {
        "started": datetime.now(UTC).isoformat(),
        "host": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
            "git": _git_version(),
        },
        "config": {
            key: (str(value) if isinstance(value, Path) else value)
            for key, value in vars(args).items()
        },
        "goals": {
            "wall_ratio_max": WALL_RATIO_GOAL,
            "idle_queue_wait_p50_max_seconds": IDLE_QUEUE_WAIT_GOAL,
        },
    }
    logs = logs_dir(args.output)
    for stale in logs.glob("round-*"):  # only what an earlier run of this script wrote
        shutil.rmtree(stale, ignore_errors=True)
    with tempfile.TemporaryDirectory(prefix="rv-bench-") as tmp:
        scratch = Path(tmp)
        note.print(f"generating the corpus ({args.small} small, {args.large} large) ...")
        corpus = make_corpus(
            scratch / "served",
            args.small,
            args.large,
            args.idle_samples,
            args.large_commits,
            args.large_mib,
            args.seed,
        )
        document["corpus"] = {
            "seconds_to_generate": corpus.seconds,
            "small": len(corpus.small),
            "large": len(corpus.large),
            "small_disk_bytes": sum(r.disk_bytes for r in corpus.small),
            "small_head_files": sum(r.head_files for r in corpus.small),
            "large_repos": [vars(r) for r in corpus.large],
        }
        note.print(f"  done in {corpus.seconds:.1f} s")
        rounds: list[dict[str, Any]] = []
        try:
            for number in range(args.rounds):
                order = ["floor", "pipeline"] if number % 2 == 0 else ["pipeline", "floor"]
                entry: dict[str, Any] = {"order": order}
                daemon = GitDaemon(corpus.root)  # a new port: new URLs, new buckets
                try:
                    for step in order:
                        note.print(f"round {number + 1}/{args.rounds}: {step} ...")
                        if step == "floor":
                            entry["floor"] = run_floor(
                                corpus.timed, daemon, storage, scratch, f"{tag}-r{number}", buckets
                            )
                            note.print(f"  floor wall {entry['floor']['wall_seconds']:.2f} s")
                        else:
                            base = scratch / f"pipeline-{number}"
                            entry["pipeline"] = run_pipeline(
                                corpus,
                                daemon,
                                env,
                                base,
                                args.timeout,
                                args.idle_pause,
                                logs / f"round-{number + 1}",
                                buckets,
                            )
                            note.print(f"  pipeline wall {entry['pipeline']['wall_seconds']:.2f} s")
                    if args.profile and number == 0:
                        note.print("profiling the worker's archive step in-process ...")
                        rows = profile_worker(corpus, daemon, storage, scratch, tag, buckets)
                        document["profile"] = {"summary": profile_summary(rows), "per_repo": rows}
                finally:
                    daemon.stop()
                rounds.append(entry)
        finally:
            if not args.keep_buckets and buckets:
                note.print(f"removing the {len(set(buckets))} buckets this run made ...")
                left = drop_buckets(storage, buckets)
                if left:
                    note.print(f"[yellow]could not remove {len(left)} bucket(s): {left[:5]}")
    document["rounds"] = rounds
    document["summary"] = combine(rounds, corpus)
    return document


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        document = run(args)
    except RuntimeError as error:  # BenchError, or git / a daemon failing under the helpers
        note.print(f"[bold red]benchmark failed:[/] {escape(str(error))}")
        return 1
    document["results_path"] = str(args.output)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(document, indent=2, default=str) + "\n")
    print_report(document)
    return 0


if __name__ == "__main__":
    sys.exit(main())
