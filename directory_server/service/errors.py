"""The one place where domain errors become gRPC statuses (AIP-193).

Each status carries a google.rpc.Status with one ErrorInfo whose reason is the
error's stable UPPER_SNAKE_CASE code and whose domain is "counterpart.v1".
"""

from __future__ import annotations

import contextlib
import functools
import logging
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import grpc
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from directory_server.domain.errors import (
    ConfigurationError,
    ConflictError,
    CounterpartError,
    InvalidArgumentError,
    NotFoundError,
    VerificationError,
)

ERROR_DOMAIN = "counterpart.v1"
log = logging.getLogger("counterpart.rpc")

_CODES: list[tuple[type[CounterpartError], int]] = [
    (InvalidArgumentError, code_pb2.INVALID_ARGUMENT),
    (NotFoundError, code_pb2.NOT_FOUND),
    (ConfigurationError, code_pb2.FAILED_PRECONDITION),
    (ConflictError, code_pb2.ABORTED),
    (VerificationError, code_pb2.DATA_LOSS),
]


def to_status(error: CounterpartError) -> grpc.Status:
    code = next((c for cls, c in _CODES if isinstance(error, cls)), code_pb2.INTERNAL)
    info = error_details_pb2.ErrorInfo(reason=error.reason, domain=ERROR_DOMAIN, metadata=error.metadata)
    detail = any_pb2.Any()
    detail.Pack(info)
    return rpc_status.to_status(status_pb2.Status(code=code, message=error.message, details=[detail]))


F = TypeVar("F", bound=Callable[..., Any])


@contextlib.contextmanager
def _aborting(context: grpc.ServicerContext, method: str) -> Iterator[None]:
    """Abort the call with the mapped status when the domain raises; never leak a traceback."""
    try:
        yield
    except CounterpartError as e:
        context.abort_with_status(to_status(e))
    except Exception:
        log.exception("unexpected error in %s", method)
        context.abort_with_status(to_status(CounterpartError("internal error; see the node's log", reason="INTERNAL")))


def handle_errors(method: F) -> F:
    """Unary methods: a domain error becomes the call's status."""

    @functools.wraps(method)
    def wrapper(self: Any, request: Any, context: grpc.ServicerContext) -> Any:
        with _aborting(context, method.__name__):
            return method(self, request, context)

    return wrapper  # type: ignore[return-value]


def handle_stream_errors(method: F) -> F:
    """Server-streaming methods: an error raised while streaming ends the stream with its status."""

    @functools.wraps(method)
    def wrapper(self: Any, request: Any, context: grpc.ServicerContext) -> Any:
        with _aborting(context, method.__name__):
            yield from method(self, request, context)

    return wrapper  # type: ignore[return-value]
