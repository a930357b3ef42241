"""Where the command line finds each service.

In order: ``TUNELINE_<SERVICE>_TARGET`` (any ``host:port``); the stack ``tuneline up`` runs from
``TUNELINE_HOME`` (its ``stack.json`` says where every service listens, so ports moved with
``TUNELINE_<SERVICE>_GRPC_PORT`` or ``--grpc-port-base`` just work); the same
``TUNELINE_<SERVICE>_GRPC_PORT`` a service run on its own reads, on loopback; the service's
default port.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from tuneline.devtools.stack import StackPorts, running_stack


def target(service: str, env: Mapping[str, str] | None = None) -> str:
    """``host:port`` of ``service`` (``dataset``, ``splitter``, ``trainer``, ``evaluator``,
    ``registry``, ``serving``), looked up in ``env`` (default: this process' environment)."""
    env = os.environ if env is None else env
    prefix = f"TUNELINE_{service.upper()}_"
    if explicit := env.get(f"{prefix}TARGET", "").strip():
        return explicit
    stack = running_stack(env)
    if stack is not None:
        for running in stack.services:
            if running.name == service:
                return running.target
    port = env.get(f"{prefix}GRPC_PORT", "").strip()
    if not port.isdigit():
        port = str(StackPorts().grpc_port(service))
    return f"127.0.0.1:{port}"
