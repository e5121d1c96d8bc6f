"""The caller of the current RPC, as the authentication interceptor established it."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from contextvars import ContextVar, Token
from datetime import datetime
from typing import Any, cast

import grpc

from counterpart_core import tls
from counterpart_core.access import ANONYMOUS, Caller, verify_token
from counterpart_core.errors import (
    AuthenticationError,
    CounterpartError,
    PermissionDeniedError,
)
from counterpart_core.federation import Federation
from directory_server.service.errors import to_status
from directory_server.service.interceptors import Behaviour, Wrapped, rewrap

_caller: ContextVar[Caller] = ContextVar("counterpart_caller", default=ANONYMOUS)


def current() -> Caller:
    """The caller of the RPC this thread is serving (anonymous unless authenticated)."""
    return _caller.get()


CALLER_HEADER = "counterpart-caller"
"""Initial metadata of every answer: who the node took the caller for ("anonymous",
"node of GE", "prosecutor.1 (prosecutor, AZ)")."""


def bearer_token(metadata: Iterable[tuple[str, str | bytes]]) -> str | None:
    """The token of an ``authorization: Bearer …`` header, if any."""
    for key, value in metadata:
        if key == "authorization":
            text = value.decode("latin-1") if isinstance(value, bytes) else value
            scheme, _, token = text.partition(" ")
            if scheme.lower() != "bearer" or not token.strip():
                raise AuthenticationError("the authorization header must be `Bearer <token>`", reason="TOKEN_MALFORMED")
            return token.strip()
    return None


class Authenticator(grpc.ServerInterceptor):
    """Establishes who calls, once per call, before any servicer runs (the shape of grpc's
    examples/python/auth interceptor): a member node by its client certificate, a user by
    the access token in ``authorization: Bearer …``, otherwise anonymous. Bad credentials end
    the call with UNAUTHENTICATED or PERMISSION_DENIED and a stable reason; what each caller
    may see is decided in the domain (``Caller.sees_members_only``)."""

    def __init__(
        self, federation: Callable[[], Federation], revoked: Callable[[str], bool], own_member: str,
        clock: Callable[[], datetime],
    ) -> None:
        self._federation = federation
        self._revoked = revoked
        self._own_member = own_member
        self._clock = clock
        self._wrapped = Wrapped()

    def authenticate(self, context: grpc.ServicerContext) -> Caller:
        # at run time each value is a list of bytes (the stubs say bytes)
        auth = cast(dict[str, list[bytes]], dict(context.auth_context()))
        certificates = auth.get("x509_pem_cert")
        if certificates:
            member = tls.member_of_certificate(self._federation().members(), tls.der(certificates[0]))
            if member is None:
                raise PermissionDeniedError(
                    "the client certificate is not one the current federation document lists for a member",
                    reason="CERTIFICATE_NOT_ADMITTED",
                )
            return Caller("node", member=member)
        token = bearer_token(context.invocation_metadata())
        if token is None:
            return ANONYMOUS
        over_tls = auth.get("transport_security_type", []) == [b"ssl"]
        if not over_tls and not _loopback_peer(context.peer()):
            raise AuthenticationError(
                "access tokens are accepted over TLS only; this connection is plaintext", reason="TOKEN_NEEDS_TLS"
            )
        caller = verify_token(token, self._federation(), self._clock())
        if caller.member == self._own_member and self._revoked(caller.token_id):
            raise AuthenticationError("the access token was revoked by its node", reason="TOKEN_REVOKED")
        return caller

    def intercept_service(self, continuation: Callable[[Any], Any], details: grpc.HandlerCallDetails) -> Any:
        handler = continuation(details)
        if handler is None:
            return None
        return self._wrapped.get(str(details.method), handler, lambda: self._authenticating(handler))

    def _authenticating(self, handler: Any) -> Any:
        def unary(inner: Behaviour) -> Behaviour:
            def authenticated(request: Any, context: grpc.ServicerContext) -> Any:
                saved = self._enter(context)
                try:
                    return inner(request, context)
                finally:
                    _caller.reset(saved)

            return authenticated

        def stream(inner: Behaviour) -> Behaviour:
            def authenticated(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
                saved = self._enter(context)
                try:
                    yield from inner(request, context)
                finally:
                    _caller.reset(saved)

            return authenticated

        return rewrap(handler, unary_unary=unary, unary_stream=stream)

    def _enter(self, context: grpc.ServicerContext) -> Token[Caller]:
        try:
            caller = self.authenticate(context)
        except CounterpartError as e:
            context.abort_with_status(to_status(e))
        context.send_initial_metadata(((CALLER_HEADER, caller.describe()),))
        return _caller.set(caller)


def _loopback_peer(peer: str) -> bool:
    """gRPC's peer string: "ipv4:127.0.0.1:5555", "ipv6:[::1]:5555", "unix:…"."""
    return peer.startswith(("ipv4:127.", "ipv6:[::1]", "unix:"))
