"""A real Apache Kafka (KRaft) broker, or a three-node cluster, for local development and tests.

Kafka's jars are resolved from Maven Central with Maven (``deploy/kafka/pom.xml``) once and cached;
the broker then runs as ``java -cp '<libs>/*' kafka.Kafka server.properties``, exactly as Kafka's
own ``bin/kafka-server-start.sh`` does, in combined broker+controller mode on loopback ports.

All state (configuration, data, logs, pid file) lives under one ``home`` directory, so a broker
started by one process (``tuneline dev kafka start``) can be found and stopped by another.

:class:`LocalKafkaCluster` runs several such nodes (``home/node-<id>``), each a broker and a
voter of one static controller quorum, from the same jars: the replicated set-up (RF 3,
``min.insync.replicas=2``) the fault-injection suite kills brokers of.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
import re
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import time
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

from kafka import KafkaAdminClient
from kafka.errors import KafkaError

from shared.events.acls import SERVICES, create_service_acls, kafka_principal
from shared.events.publisher import min_insync_replicas_for
from tuneline.devtools.local_pki import CertificateAuthority

#: Used when the pom cannot be read; the pom's ``kafka.version`` property is the source of truth.
DEFAULT_KAFKA_VERSION = "4.1.1"
DEFAULT_PORT = 19092
DEFAULT_CONTROLLER_PORT = 19093
DEFAULT_HEAP = "-Xmx512m -Xms256m"
CACHE_ENV = "TUNELINE_KAFKA_CACHE"
POM_ENV = "TUNELINE_KAFKA_POM"
_POM_MARKER = ".pom.sha256"
MIN_JAVA_MAJOR = 17

_HOST = "127.0.0.1"
_NODE_ID = 1
# The JVM flags Kafka's bin/kafka-run-class.sh uses for the broker (KAFKA_JVM_PERFORMANCE_OPTS).
_JVM_OPTS = (
    "-server",
    "-XX:+UseG1GC",
    "-XX:MaxGCPauseMillis=20",
    "-XX:InitiatingHeapOccupancyPercent=35",
    "-XX:+ExplicitGCInvokesConcurrent",
    "-Djava.awt.headless=true",
    # Kafka logs from its own shutdown hooks; keep log4j alive until the JVM is gone.
    "-Dlog4j2.shutdownHookEnabled=false",
)
# The storage tool is a short-lived JVM: the C1 compiler alone starts it ~0.5 s sooner.
_TOOL_JVM_OPTS = ("-Xmx256m", "-XX:TieredStopAtLevel=1")
_POM_NS = "{http://maven.apache.org/POM/4.0.0}"


class LocalKafkaError(RuntimeError):
    """Base class for local-broker failures."""


class KafkaPrerequisiteError(LocalKafkaError):
    """Java 17+ or Maven is missing; the message says what to install."""


class KafkaProvisionError(LocalKafkaError):
    """Resolving Kafka's jars from Maven Central failed."""


class KafkaStartError(LocalKafkaError):
    """The broker did not come up (or storage formatting failed); the message has the log's tail."""


@dataclass(frozen=True)
class KafkaStatus:
    running: bool
    pid: int | None
    bootstrap: str
    home: Path
    startup_seconds: float | None = None


def default_pom() -> Path:
    """``deploy/kafka/pom.xml`` of this checkout, or ``$TUNELINE_KAFKA_POM``."""
    env = os.environ.get(POM_ENV)
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[2] / "deploy" / "kafka" / "pom.xml"


def kafka_version(pom: Path | None = None) -> str:
    """The Kafka version the pom pins (``<kafka.version>``)."""
    pom = pom or default_pom()
    try:
        root = ET.parse(pom).getroot()  # noqa: S314 - our own checked-in pom
    except (OSError, ET.ParseError):
        return DEFAULT_KAFKA_VERSION
    node = root.find(f"{_POM_NS}properties/{_POM_NS}kafka.version")
    if node is None:
        node = root.find("properties/kafka.version")
    return (node.text or "").strip() if node is not None and node.text else DEFAULT_KAFKA_VERSION


def default_cache_dir(version: str | None = None) -> Path:
    """``$TUNELINE_KAFKA_CACHE`` (the jar directory itself), else
    ``${XDG_CACHE_HOME:-~/.cache}/tuneline/kafka/<version>/libs``."""
    env = os.environ.get(CACHE_ENV)
    if env:
        return Path(env).expanduser()
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "tuneline" / "kafka" / (version or kafka_version()) / "libs"


def new_cluster_id() -> str:
    """A Kafka cluster id: a random UUID in URL-safe base64 without padding (as ``Uuid``)."""
    while True:
        cid = base64.urlsafe_b64encode(uuid.uuid4().bytes).rstrip(b"=").decode("ascii")
        if not cid.startswith("-"):  # Kafka avoids ids that look like command-line flags
            return cid


def free_port(host: str = _HOST) -> int:
    """A currently free TCP port on ``host`` (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    stat = Path(f"/proc/{pid}/stat")
    if stat.exists():  # a zombie has exited; it only waits to be reaped
        with contextlib.suppress(OSError, IndexError):
            return stat.read_text().rsplit(")", 1)[1].split()[0] != "Z"
    return True


def _is_our_broker(pid: int, config: Path) -> bool:
    """Whether ``pid`` is a ``kafka.Kafka`` process for ``config`` (guards against pid reuse)."""
    if not _pid_alive(pid):
        return False
    cmdline = Path(f"/proc/{pid}/cmdline")
    if not cmdline.exists():  # not Linux: trust the pid file
        return True
    try:
        argv = cmdline.read_bytes().split(b"\0")
    except OSError:
        return False
    return b"kafka.Kafka" in argv and str(config).encode() in argv


def _tail(path: Path, lines: int = 40) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


def _properties(values: Mapping[str, object]) -> str:
    return "".join(f"{key}={value}\n" for key, value in values.items())


_LOG4J2_XML = """<?xml version="1.0" encoding="UTF-8"?>
<!-- Written by tuneline.devtools.kafka: the local broker logs to files, not stdout. -->
<Configuration status="WARN">
  <Appenders>
    <RollingFile name="server" fileName="{logs}/server.log"
                 filePattern="{logs}/server.log.%i">
      <PatternLayout pattern="[%d] %p %m (%c)%n"/>
      <Policies><SizeBasedTriggeringPolicy size="10 MB"/></Policies>
      <DefaultRolloverStrategy max="3"/>
    </RollingFile>
  </Appenders>
  <Loggers>
    <Root level="INFO"><AppenderRef ref="server"/></Root>
    <Logger name="kafka.request.logger" level="WARN"/>
    <Logger name="state.change.logger" level="WARN"/>
    <Logger name="kafka.log.LogCleaner" level="WARN"/>
    <Logger name="org.apache.kafka.raft" level="WARN"/>
    <Logger name="org.apache.kafka.storage" level="WARN"/>
  </Loggers>
</Configuration>
"""


#: The SCRAM mechanism of a secured local broker, and its super user (it creates the ACLs).
SCRAM_MECHANISM = "SCRAM-SHA-512"
KAFKA_ADMIN_USER = "admin"
_AUTHORIZER = "org.apache.kafka.metadata.authorizer.StandardAuthorizer"


@dataclass(frozen=True)
class BrokerSecurity:
    """What a secured local broker runs with: a ``SASL_SSL`` listener (TLS from a local CA,
    SCRAM-SHA-512 users), the controller listener behind SASL ``PLAIN`` with the admin's
    password, and KRaft's StandardAuthorizer denying whatever no ACL allows.

    One SCRAM user per service (named after it) plus :data:`KAFKA_ADMIN_USER`, the super user;
    each password lives in ``folder/users/<name>.password`` (0600), which is what
    ``TUNELINE_KAFKA_PASSWORD_FILE`` points a process at. Made once under ``folder`` and
    reused, so a restarted broker keeps its users.
    """

    folder: Path
    ca_file: Path
    #: The broker's PEM key store: its private key, then its certificate.
    keystore_file: Path
    passwords: Mapping[str, str]
    admin: str = KAFKA_ADMIN_USER

    @classmethod
    def ensure(cls, folder: Path, users: Iterable[str] = SERVICES) -> BrokerSecurity:
        """The CA, broker certificate and users under ``folder``, made where missing."""
        folder = Path(folder).expanduser().absolute()
        authority = CertificateAuthority(folder / "pki", name="Tuneline local Kafka CA")
        broker = authority.issue("broker", common_name="localhost", server=True)
        keystore = folder / "pki" / "broker-keystore.pem"
        keystore.write_bytes(broker.key_file.read_bytes() + broker.cert_file.read_bytes())
        keystore.chmod(0o600)
        user_dir = folder / "users"
        user_dir.mkdir(parents=True, exist_ok=True)
        passwords: dict[str, str] = {}
        for user in (KAFKA_ADMIN_USER, *users):
            path = user_dir / f"{user}.password"
            if not path.is_file():
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                with os.fdopen(fd, "w") as handle:
                    handle.write(secrets.token_urlsafe(24) + "\n")
            passwords[user] = path.read_text().strip()
        return cls(
            folder=folder,
            ca_file=authority.ca_file,
            keystore_file=keystore,
            passwords=MappingProxyType(passwords),
        )

    def password_file(self, user: str) -> Path:
        return self.folder / "users" / f"{user}.password"

    def client_environment(self, user: str) -> dict[str, str]:
        """The ``TUNELINE_KAFKA_*`` variables a process logging in as ``user`` runs with."""
        if user not in self.passwords:
            raise KeyError(f"no Kafka user {user!r}")
        return {
            "TUNELINE_KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
            "TUNELINE_KAFKA_SASL_MECHANISM": SCRAM_MECHANISM,
            "TUNELINE_KAFKA_USERNAME": user,
            "TUNELINE_KAFKA_PASSWORD_FILE": str(self.password_file(user)),
            "TUNELINE_KAFKA_SSL_CAFILE": str(self.ca_file),
        }

    def client_security(self, user: str, password: str | None = None) -> dict[str, object]:
        """kafka-python settings logging in as ``user`` (with ``password`` instead of the
        real one, to try a wrong one)."""
        return {
            "security_protocol": "SASL_SSL",
            "ssl_cafile": str(self.ca_file),
            "ssl_check_hostname": True,
            "sasl_mechanism": SCRAM_MECHANISM,
            "sasl_plain_username": user,
            "sasl_plain_password": self.passwords[user] if password is None else password,
        }

    def scram_arguments(self) -> list[str]:
        """``--add-scram`` arguments of ``kafka-storage format``: KRaft keeps SCRAM users in
        its metadata log, so they exist from the first start (the broker's own login too)."""
        arguments: list[str] = []
        for user, password in sorted(self.passwords.items()):
            arguments += ["--add-scram", f'{SCRAM_MECHANISM}=[name={user},password="{password}"]']
        return arguments

    def listener_properties(self, port: int, controller_port: int) -> dict[str, str]:
        """The broker settings of the secured listeners and the authorizer."""
        admin_password = self.passwords[self.admin]
        scram_login = (
            "org.apache.kafka.common.security.scram.ScramLoginModule required "
            f'username="{self.admin}" password="{admin_password}";'
        )
        # the controller listener cannot use SCRAM (its users live in the metadata it
        # serves); PLAIN with the admin's password keeps it closed to anonymous clients
        plain_login = (
            "org.apache.kafka.common.security.plain.PlainLoginModule required "
            f'username="{self.admin}" password="{admin_password}" '
            f'user_{self.admin}="{admin_password}";'
        )
        return {
            "listeners": f"SASL_SSL://{_HOST}:{port},CONTROLLER://{_HOST}:{controller_port}",
            "advertised.listeners": f"SASL_SSL://{_HOST}:{port}",
            "inter.broker.listener.name": "SASL_SSL",
            "listener.security.protocol.map": "SASL_SSL:SASL_SSL,CONTROLLER:SASL_PLAINTEXT",
            "sasl.enabled.mechanisms": SCRAM_MECHANISM,
            "sasl.mechanism.inter.broker.protocol": SCRAM_MECHANISM,
            "listener.name.sasl_ssl.sasl.enabled.mechanisms": SCRAM_MECHANISM,
            f"listener.name.sasl_ssl.{SCRAM_MECHANISM.lower()}.sasl.jaas.config": scram_login,
            "sasl.mechanism.controller.protocol": "PLAIN",
            "listener.name.controller.sasl.enabled.mechanisms": "PLAIN",
            "listener.name.controller.plain.sasl.jaas.config": plain_login,
            "ssl.keystore.type": "PEM",
            "ssl.keystore.location": str(self.keystore_file),
            "ssl.truststore.type": "PEM",
            "ssl.truststore.location": str(self.ca_file),
            "authorizer.class.name": _AUTHORIZER,
            "super.users": kafka_principal(self.admin),
            "allow.everyone.if.no.acl.found": "false",
        }


@dataclass
class LocalKafka:
    """A single-node KRaft broker (``process.roles=broker,controller``) on 127.0.0.1.

    ``home`` holds ``server.properties``, ``log4j2.xml``, ``data/`` (the log dirs and the KRaft
    metadata log), ``logs/`` (``server.log`` and the JVM's own ``broker.out``), ``broker.pid`` and
    ``state.json``. ``cache_dir`` holds Kafka's jars (see :func:`default_cache_dir`).
    """

    home: Path
    port: int = DEFAULT_PORT
    controller_port: int = DEFAULT_CONTROLLER_PORT
    heap: str = DEFAULT_HEAP
    #: This node's id; 1 for a single broker.
    node_id: int = _NODE_ID
    #: ``id@host:port,...`` of a static controller quorum (a cluster); ``None``: this node alone
    #: is a dynamic single-voter quorum (formatted with ``--standalone``).
    quorum_voters: str | None = None
    #: Replicas of Kafka's internal topics (consumer offsets, transactions); the cluster size.
    internal_replication_factor: int = 1
    cache_dir: Path | None = None
    pom: Path = field(default_factory=default_pom)
    #: Extra broker settings, applied over the generated ones.
    overrides: dict[str, str] = field(default_factory=dict)
    #: A ``SASL_SSL`` listener with SCRAM users and ACLs instead of ``PLAINTEXT`` (one node).
    security: BrokerSecurity | None = None
    #: Seconds the last :meth:`start` took to bring a broker up, from writing its configuration
    #: (storage format included, provisioning excluded) to serving metadata; ``None`` before a
    #: start, or when :meth:`start` reused a running broker.
    startup_seconds: float | None = field(default=None, init=False)
    #: Seconds the last :meth:`start` spent in :meth:`provision` (about 0 with a warm cache).
    provision_seconds: float | None = field(default=None, init=False)
    _proc: subprocess.Popen[bytes] | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        self.home = Path(self.home).expanduser().absolute()
        self.pom = Path(self.pom)
        if self.cache_dir is None:
            self.cache_dir = default_cache_dir(kafka_version(self.pom))
        self.cache_dir = Path(self.cache_dir).expanduser().absolute()

    # ----------------------------------------------------------------------------- paths

    @property
    def bootstrap(self) -> str:
        return f"{_HOST}:{self.port}"

    @property
    def libs_dir(self) -> Path:
        assert self.cache_dir is not None
        return self.cache_dir

    @property
    def config_path(self) -> Path:
        return self.home / "server.properties"

    @property
    def log4j_path(self) -> Path:
        return self.home / "log4j2.xml"

    @property
    def data_dir(self) -> Path:
        return self.home / "data"

    @property
    def logs_dir(self) -> Path:
        return self.home / "logs"

    @property
    def server_log(self) -> Path:
        return self.logs_dir / "server.log"

    @property
    def stdout_log(self) -> Path:
        return self.logs_dir / "broker.out"

    @property
    def pid_path(self) -> Path:
        return self.home / "broker.pid"

    @property
    def state_path(self) -> Path:
        return self.home / "state.json"

    # ----------------------------------------------------------------------------- tools

    @staticmethod
    def java_executable() -> str:
        """``$JAVA_HOME/bin/java`` or ``java`` on PATH; raises if neither is there."""
        java_home = os.environ.get("JAVA_HOME")
        if java_home:
            candidate = Path(java_home) / "bin" / "java"
            if candidate.is_file() and os.access(candidate, os.X_OK):
                return str(candidate)
        found = shutil.which("java")
        if not found:
            raise KafkaPrerequisiteError(
                f"Java {MIN_JAVA_MAJOR}+ is required to run the local Kafka broker but no `java` "
                "was found on PATH (or in $JAVA_HOME). Install a JDK/JRE 17 or newer, e.g. "
                "`apt-get install openjdk-17-jre-headless` or `brew install openjdk@17`."
            )
        return found

    @staticmethod
    def maven_executable() -> str:
        found = shutil.which("mvn")
        if not found:
            raise KafkaPrerequisiteError(
                "Maven is required once, to download Apache Kafka's jars from Maven Central, but "
                "no `mvn` was found on PATH. Install Apache Maven 3.6+, e.g. `apt-get install "
                "maven` or `brew install maven`, or point $TUNELINE_KAFKA_CACHE at a directory "
                "that already holds the jars."
            )
        return found

    def check_java_version(self, java: str | None = None) -> None:
        """Raise :class:`KafkaPrerequisiteError` when ``java`` (default: the one found) is
        older than Kafka 4 needs; an unreadable version is let through."""
        java = java or self.java_executable()
        try:
            out = subprocess.run(
                [java, "-version"], capture_output=True, text=True, timeout=30, check=False
            )
        except (OSError, subprocess.TimeoutExpired):
            return
        match = re.search(r'version "(\d+)(?:\.(\d+))?', out.stderr + out.stdout)
        if not match:
            return
        major = int(match.group(1))
        if major == 1 and match.group(2):  # "1.8.0_x" style
            major = int(match.group(2))
        if major < MIN_JAVA_MAJOR:
            raise KafkaPrerequisiteError(
                f"Kafka 4 needs Java {MIN_JAVA_MAJOR}+, but `{java}` is Java {major}. Install a "
                "JDK/JRE 17 or newer and put it first on PATH (or set JAVA_HOME)."
            )

    # ----------------------------------------------------------------------------- provision

    def _pom_digest(self) -> str | None:
        try:
            return hashlib.sha256(self.pom.read_bytes()).hexdigest()
        except OSError:
            return None

    def is_provisioned(self) -> bool:
        """Whether the cache holds Kafka's jars, resolved from the current pom.

        Maven writes ``.pom.sha256`` next to the jars; when the pom has changed since (a new
        dependency, say), the cache is stale. A jar directory without that marker (one a user
        pointed ``$TUNELINE_KAFKA_CACHE`` at) is taken as it is.
        """
        libs = self.libs_dir
        if not (libs.is_dir() and any(libs.glob("kafka_2.13-*.jar"))):
            return False
        marker = libs / _POM_MARKER
        if not marker.is_file():
            return True
        digest = self._pom_digest()
        return digest is None or marker.read_text().strip() == digest

    def provision(self) -> Path:
        """Resolve Kafka's jars into the cache with Maven unless they are already there."""
        self.java_executable()  # Maven and the broker both need it: say so first
        if self.is_provisioned():
            return self.libs_dir
        mvn = self.maven_executable()
        digest = self._pom_digest()
        if digest is None:
            raise KafkaProvisionError(
                f"Kafka's pom was not found at {self.pom}; run from a Tuneline checkout or set "
                f"${POM_ENV}."
            )
        libs = self.libs_dir
        libs.parent.mkdir(parents=True, exist_ok=True)
        staging = libs.parent / f".{libs.name}.tmp-{os.getpid()}"
        shutil.rmtree(staging, ignore_errors=True)
        cmd = [
            mvn,
            "-q",
            "-B",
            "-f",
            str(self.pom),
            "dependency:copy-dependencies",
            f"-Dkafka.libs.dir={staging}",
        ]
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if proc.returncode != 0 or not any(staging.glob("kafka_2.13-*.jar")):
            shutil.rmtree(staging, ignore_errors=True)
            tail = "\n".join((proc.stdout + proc.stderr).splitlines()[-40:])
            raise KafkaProvisionError(
                f"`{shlex.join(cmd)}` failed (exit {proc.returncode}); Maven Central must be "
                f"reachable the first time.\n{tail}"
            )
        (staging / _POM_MARKER).write_text(digest + "\n")
        stale = libs.parent / f".{libs.name}.stale-{os.getpid()}"
        if libs.exists():  # resolved from an older pom: move it aside, then swap in the new set
            with contextlib.suppress(OSError):
                libs.rename(stale)
        try:
            staging.rename(libs)  # atomic: a concurrent provisioner never sees half a cache
        except OSError:
            shutil.rmtree(staging, ignore_errors=True)
            if not self.is_provisioned():
                raise
        shutil.rmtree(stale, ignore_errors=True)
        return libs

    # ----------------------------------------------------------------------------- config

    def server_properties(self) -> dict[str, str]:
        """The broker settings :meth:`start` writes to ``server.properties``."""
        replicas = self.internal_replication_factor
        # a write must reach two copies where there are three (Kafka's durability guidance)
        min_isr = min_insync_replicas_for(replicas)
        quorum = (
            {"controller.quorum.voters": self.quorum_voters}
            if self.quorum_voters
            else {"controller.quorum.bootstrap.servers": f"{_HOST}:{self.controller_port}"}
        )
        props: dict[str, object] = {
            # KRaft, combined mode: this node is a broker and a controller
            "process.roles": "broker,controller",
            "node.id": self.node_id,
            **quorum,
            "listeners": (
                f"PLAINTEXT://{_HOST}:{self.port},CONTROLLER://{_HOST}:{self.controller_port}"
            ),
            "advertised.listeners": f"PLAINTEXT://{_HOST}:{self.port}",
            "controller.listener.names": "CONTROLLER",
            "inter.broker.listener.name": "PLAINTEXT",
            "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
            **(
                self.security.listener_properties(self.port, self.controller_port)
                if self.security
                else {}
            ),
            "log.dirs": self.data_dir,
            # internal topics have a replica per node (one broker: one)
            "num.partitions": 1,
            "default.replication.factor": replicas,
            "min.insync.replicas": min_isr,
            "offsets.topic.replication.factor": replicas,
            "offsets.topic.num.partitions": 1,
            "transaction.state.log.replication.factor": replicas,
            "transaction.state.log.min.isr": min_isr,
            "transaction.state.log.num.partitions": 1,
            "share.coordinator.state.topic.replication.factor": replicas,
            "share.coordinator.state.topic.min.isr": min_isr,
            "group.initial.rebalance.delay.ms": 0,
            # services create their own topics
            "auto.create.topics.enable": "false",
            "delete.topic.enable": "true",
            # small and quick
            "num.network.threads": 2,
            "num.io.threads": 4,
            "num.recovery.threads.per.data.dir": 1,
            "log.segment.bytes": 16 * 1024 * 1024,
            "log.retention.hours": 24,
            "log.retention.check.interval.ms": 60_000,
            "log.cleaner.dedupe.buffer.size": 8 * 1024 * 1024,
            "log.cleaner.threads": 1,
            "metadata.log.segment.bytes": 8 * 1024 * 1024,
        }
        merged = {key: str(value) for key, value in props.items()}
        merged.update({key: str(value) for key, value in self.overrides.items()})
        return merged

    def write_config(self) -> Path:
        self.home.mkdir(parents=True, exist_ok=True)
        self.logs_dir.mkdir(parents=True, exist_ok=True)
        header = "# Written by tuneline.devtools.kafka (LocalKafka); rewritten on every start.\n"
        self.config_path.write_text(header + _properties(self.server_properties()))
        self.log4j_path.write_text(_LOG4J2_XML.replace("{logs}", str(self.logs_dir)))
        return self.config_path

    def java_command(
        self, main_class: str, *args: str, jvm_opts: tuple[str, ...] | None = None
    ) -> list[str]:
        """``java <heap> <Kafka's JVM flags> -cp '<libs>/*' <main_class> <args>``."""
        return [
            self.java_executable(),
            *(shlex.split(self.heap) if jvm_opts is None else jvm_opts),
            *_JVM_OPTS,
            f"-Dlog4j2.configurationFile={self.log4j_path}",
            f"-Dkafka.logs.dir={self.logs_dir}",
            "-cp",
            str(self.libs_dir / "*"),
            main_class,
            *args,
        ]

    def is_formatted(self) -> bool:
        return (self.data_dir / "meta.properties").is_file()

    def format_command(self, cluster_id: str) -> list[str]:
        # a static quorum (controller.quorum.voters) is formatted without --standalone
        standalone = () if self.quorum_voters else ("--standalone",)
        return self.java_command(
            "kafka.tools.StorageTool",
            "format",
            "--config",
            str(self.config_path),
            "--cluster-id",
            cluster_id,
            *standalone,
            *(self.security.scram_arguments() if self.security else ()),
            "--ignore-formatted",
            jvm_opts=_TOOL_JVM_OPTS,
        )

    def format_storage(self, cluster_id: str | None = None) -> None:
        """Format the KRaft storage once: a single-node dynamic quorum (``--standalone``), or a
        node of the static quorum ``cluster_id`` names (every node gets the same id)."""
        if self.is_formatted():
            return
        cmd = self.format_command(cluster_id or new_cluster_id())
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
        if proc.returncode != 0:
            raise KafkaStartError(
                f"Formatting KRaft storage failed (exit {proc.returncode}): {shlex.join(cmd)}\n"
                + "\n".join((proc.stdout + proc.stderr).splitlines()[-40:])
            )

    # ----------------------------------------------------------------------------- state

    def _read_pid(self) -> int | None:
        try:
            return int(self.pid_path.read_text().strip())
        except (OSError, ValueError):
            return None

    def _read_state(self) -> dict[str, Any]:
        try:
            return dict(json.loads(self.state_path.read_text()))
        except (OSError, ValueError):
            return {}

    def running_pid(self) -> int | None:
        """The pid of a live broker started from this home, else ``None``."""
        pid = self._read_pid()
        if pid is not None and _is_our_broker(pid, self.config_path):
            return pid
        return None

    def status(self) -> KafkaStatus:
        pid = self.running_pid()
        state = self._read_state()
        bootstrap = str(state.get("bootstrap", self.bootstrap)) if pid else self.bootstrap
        seconds = state.get("startup_seconds") if pid else None
        return KafkaStatus(
            running=pid is not None,
            pid=pid,
            bootstrap=bootstrap,
            home=self.home,
            startup_seconds=float(seconds) if seconds is not None else None,
        )

    # ----------------------------------------------------------------------------- lifecycle

    def start(self, timeout: float = 90.0) -> str:
        """Start the broker (or reuse the one running from this home); return the bootstrap."""
        pid = self.running_pid()
        if pid is not None:
            self._check_running_bootstrap(pid)
            self._wait_ready(time.monotonic() + timeout, pid)
            return self.bootstrap

        self.check_java_version()
        provision_began = time.monotonic()
        self.provision()  # a cold Maven run counts neither toward the timeout nor start-up time
        self.provision_seconds = round(time.monotonic() - provision_began, 3)
        began = time.monotonic()
        pid = self.launch()
        self.wait_started(pid, began, began + timeout)
        return self.bootstrap

    def _check_running_bootstrap(self, pid: int) -> None:
        running_bootstrap = self._read_state().get("bootstrap", self.bootstrap)
        if running_bootstrap != self.bootstrap:
            raise KafkaStartError(
                f"A broker from {self.home} is already running on {running_bootstrap} "
                f"(pid {pid}), not on {self.bootstrap}; stop it first."
            )

    def launch(self, cluster_id: str | None = None) -> int:
        """Write the configuration, format (first time) and spawn the JVM; returns its pid.

        Does not wait: the nodes of a cluster are all launched before any can serve (a broker
        waits for its controller quorum). :meth:`wait_started` waits.
        """
        for port in (self.port, self.controller_port):
            if not _port_free(port):
                raise KafkaStartError(
                    f"Port {_HOST}:{port} is already in use (by something not started from "
                    f"{self.home}); choose other ports."
                )
        self.write_config()
        self.format_storage(cluster_id)

        self.pid_path.unlink(missing_ok=True)
        with self.stdout_log.open("wb") as out:  # the JVM's own output, this start only
            self._proc = subprocess.Popen(
                self.java_command("kafka.Kafka", str(self.config_path)),
                cwd=self.home,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                close_fds=True,
            )
        pid = self._proc.pid
        self.pid_path.write_text(f"{pid}\n")
        return pid

    def admin_security(self) -> dict[str, object] | None:
        """kafka-python settings of the super user on a secured broker; ``None``: plaintext."""
        return self.security.client_security(self.security.admin) if self.security else None

    def apply_service_acls(self) -> None:
        """Create each service user's topic ACLs (``shared.events.acls``) as the super user."""
        admin = KafkaAdminClient(
            **(self.admin_security() or {}),
            bootstrap_servers=self.bootstrap,
            client_id="tuneline-local-kafka-acls",
            request_timeout_ms=15_000,
        )
        try:
            create_service_acls(admin)
        finally:
            admin.close()

    def wait_started(self, pid: int, began: float, deadline: float) -> None:
        """Wait until the launched broker ``pid`` serves metadata (kill it if it does not);
        record its state. A secured broker gets its service ACLs before it counts as started."""
        try:
            self._wait_ready(deadline, pid)
            if self.security:
                self.apply_service_acls()
        except BaseException:
            self._kill(pid, grace=5.0)
            raise
        self.startup_seconds = round(time.monotonic() - began, 3)
        self.state_path.write_text(
            json.dumps(
                {
                    "pid": pid,
                    "bootstrap": self.bootstrap,
                    "controller": f"{_HOST}:{self.controller_port}",
                    "node_id": self.node_id,
                    "startup_seconds": self.startup_seconds,
                    "provision_seconds": self.provision_seconds,
                    "started_at": time.time(),
                    "libs": str(self.libs_dir),
                },
                indent=2,
            )
        )

    def _failure(self, why: str) -> KafkaStartError:
        parts = [f"Local Kafka broker {why} (home {self.home})."]
        for path in (self.server_log, self.stdout_log):
            tail = _tail(path)
            if tail.strip():
                parts.append(f"--- tail of {path} ---\n{tail}")
        return KafkaStartError("\n".join(parts))

    def _exited(self, pid: int) -> bool:
        if self._proc is not None and self._proc.pid == pid:
            return self._proc.poll() is not None
        return not _pid_alive(pid)

    def _wait_ready(self, deadline: float, pid: int) -> None:
        """Wait until the broker answers a metadata request with itself registered."""
        while True:
            if self._exited(pid):
                raise self._failure("exited during start-up")
            if time.monotonic() >= deadline:
                raise self._failure("did not serve metadata before the timeout")
            if _port_open(self.port) and _serves_metadata(
                self.bootstrap, self.node_id, self.admin_security()
            ):
                return
            time.sleep(0.1)

    def stop(self, timeout: float = 30.0) -> bool:
        """SIGTERM the broker, wait up to ``timeout`` seconds, then SIGKILL; ``True`` if one ran."""
        pid = self.running_pid()
        stopped = False
        if pid is not None:
            self._kill(pid, grace=timeout)
            stopped = True
        self.pid_path.unlink(missing_ok=True)
        self.state_path.unlink(missing_ok=True)
        return stopped

    def crash(self) -> bool:
        """SIGKILL the broker (no clean shutdown: a crashed machine); ``True`` if one ran.

        Its home stays as it is, so :meth:`start` brings the same node back with its data.
        """
        pid = self.running_pid()
        if pid is None:
            return False
        self._kill(pid, grace=0.0)
        self.pid_path.unlink(missing_ok=True)
        self.state_path.unlink(missing_ok=True)
        return True

    def _kill(self, pid: int, grace: float) -> None:
        if grace > 0:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline and not self._exited(pid):
            time.sleep(0.1)
        if not self._exited(pid):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signal.SIGKILL)  # the broker leads its own session/group
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        if self._proc is not None and self._proc.pid == pid:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._proc.wait(timeout=10)
            self._proc = None
        else:
            end = time.monotonic() + 10
            while time.monotonic() < end and _pid_alive(pid):
                time.sleep(0.05)


#: Ports of node ``i`` (0-based) of a cluster: ``port + 2 i`` and ``controller_port + 2 i``, so
#: the default 19092/19093 give brokers 19092, 19094, 19096 and controllers 19093, 19095, 19097.
CLUSTER_PORT_STRIDE = 2
#: Heap (and compiler) of each node of a cluster: three JVMs share a development machine, and
#: the C1 compiler alone starts them much sooner on few cores (throughput matters little here).
DEFAULT_CLUSTER_HEAP = "-Xmx256m -Xms128m -XX:TieredStopAtLevel=1"
_CLUSTER_STATE = "cluster.json"
# How fast the controllers notice a dead broker and move its partitions' leadership: a few
# seconds instead of Kafka's 9 s, so a killed broker costs the fault suite little time.
_CLUSTER_FAILOVER = {
    "broker.heartbeat.interval.ms": "500",
    "broker.session.timeout.ms": "3000",
    "replica.lag.time.max.ms": "5000",
}


@dataclass
class LocalKafkaCluster:
    """``brokers`` KRaft nodes on loopback, each a broker and a voter of one static quorum.

    Node ``i`` (ids 1..n) lives in ``home/node-<i>``; internal topics get a replica per node
    (at most 3) and ``min.insync.replicas`` 2 where there are 3. One node can be crashed
    (:meth:`LocalKafka.crash`) and started again (:meth:`start_node`) while the others serve:
    a majority of the controller quorum survives the loss of one of three.
    """

    home: Path
    brokers: int = 3
    port: int = DEFAULT_PORT
    controller_port: int = DEFAULT_CONTROLLER_PORT
    heap: str = DEFAULT_CLUSTER_HEAP
    cache_dir: Path | None = None
    pom: Path = field(default_factory=default_pom)
    #: Extra broker settings for every node, applied over the generated ones.
    overrides: dict[str, str] = field(default_factory=dict)
    #: Ports given explicitly, one ``(broker, controller)`` pair per node (tests pick free
    #: ones); by default they follow :data:`CLUSTER_PORT_STRIDE`.
    node_ports: list[tuple[int, int]] | None = None
    startup_seconds: float | None = field(default=None, init=False)
    nodes: list[LocalKafka] = field(default_factory=list, init=False)

    def __post_init__(self) -> None:
        if self.brokers < 1:
            raise ValueError("a cluster needs at least one broker")
        self.home = Path(self.home).expanduser().absolute()
        ports = self.node_ports or [
            (self.port + CLUSTER_PORT_STRIDE * i, self.controller_port + CLUSTER_PORT_STRIDE * i)
            for i in range(self.brokers)
        ]
        if len(ports) != self.brokers:
            raise ValueError(f"{self.brokers} brokers need {self.brokers} port pairs")
        voters = ",".join(
            f"{i + 1}@{_HOST}:{controller}" for i, (_, controller) in enumerate(ports)
        )
        overrides = {**_CLUSTER_FAILOVER, **self.overrides}
        self.nodes = [
            LocalKafka(
                home=self.home / f"node-{i + 1}",
                port=port,
                controller_port=controller,
                heap=self.heap,
                cache_dir=self.cache_dir,
                pom=self.pom,
                overrides=dict(overrides),
                node_id=i + 1,
                quorum_voters=voters,
                internal_replication_factor=min(3, self.brokers),
            )
            for i, (port, controller) in enumerate(ports)
        ]

    @property
    def bootstrap(self) -> str:
        """Every node's broker address, comma-separated: clients survive any one being down."""
        return ",".join(node.bootstrap for node in self.nodes)

    @property
    def running_bootstrap(self) -> str:
        """The running nodes' broker addresses: an admin client that bootstraps from a dead
        node's address gives up instead of trying the next."""
        return ",".join(node.bootstrap for node in self.nodes if node.running_pid() is not None)

    @property
    def state_path(self) -> Path:
        return self.home / _CLUSTER_STATE

    def node(self, node_id: int) -> LocalKafka:
        return self.nodes[node_id - 1]

    def _cluster_id(self) -> str:
        """The id every node is formatted with: kept in ``cluster.json`` from the first start."""
        try:
            known = json.loads(self.state_path.read_text()).get("cluster_id")
        except (OSError, ValueError):
            known = None
        return str(known) if known else new_cluster_id()

    def start(self, timeout: float = 180.0) -> str:
        """Launch every node that is not running, wait until all serve; return the bootstrap."""
        first = self.nodes[0]
        first.check_java_version()
        first.provision()
        cluster_id = self._cluster_id()
        self.home.mkdir(parents=True, exist_ok=True)
        self._write_state(cluster_id)
        began = time.monotonic()
        launched: list[tuple[LocalKafka, int]] = []
        try:
            self._format(cluster_id)
            for node in self.nodes:
                pid = node.running_pid()
                if pid is not None:
                    node._check_running_bootstrap(pid)
                launched.append((node, pid if pid is not None else node.launch(cluster_id)))
            for node, pid in launched:
                node.wait_started(pid, began, began + timeout)
        except BaseException:
            self.stop(timeout=5.0)
            raise
        self.startup_seconds = round(time.monotonic() - began, 3)
        self._write_state(cluster_id)
        return self.bootstrap

    def _format(self, cluster_id: str) -> None:
        """Format the stopped nodes' storage side by side (one short JVM each)."""
        stopped = [node for node in self.nodes if node.running_pid() is None]
        for node in stopped:
            node.write_config()
        with ThreadPoolExecutor(max_workers=len(stopped) or 1) as pool:
            for done in [pool.submit(node.format_storage, cluster_id) for node in stopped]:
                done.result()

    def start_node(self, node_id: int, timeout: float = 120.0) -> None:
        """Bring one (crashed or stopped) node back with its data; wait until it serves."""
        node = self.node(node_id)
        if node.running_pid() is not None:
            return
        began = time.monotonic()
        pid = node.launch(self._cluster_id())
        node.wait_started(pid, began, began + timeout)

    def _write_state(self, cluster_id: str) -> None:
        self.state_path.write_text(
            json.dumps(
                {
                    "cluster_id": cluster_id,
                    "brokers": self.brokers,
                    "bootstrap": self.bootstrap,
                    "nodes": [
                        {"node_id": n.node_id, "port": n.port, "controller_port": n.controller_port}
                        for n in self.nodes
                    ],
                    "startup_seconds": self.startup_seconds,
                },
                indent=2,
            )
        )

    def running(self) -> list[int]:
        """Ids of the nodes that run."""
        return [node.node_id for node in self.nodes if node.running_pid() is not None]

    def stop(self, timeout: float = 30.0) -> bool:
        """Stop every node (SIGTERM, then SIGKILL after ``timeout``); ``True`` if any ran.

        The nodes get SIGTERM together: a broker that shuts down cleanly waits for the
        controller quorum, which its peers stopping one by one would take away from it.
        """
        pids = [(node, node.running_pid()) for node in self.nodes]
        for _, pid in pids:
            if pid is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGTERM)
        for node, _ in pids:
            node.stop(timeout=timeout)
        return any(pid is not None for _, pid in pids)

    @classmethod
    def from_home(cls, home: Path, **settings: Any) -> LocalKafkaCluster | None:
        """The cluster ``home`` holds (from its ``cluster.json``), else ``None``."""
        try:
            state = json.loads((Path(home) / _CLUSTER_STATE).read_text())
        except (OSError, ValueError):
            return None
        ports = [(int(n["port"]), int(n["controller_port"])) for n in state.get("nodes", [])]
        if not ports:
            return None
        return cls(home=Path(home), brokers=len(ports), node_ports=ports, **settings)


def _port_open(port: int, host: str = _HOST) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((host, port)) == 0


def _port_free(port: int, host: str = _HOST) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
        return True


def _serves_metadata(
    bootstrap: str, node_id: int = _NODE_ID, security: Mapping[str, object] | None = None
) -> bool:
    """One metadata round trip with kafka-python's admin client; ``True`` if our node is in it."""
    admin = None
    try:
        admin = KafkaAdminClient(
            **(security or {}),
            bootstrap_servers=bootstrap,
            client_id="tuneline-local-kafka-probe",
            request_timeout_ms=5000,
            **_admin_timeouts(KafkaAdminClient, 3000),
        )
        cluster = admin.describe_cluster()
        admin.list_topics()
    except (KafkaError, OSError, ValueError):
        return False
    finally:
        if admin is not None:
            with contextlib.suppress(Exception):
                admin.close()
    return any(_broker_id(b) == node_id for b in cluster.get("brokers") or [])


def _admin_timeouts(admin_cls: Any, timeout_ms: int) -> dict[str, int]:
    """The bootstrap/version-probe timeout under the name this kafka-python uses.

    kafka-python 2.x calls it ``api_version_auto_timeout_ms``; 3.x ``bootstrap_timeout_ms`` and
    rejects unknown settings.
    """
    known = getattr(admin_cls, "DEFAULT_CONFIG", {})
    return {
        key: timeout_ms
        for key in ("bootstrap_timeout_ms", "api_version_auto_timeout_ms")
        if key in known
    }


def _broker_id(broker: Mapping[str, Any]) -> int:
    # describe_cluster() names it ``node_id`` in kafka-python 2.x and ``broker_id`` in 3.x
    value = broker.get("node_id", broker.get("broker_id", -1))
    return int(value) if value is not None else -1
