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

from counterpart_core.errors import (
    AuthenticationError,
    ConfigurationError,
    ConflictError,
    CounterpartError,
    InvalidArgumentError,
    NotFoundError,
    PermissionDeniedError,
    ResourceExhaustedError,
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
    (AuthenticationError, code_pb2.UNAUTHENTICATED),
    (PermissionDeniedError, code_pb2.PERMISSION_DENIED),
    (ResourceExhaustedError, code_pb2.RESOURCE_EXHAUSTED),
]


# What one status may carry. gRPC sends the message twice in the trailers (grpc-message,
# percent-encoded: up to 3 characters per byte; and inside grpc-status-details-bin, base64),
# and a client refuses trailers beyond 8 KiB (soft) / 16 KiB (hard) with RESOURCE_EXHAUSTED
# and no details at all. These caps keep the worst case near 7 KiB.
MAX_MESSAGE_BYTES = 1000
MAX_REASON_CHARS = 63  # AIP-193
MAX_METADATA_ENTRIES = 8
MAX_METADATA_KEY_BYTES = 64
MAX_METADATA_VALUE_BYTES = 128


def _cap(text: str, max_bytes: int) -> str:
    """Valid UTF-8 of at most max_bytes bytes, ending in '…' when it had to be cut."""
    raw = text.encode("utf-8", "backslashreplace")  # lone surrogates cannot go on the wire
    if len(raw) <= max_bytes:
        return raw.decode("utf-8")
    ellipsis = "…".encode()
    return raw[: max_bytes - len(ellipsis)].decode("utf-8", "ignore") + "…"


def to_status(error: CounterpartError) -> grpc.Status:
    """The status for an error: code from its class, one ErrorInfo, everything size-capped."""
    code = next((c for cls, c in _CODES if isinstance(error, cls)), code_pb2.INTERNAL)
    metadata = {
        _cap(k, MAX_METADATA_KEY_BYTES): _cap(v, MAX_METADATA_VALUE_BYTES)
        for k, v in sorted(error.metadata.items())[:MAX_METADATA_ENTRIES]
    }
    info = error_details_pb2.ErrorInfo(
        reason=error.reason[:MAX_REASON_CHARS] or "INTERNAL", domain=ERROR_DOMAIN, metadata=metadata
    )
    details = []
    for message_detail in [info, *error.details]:
        detail = any_pb2.Any()
        detail.Pack(message_detail)
        details.append(detail)
    message = _cap(error.message, MAX_MESSAGE_BYTES)
    return rpc_status.to_status(status_pb2.Status(code=code, message=message, details=details))


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
