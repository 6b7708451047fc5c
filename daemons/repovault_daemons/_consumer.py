"""A Kafka consumer as a small pipeline: poll, decode, process, commit.

Commit and retry policies are explicit values. A message that cannot be processed by any
retry (malformed, or one that makes the step raise unexpectedly) goes to the dead-letter
topic with the reason, and the daemon carries on. Transient failures (database or storage
briefly away) are retried with backoff and the offset is not committed until the step
succeeds, so nothing is lost. Shutdown is a flag set by the signal handler.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from types import FrameType

from confluent_kafka import Consumer, KafkaException, Message, Producer

from repovault.db import DatabaseUnavailable
from repovault.messages import MalformedMessage
from repovault_daemons._http import HttpSide
from repovault_daemons._metrics import Metrics

log = logging.getLogger(__name__)


class TransientError(Exception):
    """Worth retrying: a service the step needs is briefly unavailable."""


class ShutdownNow(BaseException):
    """Raised in the main thread on a second stop signal: abandon the current message."""


@dataclass(frozen=True)
class RetryPolicy:
    """Backoff for transient failures: doubles from ``initial`` up to ``ceiling``, forever,
    until shutdown (a message is never dropped because a service was down)."""

    initial_seconds: float = 0.2
    ceiling_seconds: float = 10.0
    # A KafkaException from a step (producing to the next topic) is about the cluster, not the
    # message: retried like the database, instead of ending the daemon.
    transient: tuple[type[BaseException], ...] = (
        TransientError,
        DatabaseUnavailable,
        KafkaException,
    )

    def delays(self) -> Callable[[], float]:
        current = [self.initial_seconds]

        def next_delay() -> float:
            delay = current[0]
            current[0] = min(delay * 2, self.ceiling_seconds)
            return delay

        return next_delay


@dataclass(frozen=True)
class CommitPolicy:
    """Offsets are committed synchronously after each message has been fully handled,
    i.e. after PostgreSQL recorded its outcome."""

    synchronous: bool = True

    def apply(self, consumer: Consumer, message: Message) -> None:
        if self.synchronous:
            consumer.commit(message=message, asynchronous=False)
        else:
            consumer.commit(message=message, asynchronous=True)


@dataclass
class Shutdown:
    """First SIGTERM/SIGINT: finish the current message, then stop. Second: stop now."""

    requested: threading.Event = field(default_factory=threading.Event)

    def install(self) -> None:
        for number in (signal.SIGTERM, signal.SIGINT):
            signal.signal(number, self._handle)
            signal.siginterrupt(number, False)  # a clone in progress must not see EINTR

    def _handle(self, number: int, frame: FrameType | None) -> None:
        if self.requested.is_set():
            raise ShutdownNow
        log.info("stop requested", extra={"signal": signal.Signals(number).name})
        self.requested.set()


Step = Callable[[Message], None]
LAG_INTERVAL_SECONDS = 5.0


@dataclass
class PipelineStatus:
    """What the health endpoint and metrics report about a running pipeline."""

    retrying: bool = False  # a transient failure is being retried (a service is away)
    lag: int = 0  # messages on the assigned partitions not consumed yet
    lag_measured_at: float = 0.0


@dataclass(frozen=True)
class Pipeline:
    """Consume ``topic`` with ``step``; poison messages go to ``dead_letter_topic``."""

    consumer: Consumer
    producer: Producer
    topic: str
    dead_letter_topic: str
    step: Step
    shutdown: Shutdown
    retry: RetryPolicy = RetryPolicy()
    commit: CommitPolicy = CommitPolicy()
    status: PipelineStatus = field(default_factory=PipelineStatus)

    def observe(self, metrics: Metrics, http: HttpSide) -> None:
        """Report this pipeline's lag as a gauge and its retrying state as health."""
        metrics.before_render(lambda: metrics.gauge("queue_lag", self.status.lag, topic=self.topic))
        http.healthy = lambda: not self.status.retrying

    def run(self) -> None:
        self.consumer.subscribe([self.topic])
        try:
            while not self.shutdown.requested.is_set():
                message = self.consumer.poll(0.2)
                if time.monotonic() - self.status.lag_measured_at > LAG_INTERVAL_SECONDS:
                    self._measure_lag()
                if message is None:
                    continue
                if message.error():
                    log.warning("consumer error", extra={"error": str(message.error())})
                    continue
                if self._handle(message):
                    self.commit.apply(self.consumer, message)
        except ShutdownNow:
            log.info("stopped mid-message; it will be redelivered")
        finally:
            self.consumer.close()
            self.producer.flush(10)

    def _measure_lag(self) -> None:
        self.status.lag_measured_at = time.monotonic()
        try:
            total = 0
            for partition in self.consumer.position(self.consumer.assignment()):
                low, high = self.consumer.get_watermark_offsets(partition, timeout=2)
                position = partition.offset if partition.offset >= 0 else low
                total += max(high - position, 0)
            self.status.lag = total
        except KafkaException as error:
            log.warning("could not measure the consumer lag", extra={"error": str(error)})

    def _handle(self, message: Message) -> bool:
        """True when the message is done with (processed or dead-lettered)."""
        next_delay = self.retry.delays()
        while True:
            try:
                self.step(message)
                self.status.retrying = False
                return True
            except self.retry.transient as error:
                self.status.retrying = True
                if self.shutdown.requested.is_set():
                    log.info("stopping with a message unfinished; it will be redelivered")
                    return False
                delay = next_delay()
                log.warning(
                    "transient failure, retrying", extra={"error": str(error), "retry_in": delay}
                )
                time.sleep(delay)
            except MalformedMessage as error:
                self._dead_letter(message, f"malformed: {error}")
                return True
            except Exception as error:  # one bad message must not crash-loop the daemon
                log.exception("message could not be processed")
                self._dead_letter(message, f"{type(error).__name__}: {error}")
                return True

    def _dead_letter(self, message: Message, reason: str) -> None:
        headers: list[tuple[str, str | bytes | None]] = [
            ("rv-reason", reason.encode()[:1000]),
            ("rv-source-topic", (message.topic() or "").encode()),
            ("rv-source-offset", str(message.offset()).encode()),
        ]
        self.producer.produce(
            self.dead_letter_topic, message.value(), message.key(), headers=headers
        )
        self.producer.flush(30)
        log.error(
            "message sent to the dead-letter topic",
            extra={"reason": reason, "topic": message.topic(), "offset": message.offset()},
        )
