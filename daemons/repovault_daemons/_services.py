"""Connections the daemons hold: Kafka clients with our delivery settings, and a database
connection that turns outages into retryable errors and reconnects."""

from __future__ import annotations

import logging
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Concatenate, ParamSpec, TypeVar

import psycopg
from confluent_kafka import Consumer, KafkaError, KafkaException, Message, Producer

from repovault import db
from repovault.settings import Settings, SettingsError
from repovault.topics import Topics, ensure_topics
from repovault_daemons import _logging
from repovault_daemons._consumer import RetryPolicy, Shutdown, TransientError

_KAFKA_LOG = logging.getLogger("rv.kafka")  # librdkafka's own messages, as JSON lines too
P = ParamSpec("P")
T = TypeVar("T")


def daemon_settings(*required: str) -> Settings:
    """Read the environment once, configure JSON logs, and exit 2 naming what is missing."""
    try:
        settings = Settings.from_env()
        settings.require(*required)
    except SettingsError as error:
        _logging.configure()
        logging.getLogger("rv").error("bad configuration", extra={"error": str(error)})
        sys.exit(2)
    _logging.configure(settings.log_level)
    return settings


def prepare_topics(bootstrap: str, topics: Topics, shutdown: Shutdown) -> bool:
    """Create the topics, waiting (with backoff) while Kafka is not reachable yet, so a
    daemon started before its broker waits instead of crash-looping. False if stopped."""
    next_delay = RetryPolicy().delays()
    while not shutdown.requested.is_set():
        try:
            created = ensure_topics(bootstrap, topics, timeout=5)
        except KafkaException as error:
            delay = next_delay()
            logging.getLogger("rv").warning(
                "Kafka not reachable yet; waiting", extra={"error": str(error), "retry_in": delay}
            )
            shutdown.requested.wait(delay)
            continue
        if created:
            logging.getLogger("rv").info("topics created", extra={"topics": created})
        return True
    return False


def producer(bootstrap: str) -> Producer:
    """Idempotent, acks=all, no batching delay (queue wait matters more than batch size)."""
    return Producer(
        {
            "bootstrap.servers": bootstrap,
            "logger": _KAFKA_LOG,
            "enable.idempotence": True,
            "acks": "all",
            "linger.ms": 0,
            "message.timeout.ms": 30000,
        }
    )


def consumer(bootstrap: str, group: str, session_timeout_ms: int = 6000) -> Consumer:
    """Manual commits only; a dead member's partitions move on after the session timeout."""
    return Consumer(
        {
            "bootstrap.servers": bootstrap,
            "logger": _KAFKA_LOG,
            "group.id": group,
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
            "session.timeout.ms": session_timeout_ms,
            "heartbeat.interval.ms": max(1000, session_timeout_ms // 3),
            "max.poll.interval.ms": 3_600_000,
            "fetch.wait.max.ms": 20,
        }
    )


def send(producer: Producer, topic: str, value: bytes, key: str | None = None) -> None:
    """Produce one message and wait until the brokers acknowledged it."""
    send_all(producer, topic, [(value, key)])


def send_all(producer: Producer, topic: str, messages: Sequence[tuple[bytes, str | None]]) -> None:
    """Produce messages and wait until the brokers acknowledged every one of them."""
    failures: list[KafkaError] = []

    def delivered(error: KafkaError | None, _message: Message) -> None:
        if error is not None:
            failures.append(error)

    try:
        for value, key in messages:
            producer.produce(topic, value, key.encode() if key else None, on_delivery=delivered)
    except BufferError:
        producer.flush(30)
        raise TransientError(f"Kafka's local queue is full for {topic}") from None
    remaining = producer.flush(30)
    if failures or remaining:
        reason = failures[0].str() if failures else "not acknowledged within 30 s"
        raise TransientError(f"Kafka did not take the messages for {topic}: {reason}")


class Database:
    """One connection, opened lazily, replaced after an outage; safe across threads."""

    def __init__(self, url: str) -> None:
        self._url = url
        self._connection: db.Connection | None = None
        self._lock = threading.Lock()

    @contextmanager
    def connection(self) -> Iterator[db.Connection]:
        with self._lock:
            try:
                if self._connection is None or self._connection.closed:
                    self._connection = db.connect(self._url)
                yield self._connection
            except (psycopg.OperationalError, psycopg.InterfaceError) as error:
                self.close()
                raise TransientError(f"database unavailable: {error}") from None

    def close(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None

    def run(
        self,
        function: Callable[Concatenate[db.Connection, P], T],
        *args: P.args,
        **kwargs: P.kwargs,
    ) -> T:
        """Call one of ``repovault.db``'s functions with this connection."""
        with self.connection() as connection:
            return function(connection, *args, **kwargs)
