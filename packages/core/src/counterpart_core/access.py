"""Who is calling, and what they may see (DESIGN §8). Pure: no I/O.

Three kinds of caller reach a node: anyone (anonymous), a user signed in with an access
token issued by their member's node, and another member's node, known by the TLS
certificate the federation document lists for it. ``MEMBERS`` records are for the last
two only; to anyone else they do not exist.
"""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Literal

import jwt
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from counterpart_core.errors import AuthenticationError, InvalidArgumentError
from counterpart_core.federation import Federation, key_valid_at
from counterpart_core.signing import SigningKey

CallerKind = Literal["anonymous", "user", "node"]

ROLES = ("prosecutor", "system", "administrator")
"""Roles an access token can carry: a person at a terminal, another system (case
management, a secure-transmission gateway), a national administrator."""


@dataclass(frozen=True)
class Caller:
    """The authenticated identity of one call."""

    kind: CallerKind
    member: str = ""  # the member the user or node belongs to
    subject: str = ""  # the token's subject (users only)
    role: str = ""  # the token's role (users only)
    token_id: str = ""  # the token's id (users only), for revocation and audit

    @property
    def sees_members_only(self) -> bool:
        """May this caller see ``MEMBERS`` records? Signed-in users of a member and member
        nodes may; nobody else."""
        return self.kind in ("user", "node")

    @property
    def is_member_node(self) -> bool:
        """Full members-only log entries are replicated to member nodes only."""
        return self.kind == "node"

    def describe(self) -> str:
        """One line for answers and the audit log: who the node took the caller for."""
        if self.kind == "node":
            return f"node of {self.member}"
        if self.kind == "user":
            return f"{self.subject} ({self.role}, {self.member})"
        return "anonymous"


ANONYMOUS = Caller("anonymous")


# --- access tokens ----------------------------------------------------------------------
#
# A token is a JWT (RFC 7519) signed with EdDSA (RFC 8037) by one of the member's keys in
# the federation document, so every node of the federation can verify it with nothing but
# the document: a prosecutor in Baku may ask the Tbilisi node directly. PyJWT does the
# encoding and the signature; this module decides which key may sign for whom.

TOKEN_MAX_BYTES = 4096  # checked before anything is parsed
TOKEN_MAX_LIFETIME = timedelta(days=90)
CLOCK_SKEW = timedelta(seconds=60)
_SUBJECT_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@+\-]{0,127}$")


def shorten(text: str, limit: int = 40) -> str:
    return text if len(text) <= limit else text[:limit] + "…"


def audience(federation_id: str) -> str:
    return f"counterpart:{federation_id}"


def issuer(federation_id: str, member: str) -> str:
    return f"counterpart:{federation_id}:{member}"


def check_subject(subject: str) -> None:
    if not _SUBJECT_RE.match(subject):
        raise InvalidArgumentError(
            f"subject {shorten(subject)!r} must be 1-128 letters, digits or . _ @ + - "
            "(a login or a system's name; no spaces)",
            reason="INVALID_SUBJECT",
        )


def check_role(role: str) -> None:
    if role not in ROLES:
        raise InvalidArgumentError(f"role {shorten(role)!r} is not one of {', '.join(ROLES)}", reason="INVALID_ROLE")


@dataclass(frozen=True)
class IssuedToken:
    token: str
    token_id: str
    subject: str
    role: str
    member: str
    issue_time: datetime
    expire_time: datetime


def issue_token(
    key: SigningKey, federation: Federation, member: str, subject: str, role: str, now: datetime,
    valid_for: timedelta,
) -> IssuedToken:
    """Sign an access token for a user of ``member`` with the member's key."""
    check_subject(subject)
    check_role(role)
    if not timedelta(minutes=1) <= valid_for <= TOKEN_MAX_LIFETIME:
        raise InvalidArgumentError(
            f"a token is valid for 1 minute to {TOKEN_MAX_LIFETIME.days} days", reason="INVALID_EXPIRY"
        )
    token_id = secrets.token_hex(16)
    issued = now.replace(microsecond=0)
    expires = issued + valid_for
    claims = {
        "iss": issuer(federation.document.federation_id, member),
        "aud": audience(federation.document.federation_id),
        "sub": subject,
        "member": member,
        "role": role,
        "jti": token_id,
        "iat": int(issued.timestamp()),
        "nbf": int(issued.timestamp()),
        "exp": int(expires.timestamp()),
    }
    token = jwt.encode(claims, key.private, algorithm="EdDSA", headers={"kid": key.key_id})
    return IssuedToken(token, token_id, subject, role, member, issued, expires)


def verify_token(token: str, federation: Federation, now: datetime) -> Caller:
    """The signed-in user a token names, after checking it against the federation document:
    signed by a key that the document lists for the member the token names, valid when the
    token was issued, for this federation, not expired. Revocation is the caller's to check
    (only the issuing node knows what it revoked)."""
    if len(token) > TOKEN_MAX_BYTES:
        raise AuthenticationError(f"the access token is over {TOKEN_MAX_BYTES} bytes", reason="TOKEN_MALFORMED")
    try:
        header = jwt.get_unverified_header(token)
        unverified = jwt.decode(token, options={"verify_signature": False})
    except jwt.PyJWTError as e:
        raise AuthenticationError("the access token is not a JWT", reason="TOKEN_MALFORMED") from e
    fed_id = federation.document.federation_id
    if unverified.get("aud") != audience(fed_id):
        raise AuthenticationError(
            f"the access token is for another federation, not {fed_id}", reason="TOKEN_WRONG_FEDERATION"
        )
    member = unverified.get("member")
    m = federation.member(member) if isinstance(member, str) else None
    if m is None:
        raise AuthenticationError(
            f"the access token was issued for {shorten(str(member))!r}, which is not a member of {fed_id}",
            reason="TOKEN_UNKNOWN_MEMBER",
        )
    assert isinstance(member, str)
    kid = header.get("kid")
    key = next((k for k in m.keys if k.key_id == kid), None)
    if key is None:
        raise AuthenticationError(
            f"the access token is signed by a key that {member}'s entry does not list", reason="TOKEN_UNKNOWN_KEY"
        )
    try:
        claims = jwt.decode(
            token, Ed25519PublicKey.from_public_bytes(bytes(key.ed25519_public_key)), algorithms=["EdDSA"],
            audience=audience(fed_id), issuer=issuer(fed_id, member),
            options={"require": ["exp", "iat", "sub", "jti", "aud", "iss"], "verify_exp": False, "verify_nbf": False,
                     "verify_iat": False},
        )
    except jwt.InvalidSignatureError as e:
        raise AuthenticationError("the access token's signature does not verify", reason="TOKEN_INVALID") from e
    except jwt.PyJWTError as e:
        raise AuthenticationError(f"the access token is not acceptable: {e}", reason="TOKEN_INVALID") from e
    try:
        issued = datetime.fromtimestamp(int(claims["iat"]), UTC)
        expires = datetime.fromtimestamp(int(claims["exp"]), UTC)
        subject, role, token_id = str(claims["sub"]), str(claims.get("role", "")), str(claims["jti"])
    except (TypeError, ValueError, OverflowError, OSError) as e:
        raise AuthenticationError("the access token's claims are malformed", reason="TOKEN_INVALID") from e
    if now > expires + CLOCK_SKEW:
        raise AuthenticationError(
            f"the access token expired at {expires.isoformat()}; ask your node's administrator for a new one",
            reason="TOKEN_EXPIRED",
        )
    if issued > now + CLOCK_SKEW or expires - issued > TOKEN_MAX_LIFETIME:
        raise AuthenticationError("the access token's validity period is not acceptable", reason="TOKEN_INVALID")
    if not key_valid_at(key, issued):
        raise AuthenticationError(
            f"the access token was signed by {key.key_id} outside that key's validity", reason="TOKEN_KEY_NOT_VALID"
        )
    if role not in ROLES:
        raise AuthenticationError("the access token carries no known role", reason="TOKEN_INVALID")
    return Caller("user", member=member, subject=subject, role=role, token_id=token_id)
