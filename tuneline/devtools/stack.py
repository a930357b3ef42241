"""The local stack: a Kafka broker and the six services as separate processes.

``tuneline up`` uses :class:`LocalStack` to start the broker, then each service with
``python -m services.<name>.entrypoints.main`` and its own ports, all under one home
(``.tuneline`` by default: ``kafka/``, ``data/`` with SQLite files and artifacts, ``logs/``
with one log per service, and ``stack.json`` describing what runs where). It waits until every
service's health check reports SERVING. ``stack.json`` is also the lock that makes a second
``up`` say that a stack is already running instead of fighting over the ports, and how the
command line finds the services of a running stack wherever their ports are
(:func:`running_stack`).

A stack may also run a subset of the services, and several replicas of one (``replicas``): the
cross-process replica test runs two of dataset, splitter, evaluator and registry. A replica
after the first has its own free ports and log (``<service>-<n>.log``); its peers reach all of
a service's replicas through one multi-address target, failing over as a Kubernetes Service
routes around a dead pod.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from shared.security.tls import channel_credentials
from shared.service_ports import DEFAULT_PORTS, SERVICE_NAMES
from tuneline.devtools.kafka import (
    DEFAULT_CONTROLLER_PORT,
    DEFAULT_PORT,
    LocalKafka,
    free_port,
    port_free,
)
from tuneline.devtools.local_pki import (
    LOCAL_SERVER_NAME,
    LocalCredentials,
    ensure_local_credentials,
    local_credentials,
)

#: Services that call others over gRPC: the setting naming each peer, and the peer.
PEER_TARGETS: dict[str, tuple[tuple[str, str], ...]] = {
    "splitter": (("DATASET_TARGET", "dataset"),),
    "trainer": (("SPLITTER_TARGET", "splitter"), ("REGISTRY_TARGET", "registry")),
    "evaluator": (("REGISTRY_TARGET", "registry"),),
    # the registry confirms every PASSED verdict with the evaluator before it counts
    "registry": (("EVALUATOR_TARGET", "evaluator"),),
    "serving": (("REGISTRY_TARGET", "registry"),),
}
#: Where ``tuneline up``/``down`` keep their state unless ``TUNELINE_HOME`` says otherwise.
DEFAULT_HOME = Path(".tuneline")
HOME_VARIABLE = "TUNELINE_HOME"
#: The stack's description (and lock), under its home.
STATE_FILE = "stack.json"


def stack_home(env: Mapping[str, str]) -> Path:
    """The home of ``tuneline up``: ``$TUNELINE_HOME``, else ``.tuneline``."""
    return Path(env.get(HOME_VARIABLE) or DEFAULT_HOME)


class StackError(RuntimeError):
    """The stack could not be started or stopped as asked."""


class StackAlreadyRunning(StackError):
    """A stack from the same home is running; ``state`` says where it listens."""

    def __init__(self, state: StackState) -> None:
        super().__init__(f"a Tuneline stack is already running from {state.home} (pid {state.pid})")
        self.state = state


@dataclass
class ServiceProcess:
    """Where one service listens and which process runs it."""

    name: str
    grpc_port: int
    metrics_port: int
    pid: int = 0
    log: str = ""
    extra_ports: dict[str, int] = field(default_factory=dict)
    #: 0 for a service's first (or only) process; its further replicas count from 1.
    replica: int = 0

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    @property
    def instance(self) -> str:
        """The process's name in the stack: the service's, plus ``-<n>`` for replica n."""
        return self.name if self.replica == 0 else f"{self.name}-{self.replica}"


@dataclass
class StackState:
    """What ``stack.json`` records about a running stack."""

    home: str
    pid: int
    kafka_bootstrap: str
    data_dir: str
    services: list[ServiceProcess]
    #: The folder of the stack's CA and credentials when it runs secured (mutual TLS and
    #: auth); empty for a plaintext stack.
    pki: str = ""

    def client_credentials(self) -> LocalCredentials | None:
        """The command line's credentials for this stack, when it runs secured."""
        return local_credentials(Path(self.pki)) if self.pki else None

    @classmethod
    def load(cls, path: Path) -> StackState | None:
        try:
            raw = json.loads(path.read_text())
        except (OSError, ValueError):
            return None
        raw["services"] = [ServiceProcess(**s) for s in raw.get("services", [])]
        return cls(**raw)

    def save(self, path: Path) -> None:
        temp = path.with_suffix(".tmp")
        temp.write_text(json.dumps(asdict(self), indent=2))
        os.replace(temp, path)


def _alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@dataclass
class StackPorts:
    """Ports of the stack. Services get consecutive ports from the two bases (dataset first,
    in :data:`SERVICE_NAMES` order, which gives each service its settings' default port),
    except those set one by one in ``grpc`` and ``metrics``."""

    kafka: int = DEFAULT_PORT
    kafka_controller: int = DEFAULT_CONTROLLER_PORT
    grpc_base: int = DEFAULT_PORTS[SERVICE_NAMES[0]].grpc
    metrics_base: int = DEFAULT_PORTS[SERVICE_NAMES[0]].metrics
    webhook: int = 9095
    #: gRPC ports of single services, by service name; they win over ``grpc_base``.
    grpc: dict[str, int] = field(default_factory=dict)
    #: Metrics ports of single services, by service name; they win over ``metrics_base``.
    metrics: dict[str, int] = field(default_factory=dict)

    def grpc_port(self, service: str) -> int:
        return self.grpc.get(service, self.grpc_base + SERVICE_NAMES.index(service))

    def metrics_port(self, service: str) -> int:
        return self.metrics.get(service, self.metrics_base + SERVICE_NAMES.index(service))

    @classmethod
    def from_environment(cls, env: Mapping[str, str]) -> StackPorts:
        """The ports the configuration documents, where ``env`` sets them, else the defaults:
        ``TUNELINE_KAFKA_PORT``, ``TUNELINE_KAFKA_CONTROLLER_PORT``,
        ``TUNELINE_<SERVICE>_GRPC_PORT``, ``TUNELINE_<SERVICE>_METRICS_PORT`` and
        ``TUNELINE_REGISTRY_WEBHOOK_PORT`` — the variables the broker and each service read
        when run on their own, so ``tuneline up`` puts everything where they say."""
        defaults = cls()

        def port(variable: str, default: int) -> int:
            value = env.get(variable, "").strip()
            if not value:
                return default
            if not value.isdigit() or not 0 < int(value) < 65536:
                raise StackError(f"{variable}={value!r} is not a port (1-65535)")
            return int(value)

        def per_service(kind: str) -> dict[str, int]:
            ports = {}
            for name in SERVICE_NAMES:
                variable = f"TUNELINE_{name.upper()}_{kind}_PORT"
                if env.get(variable, "").strip():
                    ports[name] = port(variable, 0)
            return ports

        return cls(
            kafka=port("TUNELINE_KAFKA_PORT", defaults.kafka),
            kafka_controller=port("TUNELINE_KAFKA_CONTROLLER_PORT", defaults.kafka_controller),
            webhook=port("TUNELINE_REGISTRY_WEBHOOK_PORT", defaults.webhook),
            grpc=per_service("GRPC"),
            metrics=per_service("METRICS"),
        )

    @classmethod
    def free(cls, *, attempts: int = 200) -> StackPorts:
        """Ports that are free right now, for tests and side-by-side stacks: each base starts
        a block of consecutive free ports, one per service."""
        draw = random.Random()
        blocks: list[int] = []
        for _ in range(attempts):
            base = draw.randrange(20000, 60000 - len(SERVICE_NAMES))
            block = range(base, base + len(SERVICE_NAMES))
            if all(port_free(port) for port in block) and not any(
                abs(base - other) < len(SERVICE_NAMES) for other in blocks
            ):
                blocks.append(base)
            if len(blocks) == 3:
                kafka, grpc_base, metrics_base = blocks
                return cls(
                    kafka=kafka,
                    kafka_controller=kafka + 1,
                    grpc_base=grpc_base,
                    metrics_base=metrics_base,
                    webhook=kafka + 2,
                )
        raise StackError("found no free block of ports")


class LocalStack:
    """Start, watch and stop the broker and the services under one home directory."""

    def __init__(
        self,
        home: Path,
        ports: StackPorts | None = None,
        *,
        kafka_bootstrap: str | None = None,
        services: Sequence[str] = SERVICE_NAMES,
        replicas: Mapping[str, int] | None = None,
        secure: bool = False,
    ) -> None:
        """``kafka_bootstrap`` points the services at a broker that is already running (one
        this stack neither starts nor stops); without it the stack runs its own. ``services``
        picks which services run (in :data:`SERVICE_NAMES` order), ``replicas`` how many
        processes some of them get (default one). ``secure`` runs it as production runs:
        a local CA under ``<home>/pki`` (see :mod:`tuneline.devtools.local_pki`), mutual TLS
        on every call and auth enforced; without it, plaintext and no checks."""
        unknown = sorted({*services, *(replicas or {})} - set(SERVICE_NAMES))
        if unknown:
            raise StackError(f"no such services: {', '.join(unknown)}")
        if any(count < 1 for count in (replicas or {}).values()):
            raise StackError("a service runs as one replica at least")
        self.service_names = tuple(name for name in SERVICE_NAMES if name in services)
        self.replicas = dict(replicas or {})
        self.home = home.absolute()
        self.ports = ports or StackPorts()
        self.external_kafka = kafka_bootstrap
        self.state_path = self.home / STATE_FILE
        self.logs_dir = self.home / "logs"
        self.data_dir = self.home / "data"
        #: The bearer token Alertmanager (or a person) must present to the registry's webhook.
        self.webhook_token_path = self.home / "webhook-token"
        self.secure = secure
        self.pki_dir = self.home / "pki"
        self.credentials: LocalCredentials | None = None
        self.kafka = LocalKafka(
            home=self.home / "kafka",
            port=self.ports.kafka,
            controller_port=self.ports.kafka_controller,
        )
        #: by instance name (:attr:`ServiceProcess.instance`)
        self._processes: dict[str, subprocess.Popen[bytes]] = {}
        self._env: Mapping[str, str] = os.environ
        self._state: StackState | None = None
        self._plan: list[ServiceProcess] | None = None

    @property
    def kafka_bootstrap(self) -> str:
        return self.external_kafka or self.kafka.bootstrap

    def running(self) -> StackState | None:
        """The state of a live stack from this home: its supervisor or any service is alive."""
        return _live(StackState.load(self.state_path))

    def _service_env(self, service: ServiceProcess, base: Mapping[str, str]) -> dict[str, str]:
        prefix = f"TUNELINE_{service.name.upper()}_"
        env = {
            **base,
            "TUNELINE_KAFKA_BOOTSTRAP": self.kafka_bootstrap,
            "TUNELINE_DATA_DIR": str(self.data_dir),
            f"{prefix}GRPC_PORT": str(service.grpc_port),
            f"{prefix}METRICS_PORT": str(service.metrics_port),
            "PYTHONUNBUFFERED": "1",
        }
        if self.credentials is not None:
            env.update(self.credentials.service_environment(service.name))
        else:  # services refuse to start without TLS unless told so
            env["TUNELINE_AUTH_MODE"] = base.get("TUNELINE_AUTH_MODE", "insecure")
        for key, port in service.extra_ports.items():
            env[f"{prefix}{key.upper()}_PORT"] = str(port)
        for setting, peer in PEER_TARGETS.get(service.name, ()):
            if peer in self.service_names:
                env[f"{prefix}{setting}"] = self.peer_target(peer)
        if service.name == "registry":
            env[f"{prefix}WEBHOOK_TOKEN_FILE"] = str(self.webhook_token_path)
        return env

    def _ensure_webhook_token(self) -> None:
        """A random token on first start, kept (0600) so Alertmanager configs stay valid."""
        if not self.webhook_token_path.exists():
            fd = os.open(self.webhook_token_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as handle:
                handle.write(secrets.token_urlsafe(32))

    def plan(self) -> list[ServiceProcess]:
        """The service processes with their ports, before anything starts (the same list on
        every call). A service's first process gets its ports from :class:`StackPorts`, any
        further replica free ones."""
        if self._plan is None:
            self._plan = []
            for name in self.service_names:
                for replica in range(self.replicas.get(name, 1)):
                    first = replica == 0
                    service = ServiceProcess(
                        name=name,
                        grpc_port=self.ports.grpc_port(name) if first else free_port(),
                        metrics_port=self.ports.metrics_port(name) if first else free_port(),
                        replica=replica,
                    )
                    service.log = str(self.logs_dir / f"{service.instance}.log")
                    if name == "registry":
                        webhook = self.ports.webhook if first else free_port()
                        service.extra_ports["webhook"] = webhook
                    self._plan.append(service)
        return self._plan

    def peer_target(self, name: str) -> str:
        """The gRPC target that reaches service ``name``: its one process, or every replica
        in one target (gRPC's default ``pick_first`` moves to the next when one dies)."""
        addresses = [s.target for s in self.plan() if s.name == name]
        if not addresses:
            raise StackError(f"{name} is not part of this stack")
        return addresses[0] if len(addresses) == 1 else "ipv4:" + ",".join(addresses)

    def up(self, *, timeout: float = 180.0, env: Mapping[str, str] | None = None) -> StackState:
        """Start everything and wait for SERVING; on any failure, stop what started."""
        existing = self.running()
        if existing:
            raise StackAlreadyRunning(existing)
        self.logs_dir.mkdir(parents=True, exist_ok=True)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._ensure_webhook_token()
        if self.secure:
            self.credentials = ensure_local_credentials(self.pki_dir, self.service_names)
        if self.external_kafka is None:
            self.kafka.start(timeout=timeout)
        self._env = dict(env if env is not None else os.environ)
        services = self.plan()
        state = StackState(
            home=str(self.home),
            pid=os.getpid(),
            kafka_bootstrap=self.kafka_bootstrap,
            data_dir=str(self.data_dir),
            services=services,
            pki=str(self.pki_dir) if self.credentials else "",
        )
        self._state = state
        try:
            for service in services:
                self._spawn(service)
            state.save(self.state_path)
            deadline = time.monotonic() + timeout
            for service in services:
                self._wait_serving(service, deadline)
        except BaseException:
            self.down(state)
            raise
        return state

    def _spawn(self, service: ServiceProcess) -> None:
        with open(service.log, "ab") as log:
            process = subprocess.Popen(
                [sys.executable, "-m", f"services.{service.name}.entrypoints.main"],
                env=self._service_env(service, self._env),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,  # Ctrl-C reaches the supervisor, which stops us
            )
        self._processes[service.instance] = process
        service.pid = process.pid

    def _service(self, name: str) -> ServiceProcess:
        if self._state is None:
            raise StackError("the stack was not started by this process")
        for service in self._state.services:
            if service.instance == name:
                return service
        raise StackError(f"no service named {name!r}")

    def kill_service(self, name: str) -> None:
        """SIGKILL one service process's whole process group (its worker processes included),
        as a crash or an OOM kill would, and reap it. ``name`` is the process's
        :attr:`~ServiceProcess.instance` (the service's name for its first process)."""
        self._service(name)
        process = self._processes[name]
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()

    def start_service(self, name: str, *, timeout: float = 120.0) -> None:
        """Start one service again (after :meth:`kill_service`) and wait until it serves."""
        service = self._service(name)
        if self._processes[name].poll() is None:
            raise StackError(f"{name} is still running")
        self._spawn(service)
        assert self._state is not None
        self._state.save(self.state_path)
        self._wait_serving(service, time.monotonic() + timeout)

    def _wait_serving(self, service: ServiceProcess, deadline: float) -> None:
        process = self._processes[service.instance]
        with self._channel(service.target) as channel:
            health = health_pb2_grpc.HealthStub(channel)
            while time.monotonic() < deadline:
                if process.poll() is not None:
                    raise StackError(
                        f"{service.instance} exited with {process.returncode} while starting; "
                        f"last lines of {service.log}:\n{_tail(Path(service.log))}"
                    )
                try:
                    reply = health.Check(health_pb2.HealthCheckRequest(), timeout=1.0)
                    if reply.status == health_pb2.HealthCheckResponse.SERVING:
                        return
                except grpc.RpcError:
                    pass
                time.sleep(0.25)
        raise StackError(f"{service.instance} did not report SERVING in time; see {service.log}")

    def _channel(self, target: str) -> grpc.Channel:
        """A channel to one of the stack's services, as the command line's identity."""
        if self.credentials is None:
            return grpc.insecure_channel(target)
        credentials = channel_credentials(
            ca_file=self.credentials.ca_file,
            cert_file=self.credentials.cli.cert_file,
            key_file=self.credentials.cli.key_file,
        )
        options = [("grpc.ssl_target_name_override", LOCAL_SERVER_NAME)]
        return grpc.secure_channel(target, credentials, options=options)

    def first_exited(self) -> tuple[str, int] | None:
        """A service started by this process that has exited, with its code, if any."""
        for name, process in self._processes.items():
            code = process.poll()
            if code is not None:
                return name, code
        return None

    def down(self, state: StackState | None = None, *, grace: float = 20.0) -> None:
        """SIGTERM every service (they drain), SIGKILL stragglers, stop Kafka, drop the state."""
        state = state or StackState.load(self.state_path)
        pids = [s.pid for s in state.services] if state else []
        pids += [p.pid for p in self._processes.values()]
        for pid in set(pids):
            if _alive(pid):
                os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + grace
        for pid in set(pids):
            while self._running(pid) and time.monotonic() < deadline:
                time.sleep(0.1)
            if self._running(pid):
                os.kill(pid, signal.SIGKILL)
                while self._running(pid):
                    time.sleep(0.05)
        if self.external_kafka is None:
            self.kafka.stop()
        self.state_path.unlink(missing_ok=True)

    def _running(self, pid: int) -> bool:
        """Alive and not a zombie: our own children are reaped as they exit."""
        for process in self._processes.values():
            if process.pid == pid:
                return process.poll() is None
        return _alive(pid)


@contextlib.contextmanager
def calling_as_local_admin(state: StackState) -> Iterator[None]:
    """Within it, clients that take their security from the environment (the SDK's default)
    call the secured stack ``state`` with the credentials it made for the command line; a
    plaintext stack changes nothing. The environment is restored after."""
    credentials = state.client_credentials()
    chosen = credentials.client_environment() if credentials is not None else {}
    before = {variable: os.environ.get(variable) for variable in chosen}
    os.environ.update(chosen)
    try:
        yield
    finally:
        for variable, value in before.items():
            if value is None:
                os.environ.pop(variable, None)
            else:
                os.environ[variable] = value


def _live(state: StackState | None) -> StackState | None:
    """``state`` if its supervisor or any of its services is alive."""
    if state and (_alive(state.pid) or any(_alive(s.pid) for s in state.services)):
        return state
    return None


def running_stack(env: Mapping[str, str]) -> StackState | None:
    """The stack ``tuneline up`` runs from the home ``env`` names (``TUNELINE_HOME``), if one
    is running: what its ``stack.json`` says, wherever its ports are."""
    return _live(StackState.load(stack_home(env).absolute() / STATE_FILE))


def _tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"
