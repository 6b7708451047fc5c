"""Kafka topic names and their automatic creation."""

from __future__ import annotations

from dataclasses import dataclass

from confluent_kafka import KafkaException
from confluent_kafka.admin import (  # type: ignore[attr-defined]  # NewTopic is re-exported at runtime only
    AdminClient,
    NewTopic,
)

PARTITIONS = 6  # room for up to six workers in one consumer group


@dataclass(frozen=True)
class Topics:
    """The four topics, optionally prefixed (``RV_TOPIC_PREFIX``) to share a cluster."""

    prefix: str = ""

    @property
    def pending(self) -> str:
        return f"{self.prefix}pending"

    @property
    def in_progress(self) -> str:
        return f"{self.prefix}in-progress"

    @property
    def completed(self) -> str:
        return f"{self.prefix}completed"

    @property
    def dead_letter(self) -> str:
        return f"{self.prefix}dead-letter"

    def all(self) -> tuple[str, ...]:
        return (self.pending, self.in_progress, self.completed, self.dead_letter)


def ensure_topics(bootstrap: str, topics: Topics, timeout: float = 30.0) -> list[str]:
    """Create whichever of the topics is missing; return the names created.

    Replication follows the cluster: three copies when there are three brokers or more.
    """
    admin = AdminClient({"bootstrap.servers": bootstrap})
    metadata = admin.list_topics(timeout=timeout)
    replication = min(3, len(metadata.brokers)) or 1
    missing = [name for name in topics.all() if name not in metadata.topics]
    if not missing:
        return []
    futures = admin.create_topics(
        [
            NewTopic(name, num_partitions=PARTITIONS, replication_factor=replication)
            for name in missing
        ],
        operation_timeout=timeout,
    )
    created = []
    for name, future in futures.items():
        try:
            future.result(timeout)
            created.append(name)
        except KafkaException as error:
            if error.args[0].name() != "TOPIC_ALREADY_EXISTS":
                raise
    return created
