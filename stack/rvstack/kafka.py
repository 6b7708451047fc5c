"""Kafka in KRaft mode: jars from Maven, start, health.

Node 1 ("kafka") is broker and controller; with RV_STACK_KAFKA_BROKERS=3 the broker-only nodes 2
and 3 ("kafka-2", "kafka-3") join it, and the internal topics get three replicas (min ISR 2).
"""

from __future__ import annotations

import base64
import os
import secrets
import shutil
import socket
import struct
import subprocess
from pathlib import Path

from .config import Config, KafkaNode
from .console import StackError, say
from .files import file_lock
from .processes import environment_without, run_logged, running_pid, spawn
from .settings import KAFKA_MIN_JAVA, KAFKA_VERSION, LOG4J_VERSION
from .state import read_state, update_state
from .tools import java_major, maven_command

KAFKA_POM = f"""<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>dev.repovault</groupId><artifactId>kafka-runtime</artifactId><version>1</version>
  <dependencies>
    <dependency><groupId>org.apache.kafka</groupId><artifactId>kafka_2.13</artifactId><version>{KAFKA_VERSION}</version></dependency>
    <dependency><groupId>org.apache.logging.log4j</groupId><artifactId>log4j-slf4j-impl</artifactId><version>{LOG4J_VERSION}</version></dependency>
    <dependency><groupId>org.apache.logging.log4j</groupId><artifactId>log4j-core</artifactId><version>{LOG4J_VERSION}</version></dependency>
  </dependencies>
</project>
"""

KAFKA_LOG4J = """\
# Written by stack/localstack.py on every start.
status = warn
appender.stdout.type = Console
appender.stdout.name = STDOUT
appender.stdout.layout.type = PatternLayout
appender.stdout.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = INFO
rootLogger.appenderRef.stdout.ref = STDOUT
logger.kafka.name = kafka
logger.kafka.level = INFO
logger.apache.name = org.apache.kafka
logger.apache.level = INFO
logger.state.name = state.change.logger
logger.state.level = WARN
logger.request.name = kafka.request.logger
logger.request.level = WARN
"""


def kafka_java() -> str:
    home = os.environ.get("RV_STACK_KAFKA_JAVA_HOME", "").strip()
    java = str(Path(home) / "bin" / "java") if home else shutil.which("java")
    if not java or not Path(java).exists():
        where = f"at {java}" if home else "on PATH"
        raise StackError(
            "kafka",
            f"no Java found {where} (Kafka {KAFKA_VERSION} needs Java {KAFKA_MIN_JAVA} or newer). "
            "Install it (apt-get install -y openjdk-17-jre-headless) or set "
            "RV_STACK_KAFKA_JAVA_HOME",
        )
    major = java_major(java)
    if major is None or major < KAFKA_MIN_JAVA:
        raise StackError(
            "kafka",
            f"{java} is Java {major or 'of unknown version'}; Kafka {KAFKA_VERSION} needs Java "
            f"{KAFKA_MIN_JAVA} or newer. Install a newer JDK or set RV_STACK_KAFKA_JAVA_HOME",
        )
    return java


def kafka_libs(cfg: Config) -> Path:
    return cfg.cache / "kafka" / "libs"


def kafka_installed(cfg: Config) -> bool:
    return (kafka_libs(cfg) / f"kafka_2.13-{KAFKA_VERSION}.jar").exists()


def install_kafka(cfg: Config) -> None:
    home = cfg.cache / "kafka"
    with file_lock(home / ".lock", "the Kafka download"):
        if kafka_installed(cfg):
            return
        mvn = maven_command("kafka")
        say(f"kafka: downloading Kafka {KAFKA_VERSION} jars from Maven Central")
        (home / "pom.xml").write_text(KAFKA_POM)
        tmp = home / "libs.partial"
        shutil.rmtree(tmp, ignore_errors=True)
        run_logged(
            "kafka",
            [
                *mvn, "dependency:copy-dependencies",
                f"-DoutputDirectory={tmp}", "-DincludeScope=runtime",
            ],
            home / "mvn.log",
            f"downloading Kafka {KAFKA_VERSION} with Maven",
            cwd=home,
        )  # fmt: skip
        shutil.rmtree(kafka_libs(cfg), ignore_errors=True)
        tmp.rename(kafka_libs(cfg))
        if not kafka_installed(cfg):
            raise StackError("kafka", f"Maven ran but {kafka_libs(cfg)} has no Kafka jar")
        say("kafka: jars cached")


def kafka_cluster_id() -> str:
    """A random Kafka Uuid (what `kafka-storage random-uuid` prints), without a JVM start."""
    while True:
        text = base64.urlsafe_b64encode(secrets.token_bytes(16)).decode().rstrip("=")
        if not text.startswith("-"):
            return text


def kafka_properties(cfg: Config, node: KafkaNode) -> str:
    replicas, min_isr = (3, 2) if cfg.kafka_brokers >= 3 else (1, 1)
    controller = f"127.0.0.1:{cfg.kafka_controller_port}"
    listeners = f"PLAINTEXT://127.0.0.1:{node.port}"
    if node.controller:
        listeners += f",CONTROLLER://{controller}"
    return f"""\
# Written by stack/localstack.py on every start.
process.roles={"broker,controller" if node.controller else "broker"}
node.id={node.node_id}
controller.quorum.bootstrap.servers={controller}
listeners={listeners}
advertised.listeners={listeners}
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT
log.dirs={node.home / "data"}
num.partitions=1
default.replication.factor={replicas}
min.insync.replicas={min_isr}
offsets.topic.replication.factor={replicas}
offsets.topic.num.partitions=1
transaction.state.log.replication.factor={replicas}
transaction.state.log.min.isr={min_isr}
transaction.state.log.num.partitions=1
share.coordinator.state.topic.replication.factor={replicas}
share.coordinator.state.topic.min.isr={min_isr}
share.coordinator.state.topic.num.partitions=1
group.initial.rebalance.delay.ms=0
auto.create.topics.enable=false
delete.topic.enable=true
"""


def _recv_exact(sock: socket.socket, size: int) -> bytes:
    chunks = b""
    while len(chunks) < size:
        chunk = sock.recv(size - len(chunks))
        if not chunk:
            raise ConnectionError("connection closed by the broker")
        chunks += chunk
    return chunks


def kafka_metadata(port: int, timeout: float = 2.0) -> tuple[list[int], str | None]:
    """Send a real Metadata request (v4, no topics); return the broker ids and the cluster id."""
    client = b"rv-localstack"
    request = struct.pack(">hhih", 3, 4, 7, len(client)) + client + struct.pack(">ib", 0, 0)
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(struct.pack(">i", len(request)) + request)
        (size,) = struct.unpack(">i", _recv_exact(sock, 4))
        data = _recv_exact(sock, size)
    pos = 0

    def take(fmt: str) -> int:
        nonlocal pos
        (value,) = struct.unpack_from(fmt, data, pos)
        pos += struct.calcsize(fmt)
        return int(value)

    def string() -> str | None:
        nonlocal pos
        length = take(">h")
        if length < 0:
            return None
        text = data[pos : pos + length].decode()
        pos += length
        return text

    if take(">i") != 7:
        raise ConnectionError("wrong correlation id in the broker's answer")
    take(">i")  # throttle_time_ms
    brokers = []
    for _ in range(take(">i")):
        brokers.append(take(">i"))
        string()  # host
        take(">i")  # port
        string()  # rack
    return brokers, string()


def kafka_node(cfg: Config, unit: str) -> KafkaNode:
    return next(node for node in cfg.kafka_nodes() if node.unit == unit)


def kafka_healthy(cfg: Config, node: KafkaNode) -> tuple[bool, str]:
    try:
        brokers, cluster = kafka_metadata(node.port)
    except (OSError, struct.error, ValueError) as exc:
        return False, f"metadata request: {exc}"
    expected = read_state(cfg).get("kafka_cluster_id")
    missing = [n.node_id for n in cfg.kafka_nodes() if n.node_id not in brokers]
    if missing:
        return False, f"metadata lists brokers {sorted(brokers)}, not node {missing} (yet)"
    if expected and cluster != expected:
        return False, f"cluster id {cluster} is not this stack's {expected}"
    return True, f"metadata ok ({len(brokers)} broker{'s' if len(brokers) > 1 else ''})"


def _cluster_of(node: KafkaNode) -> str | None:
    """The cluster id in the node's formatted storage (None when not formatted)."""
    try:
        text = (node.home / "data" / "meta.properties").read_text()
    except OSError:
        return None
    for line in text.splitlines():
        key, _, value = line.partition("=")
        if key.strip() == "cluster.id":
            return value.strip()
    return None


def prepare_kafka(cfg: Config) -> None:
    """Before any node starts: check the storage fits this configuration; settle the cluster id.

    The replication of the internal topics is fixed when they are first created, so a storage
    formatted for one broker count cannot serve another.
    """
    state = read_state(cfg)
    first = cfg.kafka_nodes()[0]
    formatted = _cluster_of(first)
    if formatted is not None:
        port = state.get("kafka_formatted_controller_port")
        brokers = state.get("kafka_formatted_brokers", 1)
        if port is not None and port != cfg.kafka_controller_port:
            fix = f"RV_STACK_KAFKA_CONTROLLER_PORT={port}"
            why = f"controller port {port}, not {cfg.kafka_controller_port}"
        elif brokers != cfg.kafka_brokers:
            fix = f"RV_STACK_KAFKA_BROKERS={brokers}"
            why = f"{brokers} broker(s), not {cfg.kafka_brokers}"
        else:
            fix = why = ""
        if why:
            raise StackError(
                "kafka",
                f"the storage in {first.home / 'data'} was formatted for {why}. Start with "
                f"{fix}, or run `python stack/localstack.py stop` and delete "
                f"{cfg.stack}/kafka* (its topics are lost)",
            )
    cluster = state.get("kafka_cluster_id") or formatted or kafka_cluster_id()
    for node in cfg.kafka_nodes():
        other = _cluster_of(node)
        if other is not None and other != cluster:
            raise StackError(
                node.unit,
                f"the storage in {node.home / 'data'} belongs to Kafka cluster {other}, not this "
                f"stack's {cluster}. Run `python stack/localstack.py stop` and delete {node.home}",
            )
    update_state(cfg, kafka_cluster_id=cluster)


def start_kafka(cfg: Config, node: KafkaNode) -> subprocess.Popen[bytes] | None:
    """Start one node (formatting its storage first when new); None when it runs already."""
    if running_pid(cfg, node.unit) is not None:
        return None
    java = kafka_java()
    home = node.home
    (home / "data").mkdir(parents=True, exist_ok=True)
    props = home / "server.properties"
    props.write_text(kafka_properties(cfg, node))
    log4j = home / "log4j2.properties"
    log4j.write_text(KAFKA_LOG4J)
    classpath = str(kafka_libs(cfg) / "*")
    if _cluster_of(node) is None:
        cluster_id = read_state(cfg)["kafka_cluster_id"]  # settled by prepare_kafka
        say(f"{node.unit}: formatting storage {home / 'data'} (cluster id {cluster_id})")
        run_logged(
            node.unit,
            [
                java, f"-Dlog4j2.configurationFile={log4j}", "-cp", classpath,
                "kafka.tools.StorageTool", "format", "-t", cluster_id, "-c", str(props),
                *(["--standalone"] if node.controller else []), "-g",
            ],
            cfg.log(node.unit),
            "formatting the Kafka storage",
            cwd=home,
        )  # fmt: skip
        if node.controller:
            update_state(
                cfg,
                kafka_formatted_controller_port=cfg.kafka_controller_port,
                kafka_formatted_brokers=cfg.kafka_brokers,
            )
    argv = [
        java, "-Xms256m", "-Xmx1g", "-XX:+UseG1GC", "-Djava.awt.headless=true",
        f"-Dlog4j2.configurationFile={log4j}", f"-Dkafka.logs.dir={cfg.logs}",
        "-cp", classpath, "kafka.Kafka", str(props),
    ]  # fmt: skip
    return spawn(cfg, node.unit, argv, environment_without("KAFKA_", "RV_"), home)
