"""Worker memory against repository size: archives generated repositories of growing size
(four random, incompressible files each) through a real pipeline with one worker per size,
and prints the worker's peak resident memory (VmHWM) for each.

    python -m bench.memory --mib 40 400

Memory should grow with the largest single file (libgit2 hashes each object in memory as it
indexes the pack), not with the repository's total size.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from bench.pipeline import peak_rss_bytes, stack_env
from tests.conftest import start_pipeline
from tests.gitserve import GitDaemon, RepoFactory

FILES = 4


def measure(env: dict[str, str], base: Path, mib: int) -> dict[str, float]:
    root = base / f"repos-{mib}"
    root.mkdir(parents=True)
    factory = RepoFactory(root)
    chunk = mib * 1024 * 1024 // FILES
    factory.create("huge", files={f"big{i}.bin": os.urandom(chunk) for i in range(FILES)})
    daemon = GitDaemon(root)
    pipeline = start_pipeline(
        env, base / f"pipeline-{mib}", workers=1, RV_MAX_REPO_BYTES=str(8 * 1024**3)
    )
    try:
        started = time.monotonic()
        result = pipeline.rv("submit", "--wait", "--json", "--timeout", "1800", daemon.url("huge"))
        [job] = json.loads(result.stdout)
        if job["state"] != "done":
            raise SystemExit(f"the {mib} MiB repository was not archived: {job['error']}")
        seconds = time.monotonic() - started
        peak = peak_rss_bytes(pipeline.workers[0].process.pid)
    finally:
        pipeline.stop()
        daemon.stop()
    return {
        "repo_mib": mib,
        "largest_file_mib": mib / FILES,
        "seconds": seconds,
        "peak_rss_mib": peak / 2**20,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--mib", type=int, nargs="+", default=[40, 400])
    arguments = parser.parse_args()
    env = stack_env()
    with tempfile.TemporaryDirectory(prefix="rv-bench-memory-") as scratch:
        rows = [measure(env, Path(scratch), mib) for mib in arguments.mib]
    table = Table(title="worker peak memory against repository size")
    for column in ("repository", "largest file", "archive time", "worker peak RSS"):
        table.add_column(column, justify="right")
    for row in rows:
        table.add_row(
            f"{row['repo_mib']} MiB",
            f"{row['largest_file_mib']:.0f} MiB",
            f"{row['seconds']:.1f} s",
            f"{row['peak_rss_mib']:.0f} MiB",
        )
    Console().print(table)


if __name__ == "__main__":
    main()
