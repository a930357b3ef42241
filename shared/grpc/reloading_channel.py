"""A client channel whose TLS credentials follow their files, without a restart.

gRPC Python fixes a channel's credentials when the channel is made, and a certificate renewed
on disk (cert-manager rewriting a mounted Secret every 60 days, for 90-day certificates) would
otherwise never be presented: a process running longer than the certificate's life fails every
new handshake. :class:`ReloadingChannel` looks at the files at most every ``check_seconds``,
on a call; when they changed it builds a new channel from them, and every later call goes
there. Calls already open (a watch, an upload) stay on the channel they began on, which is
closed once the last of them ends. A watch that ends is opened again by its caller, on the new
channel.

Stubs are built on the :func:`shared.grpc.create_channel` channel, whose interceptor asks this
channel for a method's callable on every call, so each call is sent on the channel current at
that moment; the callables returned here also pick the current channel when called, so a stub
built directly on a :class:`ReloadingChannel` follows the files too.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Hashable
from typing import Any

import grpc

from shared.security.tls import ReloadingChannelCredentials

log = logging.getLogger(__name__)


class _Generation:
    """One underlying channel, and how many calls are still open on it."""

    def __init__(self, channel: grpc.Channel) -> None:
        self.channel = channel
        self.open_calls = 0
        self.retired = False
        self._callables: dict[Hashable, Any] = {}

    def callable(self, kind: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        """The channel's multi-callable for (``kind``, method, serializers), made once."""
        key = (kind, args, tuple(sorted(kwargs.items())))
        found = self._callables.get(key)
        if found is None:
            found = self._callables[key] = getattr(self.channel, kind)(*args, **kwargs)
        return found


class ReloadingChannel(grpc.Channel):
    """A channel that moves new calls onto a channel built with new credentials when
    ``credentials`` reports its files changed (see the module's description)."""

    def __init__(
        self,
        build: Callable[[grpc.ChannelCredentials], grpc.Channel],
        credentials: ReloadingChannelCredentials,
        *,
        check_seconds: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._build = build
        self._credentials = credentials
        self._check_seconds = check_seconds
        self._clock = clock
        self._lock = threading.Lock()
        self._current = _Generation(build(credentials.initial))
        self._retired: set[_Generation] = set()
        self._next_check = clock() + check_seconds
        self._closed = False
        self._subscriptions: dict[Callable[..., Any], grpc.Channel] = {}

    # -- which channel a call goes to ------------------------------------------------------

    def _open_call(self) -> _Generation:
        """The current channel, with one more call counted on it (so it is not closed under
        the call if the files change meanwhile)."""
        if self._clock() >= self._next_check:
            self._follow_files()
        with self._lock:
            generation = self._current
            generation.open_calls += 1
        return generation

    def _follow_files(self) -> None:
        with self._lock:
            now = self._clock()
            if self._closed or now < self._next_check:
                return  # another call looked meanwhile
            self._next_check = now + self._check_seconds
            credentials = self._credentials.fetch()
            if credentials is None:
                return
            old, self._current = self._current, _Generation(self._build(credentials))
            old.retired = True
            idle = old.open_calls == 0
            if not idle:
                self._retired.add(old)
        log.info("client channel rebuilt with reloaded TLS credentials")
        if idle:
            _close_soon(old.channel)

    def _end_call(self, generation: _Generation) -> None:
        with self._lock:
            generation.open_calls -= 1
            idle = generation.retired and generation.open_calls == 0
            if idle:
                self._retired.discard(generation)
        if idle:
            _close_soon(generation.channel)

    # -- grpc.Channel ------------------------------------------------------------------------

    def unary_unary(self, *args: Any, **kwargs: Any) -> Any:
        return _UnaryCallable(self, "unary_unary", args, kwargs)

    def stream_unary(self, *args: Any, **kwargs: Any) -> Any:
        return _UnaryCallable(self, "stream_unary", args, kwargs)

    def unary_stream(self, *args: Any, **kwargs: Any) -> Any:
        return _StreamCallable(self, "unary_stream", args, kwargs)

    def stream_stream(self, *args: Any, **kwargs: Any) -> Any:
        return _StreamCallable(self, "stream_stream", args, kwargs)

    def subscribe(self, callback: Callable[..., Any], try_to_connect: bool = False) -> None:
        with self._lock:
            channel = self._subscriptions[callback] = self._current.channel
        channel.subscribe(callback, try_to_connect=try_to_connect)

    def unsubscribe(self, callback: Callable[..., Any]) -> None:
        with self._lock:
            channel = self._subscriptions.pop(callback, None)
        if channel is not None:
            channel.unsubscribe(callback)

    def close(self) -> None:
        """Close every underlying channel, cancelling the calls still open on any."""
        with self._lock:
            self._closed = True
            generations = [self._current, *self._retired]
            self._retired.clear()
        for generation in generations:
            generation.channel.close()

    def __enter__(self) -> ReloadingChannel:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()


def _close_soon(channel: grpc.Channel) -> None:
    """Close a channel nobody uses any more, off the calling thread: the last call on it may
    end in one of gRPC's own callbacks, which must not close the channel it runs for."""
    threading.Thread(target=channel.close, name="grpc-retired-channel", daemon=True).start()


class _FollowingCallable:
    def __init__(
        self, owner: ReloadingChannel, kind: str, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> None:
        self._owner = owner
        self._kind = kind
        self._args = args
        self._kwargs = kwargs

    def _open(self) -> tuple[_Generation, Any]:
        generation = self._owner._open_call()
        try:
            return generation, generation.callable(self._kind, self._args, self._kwargs)
        except BaseException:
            self._owner._end_call(generation)
            raise


class _UnaryCallable(_FollowingCallable):
    """A unary-response call: it is open until it returns, or until its future is done."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        generation, call = self._open()
        try:
            return call(*args, **kwargs)
        finally:
            self._owner._end_call(generation)

    def with_call(self, *args: Any, **kwargs: Any) -> Any:
        generation, call = self._open()
        try:
            return call.with_call(*args, **kwargs)
        finally:
            self._owner._end_call(generation)

    def future(self, *args: Any, **kwargs: Any) -> Any:
        generation, call = self._open()
        try:
            future = call.future(*args, **kwargs)
        except BaseException:
            self._owner._end_call(generation)
            raise
        future.add_done_callback(lambda _done: self._owner._end_call(generation))
        return future


class _StreamCallable(_FollowingCallable):
    """A response-streaming call: it is open until the stream terminates."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        generation, call = self._open()
        try:
            stream = call(*args, **kwargs)
        except BaseException:
            self._owner._end_call(generation)
            raise
        if not stream.add_callback(lambda: self._owner._end_call(generation)):
            self._owner._end_call(generation)  # it had already terminated
        return stream
