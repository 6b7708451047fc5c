"""Kafka in KRaft mode (one node, broker and controller): jars from Maven, start, health."""

from __future__ import annotations

import base64
import os
import secrets
import shutil
import socket
import struct
import subprocess
from pathlib import Path

from .config import Config
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


def kafka_properties(cfg: Config) -> str:
    data = cfg.stack / "kafka" / "data"
    return f"""\
# Written by stack/localstack.py on every start.
process.roles=broker,controller
node.id=1
controller.quorum.bootstrap.servers=127.0.0.1:{cfg.kafka_controller_port}
listeners=PLAINTEXT://127.0.0.1:{cfg.kafka_port},CONTROLLER://127.0.0.1:{cfg.kafka_controller_port}
advertised.listeners=PLAINTEXT://127.0.0.1:{cfg.kafka_port},CONTROLLER://127.0.0.1:{cfg.kafka_controller_port}
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT
log.dirs={data}
num.partitions=1
offsets.topic.replication.factor=1
offsets.topic.num.partitions=1
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
transaction.state.log.num.partitions=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
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


def kafka_healthy(cfg: Config) -> tuple[bool, str]:
    try:
        brokers, cluster = kafka_metadata(cfg.kafka_port)
    except (OSError, struct.error, ValueError) as exc:
        return False, f"metadata request: {exc}"
    expected = read_state(cfg).get("kafka_cluster_id")
    if 1 not in brokers:
        return False, f"metadata lists brokers {brokers}, not node 1 yet"
    if expected and cluster != expected:
        return False, f"cluster id {cluster} is not this stack's {expected}"
    return True, "metadata ok"


def start_kafka(cfg: Config) -> subprocess.Popen[bytes] | None:
    if running_pid(cfg, "kafka") is not None:
        return None
    java = kafka_java()
    home = cfg.stack / "kafka"
    (home / "data").mkdir(parents=True, exist_ok=True)
    props = home / "server.properties"
    props.write_text(kafka_properties(cfg))
    log4j = home / "log4j2.properties"
    log4j.write_text(KAFKA_LOG4J)
    classpath = str(kafka_libs(cfg) / "*")
    state = read_state(cfg)
    formatted_port = state.get("kafka_formatted_controller_port")
    if (home / "data" / "meta.properties").exists():
        if formatted_port is not None and formatted_port != cfg.kafka_controller_port:
            raise StackError(
                "kafka",
                f"the storage in {home / 'data'} was formatted for controller port "
                f"{formatted_port}, not {cfg.kafka_controller_port}. Start with "
                f"RV_STACK_KAFKA_CONTROLLER_PORT={formatted_port}, or stop the stack and delete "
                f"{home / 'data'} (its topics are lost)",
            )
    else:
        cluster_id = state.get("kafka_cluster_id") or kafka_cluster_id()
        say(f"kafka: formatting storage {home / 'data'} (cluster id {cluster_id})")
        run_logged(
            "kafka",
            [
                java, f"-Dlog4j2.configurationFile={log4j}", "-cp", classpath,
                "kafka.tools.StorageTool", "format", "-t", cluster_id, "-c", str(props),
                "--standalone", "-g",
            ],
            cfg.log("kafka"),
            "formatting the Kafka storage",
            cwd=home,
        )  # fmt: skip
        update_state(
            cfg,
            kafka_cluster_id=cluster_id,
            kafka_formatted_controller_port=cfg.kafka_controller_port,
        )
    argv = [
        java, "-Xms256m", "-Xmx1g", "-XX:+UseG1GC", "-Djava.awt.headless=true",
        f"-Dlog4j2.configurationFile={log4j}", f"-Dkafka.logs.dir={cfg.logs}",
        "-cp", classpath, "kafka.Kafka", str(props),
    ]  # fmt: skip
    return spawn(cfg, "kafka", argv, environment_without("KAFKA_", "RV_"), home)
