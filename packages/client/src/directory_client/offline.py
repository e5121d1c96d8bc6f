"""The offline copy, client side: where it lives, and a client that answers from it.

The copy is a node store without keys (``directory_server.mirror``), so it needs the node
distribution: ``pip install 'counterpart-directory-client[offline]'``. Without it the
client still installs and answers online; ``counterpart mirror`` and ``--offline`` say
what to install (exit 2).

``OfflineClient`` runs the node's DirectoryService over the copy on a Unix socket in a
private directory and checks every answer against the pinned document exactly as for a
remote node: a byte changed in the file fails the answer's own verification.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from types import ModuleType
from typing import Any

import grpc  # type: ignore[import-untyped, unused-ignore]

from counterpart.v1 import directory_service_pb2 as ds
from counterpart_core.errors import CounterpartError
from counterpart_core.timeutil import utcnow
from directory_client.client import DirectoryClient, client_home
from directory_client.errors import ClientError, VerificationFailed
from directory_client.verify import Verification

__all__ = ["MIRROR_FILE", "NEEDS_NODE", "OfflineClient", "OfflineUnavailable", "mirror_path", "node_mirror"]

MIRROR_FILE = "mirror.db"
DAMAGED_REASONS = frozenset({"INDEX_STALE"})  # the node's lookup found its store inconsistent
NEEDS_NODE = "the offline copy needs the node package: pip install 'counterpart-directory-client[offline]'"


class OfflineUnavailable(ClientError):
    """The node distribution is not installed (a usage error: exit 2)."""


def mirror_path(given: Path | None = None) -> Path:
    """The copy: ``given``, else $COUNTERPART_MIRROR, else <client home>/mirror.db."""
    if given is not None:
        return given
    env = os.environ.get("COUNTERPART_MIRROR", "")
    return Path(env).expanduser() if env else client_home() / MIRROR_FILE


def node_mirror() -> ModuleType:
    """``directory_server.mirror``, or OfflineUnavailable saying what to install."""
    try:
        from directory_server import mirror
    except ImportError as e:
        raise OfflineUnavailable(NEEDS_NODE) from e
    return mirror


def copy_error(e: CounterpartError) -> ClientError:
    """A problem of the copy (missing, damaged, another federation) as the CLI prints it."""
    cls = VerificationFailed if "VERIF" in e.reason or "MISMATCH" in e.reason else ClientError
    return cls(f"{e.message} [{e.reason}]")


@dataclass(frozen=True)
class OfflineInfo:
    """How old the copy is and whose checkpoints have expired, for the answer's last lines."""

    path: Path
    last_pull: datetime | None
    expired: list[str]


class OfflineClient(DirectoryClient):
    """A DirectoryClient whose node is the offline copy, served in-process."""

    def __init__(
        self, path: Path, pinned_envelope: bytes, *, federation: Any, token: str | None, timeout: float,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        mirror = node_mirror()
        try:
            self._server = mirror.OfflineServer(path, pinned_envelope)
        except CounterpartError as e:
            raise copy_error(e) from None
        state = self._server.state
        self.offline = OfflineInfo(path, state.last_pull, list(state.expired))
        try:
            super().__init__(
                self._server.target, federation=federation, verify=True, timeout=timeout, clock=clock,
                token=token, tls=False,
            )
        except BaseException:
            self._server.close()
            raise

    def close(self) -> None:
        super().close()
        self._server.close()

    def _checked(
        self, response: Any, request: ds.FindCounterpartRequest | None = None, asked: ds.AsOf | None = None
    ) -> tuple[Any, Verification | None]:
        try:
            return super()._checked(response, request, asked)
        except VerificationFailed as e:
            raise VerificationFailed(
                f"the offline copy {self.offline.path} failed verification: {e.message}; the file was changed "
                "or damaged since it was mirrored: run `counterpart mirror --verify`, then mirror it again"
            ) from None

    def _server_error(self, err: Any) -> Any:
        """A lookup that finds the copy inconsistent with itself (a derived row pointing
        at an entry that is not there, a failure inside the node's code) is a damaged or
        changed file: reported as a verification failure, not as "not found"."""
        error = super()._server_error(err)
        if error.reason in DAMAGED_REASONS or error.code in (grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN,
                                                             grpc.StatusCode.DATA_LOSS):
            return VerificationFailed(
                f"the offline copy {self.offline.path} failed verification: {error}; the file was changed or "
                "damaged since it was mirrored: run `counterpart mirror --verify`, then mirror it again"
            )
        return error


def token_channel(channel: grpc.Channel, token: str | None) -> grpc.Channel:
    """The channel, sending ``authorization: Bearer`` on every call when signed in."""
    if not token:
        return channel
    metadata = (("authorization", f"Bearer {token}"),)

    class _Auth(grpc.UnaryUnaryClientInterceptor, grpc.UnaryStreamClientInterceptor):  # type: ignore[misc, unused-ignore]
        def _details(self, details: Any) -> Any:
            return _Details(details.method, details.timeout, tuple(details.metadata or ()) + metadata,
                            details.credentials, getattr(details, "wait_for_ready", None),
                            getattr(details, "compression", None))

        def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
            return continuation(self._details(details), request)

        def intercept_unary_stream(self, continuation: Any, details: Any, request: Any) -> Any:
            return continuation(self._details(details), request)

    return grpc.intercept_channel(channel, _Auth())


@dataclass(frozen=True)
class _Details(grpc.ClientCallDetails):  # type: ignore[misc, unused-ignore]
    method: str
    timeout: float | None
    metadata: Any
    credentials: Any
    wait_for_ready: Any
    compression: Any
