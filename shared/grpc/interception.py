"""Re-wrapping a gRPC method handler's behaviour, for any of the four RPC shapes.

A server interceptor only sees the handler; to run code around each call (with its request and
context) it must build a new handler of the same shape around a wrapped behaviour. The metrics
and error interceptor and the auth interceptor both do it through :func:`rewrap_handler`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import grpc

#: Takes a handler's behaviour and whether it streams responses; returns the wrapped behaviour.
BehaviourWrapper = Callable[[Callable[..., Any], bool], Callable[..., Any]]


def rewrap_handler(handler: grpc.RpcMethodHandler, wrap: BehaviourWrapper) -> grpc.RpcMethodHandler:
    """A handler like ``handler`` whose behaviour is ``wrap(behaviour, response_streaming)``."""
    factory: Any
    behaviour: Any
    if handler.unary_unary:
        factory, behaviour = grpc.unary_unary_rpc_method_handler, handler.unary_unary
    elif handler.unary_stream:
        factory, behaviour = grpc.unary_stream_rpc_method_handler, handler.unary_stream
    elif handler.stream_unary:
        factory, behaviour = grpc.stream_unary_rpc_method_handler, handler.stream_unary
    else:
        factory, behaviour = grpc.stream_stream_rpc_method_handler, handler.stream_stream
    return factory(
        wrap(behaviour, handler.response_streaming),
        request_deserializer=handler.request_deserializer,
        response_serializer=handler.response_serializer,
    )
