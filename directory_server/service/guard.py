"""Requests that cannot be decoded get INVALID_ARGUMENT / MALFORMED_REQUEST, on every method.

Left alone, gRPC answers bytes that are not the method's protobuf message with INTERNAL
("Exception deserializing request!") and no ErrorInfo, before any servicer runs. This
interceptor wraps each handler's ``request_deserializer`` so that a decode failure reaches
the handler as a marker instead, and the handler aborts with the status the one mapping
(``service.errors.to_status``) gives. It covers every method of every service on the
server (ours, health, reflection) and all four arities; register it first, so the other
interceptors only ever see requests that decoded.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from typing import Any, NoReturn

import grpc

from counterpart_core.errors import InvalidArgumentError
from directory_server.service.errors import to_status
from directory_server.service.interceptors import Behaviour, Wrapped, rewrap

log = logging.getLogger("counterpart.rpc")


class Undecodable:
    """Stands for a request message that did not decode."""

    __slots__ = ("error",)

    def __init__(self, error: str) -> None:
        self.error = error


def guarded_deserializer(
    deserializer: Callable[[bytes], Any] | None,
) -> Callable[[bytes], Any] | None:
    """The deserializer, returning an ``Undecodable`` where it would raise."""
    if deserializer is None:  # the handler takes raw bytes: nothing can fail to decode
        return None
    inner = deserializer

    def deserialize(data: bytes) -> Any:
        try:
            return inner(data)
        except Exception as e:  # noqa: BLE001 - any failure to decode is the caller's input
            return Undecodable(type(e).__name__)

    return deserialize


def malformed(method: str, marker: Undecodable) -> InvalidArgumentError:
    return InvalidArgumentError(
        f"the request is not a valid message for {method} ({marker.error}): "
        "send the method's request message in protobuf binary encoding",
        reason="MALFORMED_REQUEST",
        metadata={"method": method},
    )


def _abort(context: grpc.ServicerContext, method: str, marker: Undecodable) -> NoReturn:
    log.info("malformed request", extra={"method": method, "error": marker.error})
    context.abort_with_status(to_status(malformed(method, marker)))
    raise AssertionError("abort_with_status returned")  # pragma: no cover - it always raises


def _checked(requests: Iterator[Any], context: grpc.ServicerContext, method: str) -> Iterator[Any]:
    """A request stream that ends the call at the first message that did not decode."""
    for request in requests:
        if isinstance(request, Undecodable):
            _abort(context, method, request)
        yield request


class RequestGuard(grpc.ServerInterceptor):
    """Turns undecodable requests into MALFORMED_REQUEST on every method (module docstring)."""

    def __init__(self) -> None:
        self._wrapped = Wrapped()

    def intercept_service(
        self, continuation: Callable[[Any], Any], details: grpc.HandlerCallDetails
    ) -> Any:
        handler = continuation(details)
        if handler is None:
            return None
        method = str(details.method)
        return self._wrapped.get(method, handler, lambda: self._guard(handler, method))

    @staticmethod
    def _guard(handler: Any, method: str) -> Any:
        def single(inner: Behaviour) -> Behaviour:
            def checked(request: Any, context: grpc.ServicerContext) -> Any:
                if isinstance(request, Undecodable):
                    _abort(context, method, request)
                return inner(request, context)

            return checked

        def stream(inner: Behaviour) -> Behaviour:
            def checked(requests: Iterator[Any], context: grpc.ServicerContext) -> Any:
                return inner(_checked(requests, context, method), context)

            return checked

        return rewrap(
            handler, unary_unary=single, unary_stream=single, stream_unary=stream, stream_stream=stream,
            request_deserializer=guarded_deserializer(handler.request_deserializer),
        )
