"""A separate local stack with three Kafka brokers (RV_STACK_KAFKA_BROKERS=3), Kafka only."""

from __future__ import annotations

import json
import os
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from confluent_kafka import Consumer, Producer
from confluent_kafka.admin import AdminClient

from repovault.topics import PARTITIONS, Topics, ensure_topics
from tests.conftest import localstack
from tests.gitserve import free_port

PORT_VARIABLES = (
    "RV_STACK_PG_PORT",
    "RV_STACK_KAFKA_PORT",
    "RV_STACK_KAFKA_CONTROLLER_PORT",
    "RV_STACK_KAFKA_BROKER_2_PORT",
    "RV_STACK_KAFKA_BROKER_3_PORT",
    "RV_STACK_MINIO_PORT",
    "RV_STACK_MINIO_CONSOLE_PORT",
    "RV_STACK_KEYCLOAK_PORT",
    "RV_STACK_KEYCLOAK_MGMT_PORT",
)
KAFKA_UNITS = ("kafka", "kafka-2", "kafka-3")


@dataclass
class Cluster:
    env: dict[str, str]  # the environment localstack runs with
    stack: Path
    bootstrap: str
    pids: dict[str, int]  # unit -> pid, as started


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")


def _replicas(bootstrap: str, topic: str) -> list[int]:
    """The replica count of each partition of ``topic``."""
    metadata = AdminClient({"bootstrap.servers": bootstrap}).list_topics(topic, timeout=20)
    return [len(p.replicas) for p in metadata.topics[topic].partitions.values()]


def _round_trip(bootstrap: str, topic: str, group: str) -> None:
    """Produce one message with acks=all and idempotence, then read it back in ``group``."""
    payload = uuid.uuid4().bytes
    producer = Producer({"bootstrap.servers": bootstrap, "acks": "all", "enable.idempotence": True})
    errors: list[object] = []
    producer.produce(topic, payload, on_delivery=lambda err, _msg: errors.append(err))
    assert producer.flush(20) == 0, "the message was not delivered in time"
    assert errors == [None]
    consumer = Consumer(
        {"bootstrap.servers": bootstrap, "group.id": group, "auto.offset.reset": "earliest"}
    )
    consumer.subscribe([topic])
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            message = consumer.poll(1.0)
            if message is not None and message.error() is None and message.value() == payload:
                consumer.commit(message, asynchronous=False)
                return
        pytest.fail(f"the message did not come back from {topic}")
    finally:
        consumer.close()


@pytest.fixture(scope="class")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """Kafka alone, three brokers, in a stack directory and on ports of its own."""
    stack = tmp_path_factory.mktemp("brokers") / "stack"
    ports: set[int] = set()
    while len(ports) < len(PORT_VARIABLES):
        ports.add(free_port())
    env = {
        **os.environ,
        **{name: str(port) for name, port in zip(PORT_VARIABLES, sorted(ports), strict=True)},
        "RV_STACK_DIR": str(stack),
        "RV_STACK_KAFKA_BROKERS": "3",
    }
    started = localstack("start", "--only", "kafka", env=env, timeout=300)
    try:
        assert started.returncode == 0, started.stderr[-6000:]
        pids = {
            unit: int(json.loads((stack / "run" / f"{unit}.pid").read_text())["pid"])
            for unit in KAFKA_UNITS
        }
        printed = localstack("env", "--json", env=env)
        assert printed.returncode == 0, printed.stderr
        yield Cluster(env, stack, json.loads(printed.stdout)["RV_KAFKA_BOOTSTRAP"], pids)
    finally:
        localstack("stop", env=env, timeout=180)


class TestThreeBrokers:
    def test_env_names_every_broker(self, cluster: Cluster) -> None:
        """`env` gives RV_KAFKA_BOOTSTRAP with the three brokers' addresses."""
        ports = (
            "RV_STACK_KAFKA_PORT",
            "RV_STACK_KAFKA_BROKER_2_PORT",
            "RV_STACK_KAFKA_BROKER_3_PORT",
        )
        assert cluster.bootstrap == ",".join(f"127.0.0.1:{cluster.env[v]}" for v in ports)

    def test_topics_get_three_replicas(self, cluster: Cluster) -> None:
        """ensure_topics creates the four topics with three replicas of every partition."""
        topics = Topics(f"t{uuid.uuid4().hex[:8]}-")
        assert sorted(ensure_topics(cluster.bootstrap, topics)) == sorted(topics.all())
        for topic in topics.all():
            assert _replicas(cluster.bootstrap, topic) == [3] * PARTITIONS

    def test_survives_a_stopped_broker(self, cluster: Cluster) -> None:
        """With broker 3 stopped by `stop --only kafka-3`, acks=all still produces and consumes."""
        topics = Topics(f"t{uuid.uuid4().hex[:8]}-")
        ensure_topics(cluster.bootstrap, topics)
        topic = topics.pending
        group = f"rv-brokers-{uuid.uuid4().hex[:8]}"
        _round_trip(cluster.bootstrap, topic, group)
        assert _replicas(cluster.bootstrap, "__consumer_offsets") == [3]
        stopped = localstack("stop", "--only", "kafka-3", env=cluster.env, timeout=120)
        assert stopped.returncode == 0, stopped.stderr
        assert not _alive(cluster.pids["kafka-3"])
        assert not (cluster.stack / "run" / "kafka-3.pid").exists()
        assert all(_alive(cluster.pids[unit]) for unit in ("kafka", "kafka-2"))
        _round_trip(cluster.bootstrap, topic, group)

    def test_stop_leaves_no_process(self, cluster: Cluster) -> None:
        """The stack's own `stop` ends every Kafka node it started."""
        result = localstack("stop", env=cluster.env, timeout=180)
        assert result.returncode == 0, result.stderr
        assert not [unit for unit, pid in cluster.pids.items() if _alive(pid)]
        assert not list((cluster.stack / "run").glob("kafka*.pid"))
