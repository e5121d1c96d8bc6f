"""The federation document: the trust root every node starts from (DESIGN §4).

A node accepts version 1 on first configuration, and afterwards only version N+1,
signed by a threshold of version N's root keys and a threshold of its own. Member
keys come from the document, each with a validity window.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import cached_property
from pathlib import Path

from google.protobuf import json_format

from counterpart.v1 import federation_pb2, log_pb2
from directory_server.domain import signing, tls
from directory_server.domain.errors import FederationError, InvalidArgumentError, SignatureError
from directory_server.domain.names import check_member_code
from directory_server.domain.timeutil import from_timestamp, to_timestamp
from directory_server.domain.vocab import Vocabulary, default_vocabularies

DEFAULT_LIMITS = federation_pb2.Limits(
    max_entry_bytes=64 * 1024,
    max_message_bytes=4 * 1024 * 1024,
    max_batch_entries=1000,
    max_entries_per_member=1_000_000,
)


def public_key(raw: bytes, not_before: datetime | None = None, not_after: datetime | None = None) -> federation_pb2.PublicKey:
    if len(raw) != 32:
        raise InvalidArgumentError("an Ed25519 public key has 32 bytes", reason="INVALID_KEY")
    k = federation_pb2.PublicKey(key_id=signing.key_id(raw), ed25519_public_key=raw)
    if not_before:
        k.not_before_time.CopyFrom(to_timestamp(not_before))
    if not_after:
        k.not_after_time.CopyFrom(to_timestamp(not_after))
    return k


def key_valid_at(key: federation_pb2.PublicKey, at: datetime) -> bool:
    if key.HasField("not_before_time") and at < from_timestamp(key.not_before_time):
        return False
    return not (key.HasField("not_after_time") and at > from_timestamp(key.not_after_time))


@dataclass(frozen=True)
class Federation:
    """A federation document whose signatures have been checked."""

    document: federation_pb2.FederationDocument
    envelope: bytes

    @property
    def version(self) -> int:
        return int(self.document.version)

    @cached_property
    def vocabulary(self) -> Vocabulary:
        return Vocabulary(self.document.vocabularies)

    @cached_property
    def _members(self) -> dict[str, federation_pb2.Member]:
        return {m.code: m for m in self.document.members}

    @property
    def limits(self) -> federation_pb2.Limits:
        limits = federation_pb2.Limits()
        limits.CopyFrom(DEFAULT_LIMITS)
        limits.MergeFrom(self.document.limits)
        return limits

    def expired(self, now: datetime) -> bool:
        return now > from_timestamp(self.document.expire_time)

    def member(self, code: str) -> federation_pb2.Member | None:
        return self._members.get(code)

    def members(self) -> list[federation_pb2.Member]:
        return sorted(self.document.members, key=lambda m: m.code)

    def verify_member_envelope(self, env: log_pb2.Envelope, member: str) -> federation_pb2.PublicKey:
        """Check that a member's own key signed env; return that key.

        The caller must then check that the time the payload claims lies in the key's
        validity window (``key_valid_at``), once the payload is parsed.
        """
        m = self.member(member)
        if m is None:
            raise SignatureError(f"{member} is not a member of the federation", reason="UNKNOWN_MEMBER")
        keys = {k.key_id: k for k in m.keys}
        used = signing.verify_one(env, lambda kid: bytes(keys[kid].ed25519_public_key) if kid in keys else None)
        return keys[used]


def new_document(
    federation_id: str,
    root_keys: Iterable[bytes],
    threshold: int,
    now: datetime,
    valid_for: timedelta,
) -> federation_pb2.FederationDocument:
    keys = [public_key(k) for k in root_keys]
    if not keys:
        raise InvalidArgumentError("at least one root key is required", reason="NO_ROOT_KEYS")
    if len({k.key_id for k in keys}) != len(keys):
        raise InvalidArgumentError("the same root key is given twice", reason="DUPLICATE_KEY")
    if not 1 <= threshold <= len(keys):
        raise InvalidArgumentError(
            f"threshold {threshold} must be between 1 and the number of root keys ({len(keys)})",
            reason="INVALID_THRESHOLD",
        )
    doc = federation_pb2.FederationDocument(
        federation_id=federation_id, version=1, root_threshold=threshold, vocabularies=default_vocabularies(),
    )
    doc.root_keys.extend(keys)
    doc.limits.CopyFrom(DEFAULT_LIMITS)
    stamp(doc, now, valid_for)
    return doc


def stamp(doc: federation_pb2.FederationDocument, now: datetime, valid_for: timedelta) -> None:
    doc.issue_time.CopyFrom(to_timestamp(now))
    doc.expire_time.CopyFrom(to_timestamp(now + valid_for))


def add_member(
    doc: federation_pb2.FederationDocument,
    code: str,
    display_name: str,
    keys: Iterable[bytes],
    endpoints: Iterable[str],
    tls_certificates: Iterable[bytes] = (),
    peer_endpoints: Iterable[str] = (),
) -> None:
    check_member_code(code)
    if any(m.code == code for m in doc.members):
        raise InvalidArgumentError(f"{code} is already a member", reason="ALREADY_MEMBER")
    new_keys = [public_key(k) for k in keys]
    if not new_keys:
        raise InvalidArgumentError(f"member {code} needs at least one key", reason="NO_MEMBER_KEYS")
    taken = {bytes(k.ed25519_public_key): m.code for m in doc.members for k in m.keys}
    for k in new_keys:
        if bytes(k.ed25519_public_key) in taken:
            raise InvalidArgumentError(
                f"key {k.key_id} already belongs to member {taken[bytes(k.ed25519_public_key)]}",
                reason="DUPLICATE_KEY",
            )
    member = doc.members.add(code=code, display_name=display_name)
    member.endpoints.extend(endpoints)
    member.peer_endpoints.extend(peer_endpoints)
    member.keys.extend(new_keys)
    for certificate in tls_certificates:
        add_tls_certificate(doc, code, certificate)


def _member(doc: federation_pb2.FederationDocument, code: str) -> federation_pb2.Member:
    for m in doc.members:
        if m.code == code:
            return m
    raise InvalidArgumentError(f"{code} is not a member of {doc.federation_id}", reason="NOT_A_MEMBER")


def add_tls_certificate(doc: federation_pb2.FederationDocument, code: str, certificate: bytes) -> str:
    """Admit a node TLS certificate (DER or PEM) for a member; return its fingerprint. While
    a key is rotated the member has two; remove the old one once the node uses the new."""
    certificate = tls.der(certificate)
    for m in doc.members:
        if any(bytes(c) == certificate for c in m.tls_certificates):
            raise InvalidArgumentError(
                f"certificate {tls.fingerprint(certificate)[:16]}… is already listed for {m.code}",
                reason="DUPLICATE_CERTIFICATE",
            )
    _member(doc, code).tls_certificates.append(certificate)
    return tls.fingerprint(certificate)


def remove_tls_certificate(doc: federation_pb2.FederationDocument, code: str, fingerprint: str) -> str:
    """Withdraw a member's node certificate by (a prefix of at least 8 hex digits of) its
    SHA-256 fingerprint; return the full fingerprint."""
    m = _member(doc, code)
    wanted = fingerprint.lower().replace(":", "")
    matches = [bytes(c) for c in m.tls_certificates if len(wanted) >= 8 and tls.fingerprint(bytes(c)).startswith(wanted)]
    if len(matches) != 1:
        listed = ", ".join(tls.fingerprint(bytes(c))[:16] for c in m.tls_certificates) or "none"
        raise InvalidArgumentError(
            f"{len(matches)} of {code}'s certificates match {fingerprint[:64]!r} (listed: {listed})",
            reason="CERTIFICATE_NOT_FOUND",
        )
    kept = [bytes(c) for c in m.tls_certificates if bytes(c) != matches[0]]
    del m.tls_certificates[:]
    m.tls_certificates.extend(kept)
    return tls.fingerprint(matches[0])


def open_for_edit(
    envelope: bytes, now: datetime, valid_for: timedelta
) -> tuple[federation_pb2.FederationDocument, bool]:
    """The document to change, and whether it became the next version.

    A fully signed document is in force somewhere, so a change to it is the draft of its
    next version; a draft (under-signed) is changed in place. Either way the old
    signatures no longer cover the payload, and the caller writes it unsigned.
    """
    doc, good, threshold = signature_status(envelope)
    bumped = good >= threshold
    if bumped:
        doc.version += 1
    stamp(doc, now, valid_for)
    return doc, bumped


def unsigned_envelope(doc: federation_pb2.FederationDocument) -> bytes:
    return signing.sign_envelope(doc.SerializeToString(deterministic=True), signing.FEDERATION_TYPE, [])


def parse_document(envelope: bytes) -> tuple[log_pb2.Envelope, federation_pb2.FederationDocument]:
    env = signing.parse_envelope(envelope, signing.FEDERATION_TYPE)
    doc = federation_pb2.FederationDocument()
    try:
        doc.ParseFromString(env.payload)
    except Exception as e:
        raise FederationError("the federation document payload is not valid", reason="MALFORMED_DOCUMENT") from e
    check_keys(doc)
    return env, doc


def check_keys(doc: federation_pb2.FederationDocument) -> None:
    """Every key is a 32-byte Ed25519 key listed under its own id, and no raw key appears
    twice among the root keys or among all member keys: otherwise one key could count
    twice towards the threshold, or sign for two members."""

    def check(keys: Iterable[federation_pb2.PublicKey], what: str) -> None:
        seen: set[bytes] = set()
        for k in keys:
            raw = bytes(k.ed25519_public_key)
            if len(raw) != 32 or k.key_id != signing.key_id(raw):
                raise FederationError(
                    f"{what} key {k.key_id!r} is malformed or not listed under its own id",
                    reason="MALFORMED_KEY",
                )
            if raw in seen:
                raise FederationError(f"{what} key {k.key_id} is listed twice", reason="DUPLICATE_KEY")
            seen.add(raw)

    check(doc.root_keys, "root")
    check((k for m in doc.members for k in m.keys), "member")
    if not 1 <= doc.root_threshold <= len(doc.root_keys):
        raise FederationError(
            f"root threshold {doc.root_threshold} is not between 1 and the number of root keys ({len(doc.root_keys)})",
            reason="INVALID_THRESHOLD",
        )
    codes = [m.code for m in doc.members]
    if len(codes) != len(set(codes)):
        raise FederationError("a member is listed twice", reason="DUPLICATE_MEMBER")
    certificates: set[bytes] = set()
    for m in doc.members:
        for c in m.tls_certificates:
            try:
                tls.parse_certificate(bytes(c))
            except InvalidArgumentError as e:
                raise FederationError(f"{m.code}'s TLS certificate is malformed", reason="MALFORMED_CERTIFICATE") from e
            if bytes(c) in certificates:  # one certificate must identify one member
                raise FederationError(f"a TLS certificate of {m.code} is listed twice", reason="DUPLICATE_CERTIFICATE")
            certificates.add(bytes(c))


def _signers(env: log_pb2.Envelope, keys: Iterable[federation_pb2.PublicKey]) -> set[str]:
    table = {k.key_id: bytes(k.ed25519_public_key) for k in keys}
    return signing.verify_signatures(env, table.get)


def _require_threshold(env: log_pb2.Envelope, doc: federation_pb2.FederationDocument, whose: str) -> None:
    good = _signers(env, doc.root_keys)
    if len(good) < doc.root_threshold:
        invalid = len(env.signatures) - len(good)
        extra = f" ({invalid} other signature(s) did not verify or are by other keys)" if invalid else ""
        raise FederationError(
            f"version {doc.version} is signed by {len(good)} of {whose} root keys; "
            f"{doc.root_threshold} are required{extra}",
            reason="THRESHOLD_NOT_MET",
        )


def verify_initial(envelope: bytes, now: datetime) -> Federation:
    """Accept a first document (trust on first configuration): self-signed by its threshold."""
    env, doc = parse_document(envelope)
    _require_threshold(env, doc, "its own")
    if now > from_timestamp(doc.expire_time):
        raise FederationError(f"version {doc.version} expired at {from_timestamp(doc.expire_time).isoformat()}", reason="DOCUMENT_EXPIRED")
    return Federation(doc, envelope)


def verify_next(current: Federation, envelope: bytes, now: datetime) -> Federation:
    """Accept exactly the next version, signed by the thresholds of the old and new root keys."""
    env, doc = parse_document(envelope)
    if doc.federation_id != current.document.federation_id:
        raise FederationError(
            f"document is for federation {doc.federation_id!r}, not {current.document.federation_id!r}",
            reason="WRONG_FEDERATION",
        )
    if doc.version != current.version + 1:
        raise FederationError(
            f"version {doc.version} does not follow the current version {current.version} by exactly one",
            reason="VERSION_NOT_NEXT",
        )
    _require_threshold(env, current.document, f"version {current.version}'s")
    _require_threshold(env, doc, "its own")
    if now > from_timestamp(doc.expire_time):
        raise FederationError(f"version {doc.version} has expired", reason="DOCUMENT_EXPIRED")
    return Federation(doc, envelope)


def verify_chain(chain: Sequence[bytes]) -> Federation:
    """Re-verify documents accepted earlier (version 1 first), each step as of its own
    issue time: a stored document that has since expired still authenticates its
    successor; whether the newest one is expired is for the caller to flag."""
    if not chain:
        raise FederationError("no federation document", reason="NO_FEDERATION")

    def issued(envelope: bytes) -> datetime:
        return from_timestamp(parse_document(envelope)[1].issue_time)

    current = verify_initial(chain[0], issued(chain[0]))
    for envelope in chain[1:]:
        current = verify_next(current, envelope, issued(envelope))
    return current


def signature_status(envelope: bytes) -> tuple[federation_pb2.FederationDocument, int, int]:
    """(document, valid signatures by its root keys, threshold), for display."""
    env, doc = parse_document(envelope)
    return doc, len(_signers(env, doc.root_keys)), int(doc.root_threshold)


# --- files: DSSE JSON, the usual on-disk form of an envelope -----------------------------


def write_file(path: Path, envelope: bytes) -> None:
    env = signing.parse_envelope(envelope)
    path.write_text(json_format.MessageToJson(env, indent=2) + "\n", encoding="utf-8")


def read_file(path: Path) -> bytes:
    try:
        data = path.read_bytes()
    except OSError as e:
        raise InvalidArgumentError(f"cannot read {path}: {e.strerror}", reason="PATH_NOT_FOUND") from e
    env = log_pb2.Envelope()
    try:
        json_format.Parse(data.decode("utf-8"), env)
    except (UnicodeDecodeError, json_format.ParseError) as e:
        raise FederationError(f"{path} is not a federation document (DSSE JSON)", reason="MALFORMED_DOCUMENT") from e
    # payload bytes come out of base64 exactly as signed; the envelope wrapper is ours to encode
    return env.SerializeToString(deterministic=True)
