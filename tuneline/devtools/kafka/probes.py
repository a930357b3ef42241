"""What the launcher asks the machine and the broker: free ports, live pids, a metadata probe."""

from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from kafka import KafkaAdminClient
from kafka.errors import KafkaError

#: Every local broker listens on loopback only.
LOOPBACK = "127.0.0.1"


def free_port(host: str = LOOPBACK) -> int:
    """A currently free TCP port on ``host`` (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def pid_alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie does not: it has exited and only waits to be reaped)."""
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


def is_our_broker(pid: int, config: Path) -> bool:
    """Whether ``pid`` is a ``kafka.Kafka`` process for ``config`` (guards against pid reuse)."""
    if not pid_alive(pid):
        return False
    cmdline = Path(f"/proc/{pid}/cmdline")
    if not cmdline.exists():  # not Linux: trust the pid file
        return True
    try:
        argv = cmdline.read_bytes().split(b"\0")
    except OSError:
        return False
    return b"kafka.Kafka" in argv and str(config).encode() in argv


def port_open(port: int, host: str = LOOPBACK) -> bool:
    """Whether something accepts connections on ``host:port``."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((host, port)) == 0


def port_free(port: int, host: str = LOOPBACK) -> bool:
    """Whether a listener could bind ``host:port`` now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
        return True


def serves_metadata(
    bootstrap: str, node_id: int, security: Mapping[str, object] | None = None
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
