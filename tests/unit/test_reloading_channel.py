"""When ReloadingChannel looks at its files, with a fake clock and stand-in channels (the
behaviour on real gRPC, open calls included, is in tests/integration/test_grpc_client_rotation.py).
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import grpc

from shared.grpc.reloading_channel import ReloadingChannel
from shared.security.tls import ReloadingChannelCredentials
from tests.fixtures.pki import LocalCA
from tuneline.devtools.waiting import eventually


class NumberedChannel:
    """Stands in for a gRPC channel: every call answers the channel's number."""

    def __init__(self, number: int) -> None:
        self.number = number
        self.closed = False

    def unary_unary(self, *_args: Any, **_kwargs: Any) -> Any:
        return lambda *_a, **_k: self.number

    def close(self) -> None:
        self.closed = True


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_files_are_looked_at_once_per_check_interval(tmp_path: Path) -> None:
    ca = LocalCA(tmp_path / "ca")
    live = tmp_path / "live"
    live.mkdir()

    def install(name: str) -> None:
        issued = ca.issue(name, common_name=name)
        shutil.copy(issued.key_file, live / "tls.key")
        shutil.copy(issued.cert_file, live / "tls.crt")

    install("one")
    built: list[NumberedChannel] = []

    def build(_credentials: grpc.ChannelCredentials) -> grpc.Channel:
        built.append(NumberedChannel(len(built)))
        return built[-1]  # type: ignore[return-value]

    clock = Clock()
    credentials = ReloadingChannelCredentials(
        ca_file=ca.ca_file, cert_file=live / "tls.crt", key_file=live / "tls.key"
    )
    call = ReloadingChannel(build, credentials, check_seconds=5.0, clock=clock).unary_unary(
        "/x.Y/Z", None, None
    )
    install("two")
    clock.now = 4.9
    assert call(b"") == 0, "looked at the files before the interval was up"
    clock.now = 5.0
    assert call(b"") == 1
    eventually(lambda: built[0].closed, timeout=10, what="the idle old channel closed")
    clock.now = 10.0
    assert call(b"") == 1
    assert len(built) == 2, "unchanged files built a new channel"
