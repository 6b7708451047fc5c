"""Running the real daemons as subprocesses, with their logs kept for the tests to read."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import httpx
from confluent_kafka import Consumer, Message

from tests.gitserve import free_port


class Daemon:
    """One daemon process (`injector` or `worker`), stopped by its pid."""

    def __init__(self, kind: str, env: dict[str, str], log_dir: Path, name: str) -> None:
        self.kind = kind
        self.name = name
        self.port = free_port()
        listen = "RV_INTAKE_LISTEN" if kind == "injector" else "RV_WORKER_HEALTH_LISTEN"
        self.env = {**env, listen: f"127.0.0.1:{self.port}"}
        if kind == "injector":
            self.env["RV_INTAKE_URL"] = f"http://127.0.0.1:{self.port}"
        self.log_path = log_dir / f"{name}.log"
        self._log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", f"repovault_daemons.{kind}"],
            env=self.env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def wait_healthy(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.name} exited: {self.log_path.read_text()[-3000:]}")
            try:
                if httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"{self.name} not healthy: {self.log_path.read_text()[-3000:]}")

    def metrics(self) -> str:
        return httpx.get(f"{self.url}/metrics", timeout=5).text

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60) -> int:
        if self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        self._log.close()
        return self.process.returncode

    def kill(self) -> None:
        self.stop(signal.SIGKILL)

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")


def daemon_env(stack_env: dict[str, str], prefix: str, work_dir: Path) -> dict[str, str]:
    """The environment the daemons and the CLI share in tests: loopback repositories
    allowed, topics under a prefix of their own."""
    return {
        **{k: v for k, v in os.environ.items() if not k.startswith("RV_")},
        **stack_env,
        "RV_TOPIC_PREFIX": prefix,
        "RV_ALLOW_PRIVATE_HOSTS": "127.0.0.1",
        "RV_WORK_DIR": str(work_dir),
        "RV_LOG_LEVEL": "INFO",
    }


def read_topics(env: dict[str, str], names: tuple[str, ...], seconds: float = 10) -> list[Message]:
    """Every message on the given topics (names without ``env``'s prefix), read for
    ``seconds`` from the beginning by a consumer group of its own."""
    prefix = env["RV_TOPIC_PREFIX"]
    consumer = Consumer(
        {
            "bootstrap.servers": env["RV_KAFKA_BOOTSTRAP"],
            "group.id": f"audit-{uuid.uuid4()}",
            "auto.offset.reset": "earliest",
        }
    )
    consumer.subscribe([f"{prefix}{name}" for name in names])
    seen: list[Message] = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        message = consumer.poll(0.5)
        if message is not None and not message.error():
            seen.append(message)
    consumer.close()
    return seen


def topic_text(env: dict[str, str], seconds: float = 10) -> str:
    """Every message (values and headers) on the four topics of ``env``'s prefix, as text,
    for checking that something secret is not in any of them."""
    topics = ("pending", "in-progress", "completed", "dead-letter")
    seen = [
        f"{(m.value() or b'').decode(errors='replace')} {m.headers() or []!r}"
        for m in read_topics(env, topics, seconds)
    ]
    assert seen, "no messages were read"
    return "\n".join(seen)
