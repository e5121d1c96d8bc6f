"""A DirectoryService client that verifies every answer against a pinned trust root.

The client trusts no node: it pins a federation document once (``counterpart trust
FILE``, see :func:`pin`) and checks each answer's signatures and Merkle proofs against
it (:mod:`directory_client.verify`). Verification can be switched off for development,
and then every method says so by returning ``None`` instead of a :class:`Verification`.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from types import TracebackType
from typing import Any, Self, TypeVar, cast

import grpc  # type: ignore[import-untyped, unused-ignore]
from google.protobuf.message import Message
from google.rpc import error_details_pb2  # type: ignore[import-untyped, unused-ignore]
from grpc_status import rpc_status  # type: ignore[import-untyped, unused-ignore]

from counterpart.v1 import directory_service_pb2 as ds
from counterpart.v1 import directory_service_pb2_grpc as ds_grpc
from counterpart.v1 import replication_service_pb2 as rs
from counterpart.v1 import replication_service_pb2_grpc as rs_grpc
from counterpart_core import effective, names
from counterpart_core import federation as fed
from counterpart_core import tls as tls_names
from counterpart_core.errors import CounterpartError
from counterpart_core.timeutil import to_timestamp, utcnow
from directory_client.errors import (
    ClientError,
    InvalidName,
    NotTrusted,
    ServerError,
    TrustRefused,
    VerificationFailed,
)
from directory_client.verify import (
    Verification,
    verify_member_checkpoint,
    verify_not_found,
    verify_response,
)

__all__ = [
    "DEFAULT_TARGET",
    "DirectoryClient",
    "PinResult",
    "client_home",
    "load_pinned",
    "pin",
    "pinned_path",
]

DEFAULT_TARGET = "127.0.0.1:7700"
CALLER_HEADER = "counterpart-caller"  # who the node took the caller for (initial metadata)
TOKEN_FILE = "token"
FEDERATION_FILE = "federation.json"
ERROR_DOMAIN = "counterpart.v1"
NOT_TRUSTED_HINT = "no pinned federation document; run `counterpart trust FILE` or pass --no-verify"

R = TypeVar("R", bound=Message)

# The service as the wire contract describes it; method paths and message types come from
# here rather than from the generated stub, whose typing needs grpc's stubs.

# Collection in a record name -> the Get method that serves it.
_GET_METHODS: dict[str, tuple[str, type[Message]]] = {
    "authorities": ("GetAuthority", ds.GetAuthorityRequest),
    "contacts": ("GetContact", ds.GetContactRequest),
    "rules": ("GetRule", ds.GetRuleRequest),
    "treaties": ("GetTreaty", ds.GetTreatyRequest),
    "places": ("GetPlace", ds.GetPlaceRequest),
}
# Kind (singular or plural) -> the List method that serves it.
_LIST_METHODS: dict[str, tuple[str, type[Message]]] = {
    "authorities": ("ListAuthorities", ds.ListAuthoritiesRequest),
    "contacts": ("ListContacts", ds.ListContactsRequest),
    "rules": ("ListRules", ds.ListRulesRequest),
    "treaties": ("ListTreaties", ds.ListTreatiesRequest),
    "places": ("ListPlaces", ds.ListPlacesRequest),
}
_LIST_METHODS.update({names.COLLECTIONS[c]: m for c, m in list(_LIST_METHODS.items())})


# --- the pinned trust root ----------------------------------------------------------------


def client_home() -> Path:
    """The client's directory: $COUNTERPART_HOME, else ~/.config/counterpart."""
    env = os.environ.get("COUNTERPART_HOME", "")
    return Path(env).expanduser() if env else Path.home() / ".config" / "counterpart"


def pinned_path(home: Path | None = None) -> Path:
    """Where the pinned federation document (DSSE JSON) lives."""
    return (home or client_home()) / FEDERATION_FILE


def load_pinned(now: datetime | None = None, home: Path | None = None) -> fed.Federation | None:
    """The pinned federation document, re-verified; None if nothing is pinned.

    Raises :class:`NotTrusted` if the file exists but no longer verifies (edited,
    corrupted or expired): answers must then not be checked against it.
    """
    path = pinned_path(home)
    if not path.exists():
        return None
    try:
        return fed.verify_initial(fed.read_file(path), now or utcnow())
    except CounterpartError as e:
        raise NotTrusted(
            f"the pinned federation document {path} cannot be used: {e.message}; "
            "run `counterpart trust FILE` with a current document"
        ) from e


def token_path(home: Path | None = None) -> Path:
    """Where `counterpart login` keeps the access token (mode 600)."""
    return (home or client_home()) / TOKEN_FILE


def load_token(home: Path | None = None) -> str | None:
    """The access token: $COUNTERPART_TOKEN, else the one saved by `counterpart login`."""
    env = os.environ.get("COUNTERPART_TOKEN", "").strip()
    if env:
        return env
    path = token_path(home)
    if not path.exists():
        return None
    if path.stat().st_mode & 0o077:
        raise ClientError(f"{path} can be read by others; chmod 600 {path} (it is a secret)")
    return path.read_text(encoding="utf-8").strip() or None


def save_token(token: str, home: Path | None = None) -> Path:
    """Keep the token for later commands, readable by its owner only (mode 600)."""
    path = token_path(home)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=".token-", dir=path.parent)  # created with mode 600
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(token.strip() + "\n")
    os.replace(tmp_name, path)
    return path


@dataclass(frozen=True)
class PinResult:
    """What :func:`pin` did: the accepted document, where, and what it replaced."""

    federation: fed.Federation
    path: Path
    previous_version: int | None  # version that was pinned before (None: nothing)
    unchanged: bool  # the very same document was already pinned


def _read_pinned_raw(path: Path) -> tuple[bytes, fed.Federation] | None:
    """The pinned document checked against its own root keys at its issue time.

    Expiry is not held against it here: an expired pinned document may still
    authenticate its successor, exactly as a node's stored chain does.
    """
    if not path.exists():
        return None
    envelope = fed.read_file(path)
    return envelope, fed.verify_chain([envelope])


def pin(
    path: Path, *, replace: bool = False, now: datetime | None = None, home: Path | None = None
) -> PinResult:
    """Verify a federation document and pin it as the client's trust root.

    The document must carry a threshold of its own root keys and not be expired. If a
    document of the same federation is pinned already, the new one must be the same
    version (and the same document), or exactly the next version signed as
    ``verify_next`` requires; anything else (an older version, a gap, another
    federation, a pinned file that no longer verifies) is refused unless ``replace``.
    """
    now = now or utcnow()
    try:
        envelope = fed.read_file(path)
        new = fed.verify_initial(envelope, now)
    except CounterpartError as e:
        raise TrustRefused(f"{path} cannot be trusted: {e.message} [{e.reason}]") from e

    target = pinned_path(home)
    previous_version: int | None = None
    try:
        pinned = _read_pinned_raw(target)
    except CounterpartError as e:
        if not replace:
            raise TrustRefused(
                f"the pinned document {target} does not verify ({e.message}); "
                "pass --replace to pin the new document anyway"
            ) from e
        pinned = None
    if pinned is not None:
        old_bytes, old = pinned
        previous_version = old.version
        if old_bytes == envelope:
            return PinResult(new, target, previous_version, unchanged=True)
        if not replace:
            _check_successor(old, new, envelope, now)
    _write_atomically(target, envelope)
    return PinResult(new, target, previous_version, unchanged=False)


def update_trust(
    server: str, *, timeout: float = 10.0, now: datetime | None = None, home: Path | None = None
) -> list[int]:
    """Move the pinned document forward along the chain a node serves, one verified step at a
    time (a TUF client update): each version must be exactly the next and signed by the
    thresholds of the pinned version's root keys and of its own. Returns the versions pinned;
    a step that fails stops the update and leaves the last good version pinned."""
    now = now or utcnow()
    target = pinned_path(home)
    try:
        pinned = _read_pinned_raw(target)
    except CounterpartError as e:
        raise NotTrusted(f"the pinned document {target} does not verify ({e.message}); pin one with `counterpart trust FILE`") from e
    if pinned is None:
        raise NotTrusted(NOT_TRUSTED_HINT)
    current = pinned[1]
    channel, _, _ = connect(server, current)
    try:
        with channel:
            chain = rs_grpc.ReplicationServiceStub(channel).GetFederation(
                rs.GetFederationRequest(from_version=current.version + 1), timeout=timeout
            )
    except grpc.RpcError as e:
        code = e.code() if isinstance(e, grpc.Call) else grpc.StatusCode.UNKNOWN
        details = e.details() if isinstance(e, grpc.Call) else str(e)
        raise ServerError(code, "", f"{server} did not give its federation documents: {details}") from None
    accepted: list[int] = []
    for envelope in chain.signed_documents:
        try:
            current = fed.verify_next(current, envelope, now)
        except CounterpartError as e:
            raise TrustRefused(
                f"{server} offered a document that does not follow the pinned version {current.version}: "
                f"{e.message} [{e.reason}]; version {current.version} stays pinned"
            ) from e
        _write_atomically(target, envelope)
        accepted.append(current.version)
    return accepted


def _check_successor(old: fed.Federation, new: fed.Federation, envelope: bytes, now: datetime) -> None:
    """Refuse to move the trust root anywhere but to the next signed version."""
    old_id, new_id = old.document.federation_id, new.document.federation_id
    hint = "; pass --replace if you really mean to trust it"
    if new_id != old_id:
        raise TrustRefused(
            f"federation {old_id!r} (version {old.version}) is pinned; this document is for "
            f"federation {new_id!r}{hint}"
        )
    if new.version < old.version:
        raise TrustRefused(
            f"version {new.version} is older than the pinned version {old.version} "
            f"(a rollback){hint}"
        )
    if new.version == old.version:
        raise TrustRefused(
            f"version {new.version} is pinned already with different content{hint}"
        )
    if new.version > old.version + 1:
        raise TrustRefused(
            f"version {new.version} does not follow the pinned version {old.version}: trust "
            f"version {old.version + 1} first so each step is checked{hint}"
        )
    try:
        fed.verify_next(old, envelope, now)
    except CounterpartError as e:
        raise TrustRefused(
            f"version {new.version} is not a valid successor of the pinned version "
            f"{old.version}: {e.message} [{e.reason}]{hint}"
        ) from e


def _write_atomically(target: Path, envelope: bytes) -> None:
    """Write the DSSE JSON next to ``target`` and rename it into place."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=".federation-", suffix=".json", dir=target.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        fed.write_file(tmp, envelope)
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


# --- the client ---------------------------------------------------------------------------


def connect(
    target: str, federation: fed.Federation | None, *, tls: bool | None = None, server_member: str | None = None,
    credentials: Any = None, options: list[tuple[str, Any]] | None = None,
) -> tuple[grpc.Channel, bool, str | None]:
    """(channel, over TLS, member whose certificate the node must present) for a node.

    TLS when asked, or (``tls`` None) when the pinned document lists ``target`` as a
    member's endpoint or ``target`` is not on loopback; plaintext only to loopback."""
    options = list(options or [])
    listed = federation is not None and tls_names.member_at(federation.members(), target) is not None
    local = _local(target)
    use_tls = tls if tls is not None else (credentials is not None or listed or not local)
    member: str | None = None
    if not use_tls:
        if not local:
            raise ClientError(f"refusing plaintext to {target}: only loopback addresses may be called without TLS")
        return grpc.insecure_channel(target, options=options), False, None
    if credentials is None:
        if federation is None:
            raise NotTrusted(
                "TLS needs the pinned federation document to know the node's certificate; run `counterpart trust FILE`"
            )
        try:
            roots, name, member = tls_names.trust_for(federation.members(), target, server_member)
        except CounterpartError as e:
            raise NotTrusted(f"cannot authenticate {target}: {e.message}") from e
        credentials = grpc.ssl_channel_credentials(root_certificates=roots)
        options += [("grpc.ssl_target_name_override", name), ("grpc.default_authority", name)]
    return grpc.secure_channel(target, credentials, options=options), True, member



def as_of_message(at: datetime, reading: str = effective.IN_EFFECT) -> ds.AsOf:
    """The AsOf of a request: the instant (naive means UTC) and the reading."""
    if reading not in (effective.IN_EFFECT, effective.PUBLISHED):
        raise ValueError(f"reading must be {effective.IN_EFFECT!r} or {effective.PUBLISHED!r}, not {reading!r}")
    message = ds.AsOf(
        reading=ds.AS_OF_READING_PUBLISHED if reading == effective.PUBLISHED else ds.AS_OF_READING_IN_EFFECT
    )
    message.time.CopyFrom(to_timestamp(effective.parse_instant(at)))
    return message


def _local(target: str) -> bool:
    """Loopback, or a Unix domain socket (``unix:PATH``, the offline copy's node): what
    this machine alone can reach, so plaintext (and a token in it) never leaves it."""
    return target.startswith("unix:") or tls_names.is_loopback(target)


class DirectoryClient:
    """Calls one node's DirectoryService and verifies what it answers.

    ``federation`` is the pinned trust root (see :func:`load_pinned`); it is required
    unless ``verify`` is False. Transport: TLS when ``tls`` is True, or (``tls`` None) when
    the pinned document lists ``target`` as a member's endpoint or ``target`` is not on
    loopback; the node must then present a certificate the pinned document lists for the
    member at that endpoint (``server_member`` names it for an address the document does
    not list; otherwise any member's node is accepted). Plaintext only to loopback.
    ``token`` is an access token (``counterpart login``): sent over TLS only, or in
    plaintext to loopback.
    """

    def __init__(
        self,
        target: str,
        *,
        federation: fed.Federation | None,
        verify: bool = True,
        timeout: float = 10.0,
        clock: Callable[[], datetime] = utcnow,
        credentials: Any = None,
        token: str | None = None,
        tls: bool | None = None,
        server_member: str | None = None,
    ) -> None:
        if verify and federation is None:
            raise NotTrusted(NOT_TRUSTED_HINT)
        self.target = target
        self.federation = federation
        self.verify = verify
        self.timeout = timeout
        self.clock = clock
        self.caller = ""  # who the node took us for, from its last answer
        limit = int(federation.limits.max_message_bytes) if federation else 4 * 1024 * 1024
        options: list[tuple[str, Any]] = [("grpc.max_receive_message_length", limit)]
        self._channel, self.tls, self.server_member = connect(
            target, federation, tls=tls, server_member=server_member, credentials=credentials, options=options
        )
        self._metadata: tuple[tuple[str, str], ...] = ()
        if token:  # connect() refused plaintext beyond loopback: a token never travels unprotected
            self._metadata = (("authorization", f"Bearer {token}"),)
        self.signed_in = bool(token)
        self._stub = ds_grpc.DirectoryServiceStub(self._channel)

    # --- lifecycle ----------------------------------------------------------------------

    def close(self) -> None:
        """Close the channel."""
        self._channel.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # --- calls --------------------------------------------------------------------------

    def _call(self, method: str, request: Message, response_type: type[R]) -> R:
        """Call one RPC; turn a gRPC failure into a ServerError that names the reason."""
        try:
            response, call = getattr(self._stub, method).with_call(
                request, timeout=self.timeout, metadata=self._metadata
            )
        except grpc.RpcError as e:
            raise self._server_error(e) from None
        self.caller = next((str(v) for k, v in call.initial_metadata() if k == CALLER_HEADER), "")
        if not isinstance(response, response_type):
            raise TypeError(f"{method} answered {type(response).__name__}, not {response_type.__name__}")
        return response

    def _server_error(self, err: Any) -> ServerError:
        code = err.code() if callable(getattr(err, "code", None)) else grpc.StatusCode.UNKNOWN
        details = str(err.details() if callable(getattr(err, "details", None)) else "") or ""
        reason = ""
        message = details
        extra: list[Any] = []
        try:
            status = rpc_status.from_call(err)
        except (ValueError, AttributeError):  # inconsistent or missing status trailers
            status = None
        if status is not None:
            message = str(status.message) or details
            extra = [d for d in status.details if not d.Is(error_details_pb2.ErrorInfo.DESCRIPTOR)]
            for detail in status.details:
                if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
                    info = error_details_pb2.ErrorInfo()
                    detail.Unpack(info)
                    if info.domain in ("", ERROR_DOMAIN):
                        reason = str(info.reason)
                        break
        if code == grpc.StatusCode.UNAVAILABLE and not reason:
            message = (
                f"the node at {self.target} cannot be reached ({details or 'unavailable'}); "
                "check --server / COUNTERPART_SERVER and that the node is running"
            )
        elif code == grpc.StatusCode.DEADLINE_EXCEEDED and not reason:
            message = f"the node at {self.target} did not answer within {self.timeout:g}s"
        elif not message:
            message = f"the node at {self.target} answered {code.name}"
        return ServerError(code, reason, message, extra)

    def _checked(
        self, response: R, request: ds.FindCounterpartRequest | None = None, asked: ds.AsOf | None = None
    ) -> tuple[R, Verification | None]:
        """Verify a response unless verification is off."""
        if not self.verify:
            return response, None
        assert self.federation is not None  # guaranteed by __init__
        return response, verify_response(
            self.federation, response, self.clock(), request, asked, signed_in=self.signed_in
        )

    # --- lookups ------------------------------------------------------------------------

    def find_counterpart(
        self, request: ds.FindCounterpartRequest | None = None, /, *, as_of: datetime | None = None,
        reading: str = effective.IN_EFFECT, **fields: Any,
    ) -> tuple[ds.FindCounterpartResponse, Verification | None]:
        """Answer "whom do I send this request to?"; pass a request or its fields. With
        ``as_of``, the answer the directory gives for that instant (``reading``:
        ``effective.IN_EFFECT``, in effect then by today's knowledge, or
        ``effective.PUBLISHED``, what it said then)."""
        if request is None:
            request = ds.FindCounterpartRequest(**fields)
        elif fields:
            raise TypeError("pass either a FindCounterpartRequest or its fields, not both")
        if as_of is not None:
            request.as_of.CopyFrom(as_of_message(as_of, reading))
        response = self._call("FindCounterpart", request, ds.FindCounterpartResponse)
        return self._checked(response, request)

    def get(
        self, name: str, *, as_of: datetime | None = None, reading: str = effective.IN_EFFECT
    ) -> tuple[Message, Verification | None]:
        """Get one record by name; the collection in the name picks the method. With
        ``as_of``: the version that answered then (see find_counterpart)."""
        try:
            parsed = names.parse_record_name(name)
        except CounterpartError as e:
            raise InvalidName(e.message) from e
        method, request_type = _GET_METHODS[parsed.collection]
        response_type = cast(type[Message], getattr(ds, method + "Response"))
        asked = as_of_message(as_of, reading) if as_of is not None else None
        try:
            response = self._call(method, request_type(name=name, as_of=asked), response_type)
        except ServerError as e:
            # a record absent at a past instant may exist now: only a current denial is proven
            if self.verify and asked is None and e.not_found and e.reason == "RECORD_NOT_FOUND":
                self._check_not_found(name, parsed.member, e)
            raise
        return self._checked(response, asked=asked)

    def _check_not_found(self, name: str, member: str, error: ServerError) -> None:
        """A node that says a record does not exist must prove it when the member's
        checkpoint signs state roots: with the neighbouring leaves of the name's state tree
        (an AbsenceProof in the status details). Without one, the member's checkpoint is
        fetched to see whether it could have. Raises VerificationFailed when the denial is
        not proven; returns (the caller re-raises the NOT_FOUND) otherwise."""
        assert self.federation is not None
        proofs = []
        for detail in error.details:
            if detail.Is(ds.AbsenceProof.DESCRIPTOR):
                proof = ds.AbsenceProof()
                detail.Unpack(proof)
                proofs.append(proof)
        if proofs:
            verify_not_found(self.federation, name, proofs[0], self.clock())
            error.message += f" (absence proven against {member}'s signed checkpoint)"
            return
        try:
            answer = self._call("GetMember", ds.GetMemberRequest(name=f"members/{member}"), ds.GetMemberResponse)
        except ServerError:
            return  # the node holds nothing of the member: nothing it could prove
        checkpoint = verify_member_checkpoint(self.federation, answer, member, self.clock())
        if checkpoint is not None and checkpoint.state is not None:
            raise VerificationFailed(f"the node denied that {name} exists without proof")

    def list(
        self, kind: str, parent: str = "members/-", filter: str = "", page_size: int = 0,
        page_token: str = "", *, as_of: datetime | None = None, reading: str = effective.IN_EFFECT,
    ) -> tuple[Message, Verification | None]:
        """List records of one kind ("authority" or "authorities", ...) under a parent."""
        if kind not in _LIST_METHODS:
            raise InvalidName(
                f"unknown kind {kind!r}: expected one of {', '.join(sorted(names.COLLECTIONS))}"
            )
        method, request_type = _LIST_METHODS[kind]
        response_type = cast(type[Message], getattr(ds, method + "Response"))
        asked = as_of_message(as_of, reading) if as_of is not None else None
        request = request_type(
            parent=parent, filter=filter, page_size=page_size, page_token=page_token, as_of=asked
        )
        return self._checked(self._call(method, request, response_type), asked=asked)

    def search(
        self, query: str, member: str = "", page_size: int = 0, page_token: str = "", *,
        as_of: datetime | None = None, reading: str = effective.IN_EFFECT,
    ) -> tuple[ds.SearchAuthoritiesResponse, Verification | None]:
        """Search authorities by name or place, in any script."""
        asked = as_of_message(as_of, reading) if as_of is not None else None
        request = ds.SearchAuthoritiesRequest(
            query=query, member=member, page_size=page_size, page_token=page_token, as_of=asked
        )
        return self._checked(
            self._call("SearchAuthorities", request, ds.SearchAuthoritiesResponse), asked=asked
        )

    def history(
        self, name: str, page_size: int = 0, page_token: str = ""
    ) -> tuple[ds.ListRecordRevisionsResponse, Verification | None]:
        """Every version of a record, newest first, deletions included, each verified."""
        try:
            names.parse_record_name(name)
        except CounterpartError as e:
            raise InvalidName(e.message) from e
        request = ds.ListRecordRevisionsRequest(name=name, page_size=page_size, page_token=page_token)
        return self._checked(self._call("ListRecordRevisions", request, ds.ListRecordRevisionsResponse))

    def members(
        self, page_size: int = 0, page_token: str = ""
    ) -> tuple[ds.ListMembersResponse, Verification | None]:
        """List the federation's members; their checkpoints are verified, counts are not."""
        request = ds.ListMembersRequest(page_size=page_size, page_token=page_token)
        return self._checked(self._call("ListMembers", request, ds.ListMembersResponse))

    def member(self, code: str) -> tuple[ds.GetMemberResponse, Verification | None]:
        """Get one member by code ("GE") or name ("members/GE")."""
        name = code if code.startswith("members/") else names.member_name(code)
        request = ds.GetMemberRequest(name=name)
        return self._checked(self._call("GetMember", request, ds.GetMemberResponse))
