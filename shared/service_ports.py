"""Which services exist and where each listens unless told otherwise: one table for all.

The services' settings, the SDK's default targets, the CLI and ``tuneline up`` all read their
defaults here, so moving a port is one edit and no two places can disagree about it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType


@dataclass(frozen=True)
class DefaultPorts:
    """The ports one service binds by default."""

    grpc: int
    metrics: int


#: Every service in pipeline order, with its default ports. ``tuneline up`` keeps the order and
#: the spacing (one port apart) when it moves the whole stack to other port blocks.
DEFAULT_PORTS: Mapping[str, DefaultPorts] = MappingProxyType(
    {
        "dataset": DefaultPorts(grpc=50051, metrics=9101),
        "splitter": DefaultPorts(grpc=50052, metrics=9102),
        "trainer": DefaultPorts(grpc=50053, metrics=9103),
        "evaluator": DefaultPorts(grpc=50054, metrics=9104),
        "registry": DefaultPorts(grpc=50055, metrics=9105),
        "serving": DefaultPorts(grpc=50056, metrics=9106),
    }
)

#: The services' names, in pipeline order. Local stacks start them in this order, so each
#: consumer's producer is already up.
SERVICE_NAMES: tuple[str, ...] = tuple(DEFAULT_PORTS)


def default_target(service: str) -> str:
    """``host:port`` of ``service`` on this machine with its default gRPC port."""
    return f"127.0.0.1:{DEFAULT_PORTS[service].grpc}"
