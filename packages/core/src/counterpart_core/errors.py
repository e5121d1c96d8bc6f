"""The error hierarchy of the node.

Every error carries a stable, UPPER_SNAKE_CASE ``reason`` (AIP-193 ``ErrorInfo.reason``)
that clients can branch on, and a message for people. The gRPC layer maps the classes
to status codes in one place (``directory_server.service.errors``); the CLIs print the
message and exit with code 1.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from google.protobuf.message import Message

QUOTE_CHARS = 60  # what an error message quotes of a rejected value, at most


def quote(value: str, limit: int = QUOTE_CHARS) -> str:
    """``repr`` of a value for an error message, cut to its first ``limit`` characters.

    Messages must not repeat what a caller sent in full: a megabyte in a name would come
    back as a megabyte of message, more than gRPC lets trailers carry. Every domain helper
    that quotes input goes through here.
    """
    if len(value) <= limit:
        return repr(value)
    return f"{value[:limit]!r}… ({len(value)} characters)"


class CounterpartError(Exception):
    """Root of every error the node raises on purpose."""

    default_reason = "INTERNAL"

    def __init__(
        self,
        message: str,
        *,
        reason: str | None = None,
        metadata: Mapping[str, str] | None = None,
        details: Sequence[Message] = (),
    ) -> None:
        super().__init__(message)
        self.message = message
        self.reason = reason or self.default_reason
        self.metadata: dict[str, str] = dict(metadata or {})
        # protobuf messages the status carries next to its ErrorInfo (google.rpc.Status
        # details), e.g. the proof that a name asked for does not exist
        self.details: list[Message] = list(details)

    def __str__(self) -> str:
        return self.message


class InvalidArgumentError(CounterpartError):
    """A caller passed something malformed (a name, a filter, a page token, a code)."""

    default_reason = "INVALID_ARGUMENT"


class ValidationError(InvalidArgumentError):
    """A record does not satisfy the schema or the vocabularies.

    ``location`` names where: the file, the record and the field.
    """

    default_reason = "INVALID_RECORD"

    def __init__(
        self,
        message: str,
        *,
        reason: str | None = None,
        file: str = "",
        record: str = "",
        field: str = "",
    ) -> None:
        where = ", ".join(
            part
            for part in (
                f"file {file}" if file else "",
                f"record {record}" if record else "",
                f"field {field}" if field else "",
            )
            if part
        )
        super().__init__(
            f"{where}: {message}" if where else message,
            reason=reason,
            metadata={k: v for k, v in (("file", file), ("record", record), ("field", field)) if v},
        )
        self.file = file
        self.record = record
        self.field = field


class NotFoundError(CounterpartError):
    """The named resource does not exist (or is not visible to the caller)."""

    default_reason = "NOT_FOUND"


class VerificationError(CounterpartError):
    """Something that should have been signed or proven is not."""

    default_reason = "VERIFICATION_FAILED"


class SignatureError(VerificationError):
    """A signature is missing, made by an unknown or invalid key, or does not verify."""

    default_reason = "BAD_SIGNATURE"


class ProofError(VerificationError):
    """A Merkle inclusion or consistency proof does not verify (RFC 9162 section 2.1)."""

    default_reason = "BAD_PROOF"


class FederationError(VerificationError):
    """A federation document cannot be accepted (version, threshold, expiry)."""

    default_reason = "FEDERATION_REJECTED"


class ConflictError(CounterpartError):
    """The stored state changed under the operation (e.g. an append raced another)."""

    default_reason = "CONFLICT"


class ConfigurationError(CounterpartError):
    """The node is not set up for the operation (no key, no federation document...)."""

    default_reason = "FAILED_PRECONDITION"


class KeyFileError(CounterpartError):
    """A private key file cannot be read, decrypted or written safely."""

    default_reason = "KEY_FILE"


class AuthenticationError(CounterpartError):
    """The caller's credentials (access token, certificate) are missing, malformed, expired,
    revoked or not the federation's: gRPC UNAUTHENTICATED."""

    default_reason = "UNAUTHENTICATED"


class PermissionDeniedError(CounterpartError):
    """The caller is known but may not do this: gRPC PERMISSION_DENIED."""

    default_reason = "PERMISSION_DENIED"


class ResourceExhaustedError(CounterpartError):
    """A bounded resource of the node is in full use (watchers, …): gRPC RESOURCE_EXHAUSTED."""

    default_reason = "RESOURCE_EXHAUSTED"
