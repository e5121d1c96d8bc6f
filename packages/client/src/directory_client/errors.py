"""Errors the client raises on purpose.

Every error the client means to raise derives from :class:`ClientError`, so the CLI
can print it as one line and pick an exit code without a traceback. The node's own
error hierarchy (``counterpart_core.errors``) stays on the server side: what
the client sees of it is a gRPC status, wrapped here as :class:`ServerError`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import grpc  # type: ignore[import-untyped, unused-ignore]


class ClientError(Exception):
    """Root of every error the client raises on purpose; ``message`` is for people."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


class VerificationFailed(ClientError):
    """The node's answer does not check out against the pinned federation document.

    Raised when a signature, an inclusion proof, a checkpoint or the match between a
    record and its signed entry fails: the answer must not be relied upon.
    """


class NotTrusted(ClientError):
    """No usable federation document is pinned, so answers cannot be verified."""


class TrustRefused(ClientError):
    """A federation document cannot be pinned (bad signatures, expired, rollback...)."""


class InvalidName(ClientError):
    """A resource name the client cannot route to a lookup (a usage error)."""


class ServerError(ClientError):
    """The node answered with an error status, or could not be reached.

    ``code`` is the gRPC status code; ``reason`` the node's stable ``ErrorInfo.reason``
    (UPPER_SNAKE_CASE, empty when the status carried none, e.g. a transport failure).
    """

    def __init__(
        self, code: grpc.StatusCode, reason: str, message: str, details: Sequence[Any] = ()
    ) -> None:
        super().__init__(message)
        self.code = code
        self.reason = reason
        # the google.rpc.Status details beside the ErrorInfo (packed Any messages), e.g. the
        # proof that a name asked for does not exist
        self.details: list[Any] = list(details)

    @property
    def not_found(self) -> bool:
        """The named resource does not exist (or this node holds nothing of it)."""
        return bool(self.code == grpc.StatusCode.NOT_FOUND)

    def __str__(self) -> str:
        return f"{self.message} [{self.reason}]" if self.reason else self.message
