"""One KRaft node (broker and controller) run from Kafka's jars: its configuration, storage,
process and state under one ``home`` directory."""

from __future__ import annotations

import base64
import contextlib
import json
import os
import shlex
import signal
import subprocess
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kafka import KafkaAdminClient

from shared.events.acls import create_service_acls
from shared.events.publisher import min_insync_replicas_for
from tuneline.devtools.kafka.errors import KafkaStartError
from tuneline.devtools.kafka.jars import KafkaJars, default_cache_dir, default_pom, kafka_version
from tuneline.devtools.kafka.probes import (
    LOOPBACK,
    is_our_broker,
    pid_alive,
    port_free,
    port_open,
    serves_metadata,
)
from tuneline.devtools.kafka.security import BrokerSecurity

DEFAULT_PORT = 19092
DEFAULT_CONTROLLER_PORT = 19093
DEFAULT_HEAP = "-Xmx512m -Xms256m"

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


@dataclass(frozen=True)
class KafkaStatus:
    running: bool
    pid: int | None
    bootstrap: str
    home: Path
    startup_seconds: float | None = None


def new_cluster_id() -> str:
    """A Kafka cluster id: a random UUID in URL-safe base64 without padding (as ``Uuid``)."""
    while True:
        cid = base64.urlsafe_b64encode(uuid.uuid4().bytes).rstrip(b"=").decode("ascii")
        if not cid.startswith("-"):  # Kafka avoids ids that look like command-line flags
            return cid


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


@dataclass
class LocalKafka(KafkaJars):
    """A single-node KRaft broker (``process.roles=broker,controller``) on 127.0.0.1.

    ``home`` holds ``server.properties``, ``log4j2.xml``, ``data/`` (the log dirs and the KRaft
    metadata log), ``logs/`` (``server.log`` and the JVM's own ``broker.out``), ``broker.pid`` and
    ``state.json``. ``cache_dir`` holds Kafka's jars
    (:class:`~tuneline.devtools.kafka.jars.KafkaJars`).
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
        return f"{LOOPBACK}:{self.port}"

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

    # ----------------------------------------------------------------------------- config

    def server_properties(self) -> dict[str, str]:
        """The broker settings :meth:`start` writes to ``server.properties``."""
        replicas = self.internal_replication_factor
        # a write must reach two copies where there are three (Kafka's durability guidance)
        min_isr = min_insync_replicas_for(replicas)
        quorum = (
            {"controller.quorum.voters": self.quorum_voters}
            if self.quorum_voters
            else {"controller.quorum.bootstrap.servers": f"{LOOPBACK}:{self.controller_port}"}
        )
        props: dict[str, object] = {
            # KRaft, combined mode: this node is a broker and a controller
            "process.roles": "broker,controller",
            "node.id": self.node_id,
            **quorum,
            "listeners": (
                f"PLAINTEXT://{LOOPBACK}:{self.port},CONTROLLER://{LOOPBACK}:{self.controller_port}"
            ),
            "advertised.listeners": f"PLAINTEXT://{LOOPBACK}:{self.port}",
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
        if pid is not None and is_our_broker(pid, self.config_path):
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
            if not port_free(port):
                raise KafkaStartError(
                    f"Port {LOOPBACK}:{port} is already in use (by something not started from "
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
                    "controller": f"{LOOPBACK}:{self.controller_port}",
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
        return not pid_alive(pid)

    def _wait_ready(self, deadline: float, pid: int) -> None:
        """Wait until the broker answers a metadata request with itself registered."""
        while True:
            if self._exited(pid):
                raise self._failure("exited during start-up")
            if time.monotonic() >= deadline:
                raise self._failure("did not serve metadata before the timeout")
            if port_open(self.port) and serves_metadata(
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
            while time.monotonic() < end and pid_alive(pid):
                time.sleep(0.05)
