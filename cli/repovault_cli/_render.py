"""Rich tables for jobs and statistics."""

from __future__ import annotations

from rich.table import Table

from repovault.db import Stats
from repovault.jobs import Job, JobState

STATE_STYLE = {
    JobState.QUEUED: "cyan",
    JobState.DISPATCHED: "cyan",
    JobState.RUNNING: "yellow",
    JobState.DONE: "green",
    JobState.UNCHANGED: "green",
    JobState.FAILED: "bold red",
    JobState.REJECTED: "red",
    JobState.DUPLICATE: "magenta",
}


def size(count: int | None) -> str:
    if count is None:
        return ""
    value = float(count)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return ""


def seconds(value: float | None) -> str:
    if value is None:
        return ""
    return f"{value * 1000:.0f} ms" if value < 1 else f"{value:.1f} s"


def jobs_table(jobs: list[Job], title: str | None = None) -> Table:
    table = Table(title=title, header_style="bold")
    for column in ("id", "repository", "state", "submitted by", "created"):
        table.add_column(column, overflow="fold")
    for column in ("queue wait", "clone+upload", "size"):
        table.add_column(column, justify="right")
    table.add_column("bucket", overflow="fold")
    for job in jobs:
        state = f"[{STATE_STYLE[job.state]}]{job.state}[/]"
        if job.error:
            state += f"\n[dim]{job.error}[/]"
        table.add_row(
            str(job.id)[:8],
            job.repo_url,
            state,
            job.submitted_by or "",
            job.creation_timestamp.astimezone().strftime("%Y-%m-%d %H:%M:%S"),
            seconds(job.queue_wait_seconds),
            seconds(job.work_seconds),
            size(job.bytes_stored),
            job.bucket or "",
        )
    return table


def stats_tables(result: Stats, title: str) -> list[Table]:
    states = Table(title=title, header_style="bold")
    states.add_column("state")
    states.add_column("jobs", justify="right")
    for state, count in result.jobs_by_state.items():
        states.add_row(state, str(count))
    states.add_row("[bold]stored[/]", size(result.bytes_stored))
    rate = f"{result.jobs_per_minute:.1f}/min" if result.jobs_per_minute else ""
    states.add_row("[bold]throughput[/]", rate)
    stages = Table(title="stages", header_style="bold")
    for column in ("stage", "jobs", "p50", "p95"):
        stages.add_column(column, justify="left" if column == "stage" else "right")
    for stage in result.stages:
        stages.add_row(
            stage.name, str(stage.count), seconds(stage.p50_seconds), seconds(stage.p95_seconds)
        )
    return [states, stages]
