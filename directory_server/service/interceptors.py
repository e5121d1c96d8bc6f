"""What every interceptor of the node needs: a method handler rebuilt with its behaviour
wrapped, whatever the handler's kind (unary or streaming request, unary or streaming
response), and the status code a call ended with."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import grpc

Behaviour = Callable[[Any, grpc.ServicerContext], Any]
Wrap = Callable[[Behaviour], Behaviour]
MAX_WRAPPED = 1024  # wrapped handlers kept per interceptor (a few per method of the server)

_FACTORIES = {
    "unary_unary": grpc.unary_unary_rpc_method_handler,
    "unary_stream": grpc.unary_stream_rpc_method_handler,
    "stream_unary": grpc.stream_unary_rpc_method_handler,
    "stream_stream": grpc.stream_stream_rpc_method_handler,
}


def rewrap(
    handler: Any,
    *,
    unary_unary: Wrap | None = None,
    unary_stream: Wrap | None = None,
    stream_unary: Wrap | None = None,
    stream_stream: Wrap | None = None,
    request_deserializer: Callable[[bytes], Any] | None = None,
) -> Any:
    """The handler of the same kind with its behaviour passed through the wrap given for that
    kind (a kind without one keeps its behaviour), and optionally another deserializer."""
    wraps = {
        "unary_unary": unary_unary, "unary_stream": unary_stream,
        "stream_unary": stream_unary, "stream_stream": stream_stream,
    }
    for kind, factory in _FACTORIES.items():
        behaviour = getattr(handler, kind)
        if behaviour is None:
            continue
        wrap = wraps[kind]
        if wrap is None and request_deserializer is None:
            return handler
        return factory(
            wrap(behaviour) if wrap is not None else behaviour,
            request_deserializer=request_deserializer or handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )
    return handler


def status_name(context: grpc.ServicerContext, default: str) -> str:
    """The status code the handler set or aborted with (``default`` until it sets one)."""
    code = getattr(context, "code", lambda: None)()
    return code.name if isinstance(code, grpc.StatusCode) else default


class Wrapped:
    """The handlers an interceptor made, one per method and inner handler: it wraps the same
    handler the same way on every call of a method, and making it anew on every call cost
    about as much as answering FindCounterpart from a kept answer (bench/README.md). The
    inner handler is part of the key, so an inner interceptor that does make a new handler
    per call only costs a miss; at most ``MAX_WRAPPED`` are kept."""

    def __init__(self) -> None:
        self._made: dict[tuple[str, Any], Any] = {}

    def get(self, method: str, handler: Any, make: Callable[[], Any]) -> Any:
        key = (method, handler)
        made = self._made.get(key)
        if made is None:
            made = make()
            if len(self._made) >= MAX_WRAPPED:
                self._made.clear()
            self._made[key] = made
        return made
