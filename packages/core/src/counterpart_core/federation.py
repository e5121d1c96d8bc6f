"""The federation document: the trust root every node starts from (DESIGN §4).

A node accepts version 1 on first configuration, and afterwards only version N+1,
signed by a threshold of version N's root keys and a threshold of its own. Member
keys come from the document, each with a validity window.
"""

from __future__ import annotations

import ipaddress
import os
import re
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import cached_property
from pathlib import Path

from google.protobuf import json_format

from counterpart.v1 import federation_pb2, log_pb2
from counterpart_core import signing, tls
from counterpart_core.errors import (
    FederationError,
    InvalidArgumentError,
    SignatureError,
    quote,
)
from counterpart_core.names import check_member_code
from counterpart_core.timeutil import from_timestamp, to_timestamp
from counterpart_core.vocab import Vocabulary, default_vocabularies

DEFAULT_VALIDITY = timedelta(days=365)
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
    endpoints, peer_endpoints = check_endpoints(endpoints), check_endpoints(peer_endpoints)
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


# --- the secretariat's edits (each on a draft from open_for_edit) -------------------------

_HOST_LABEL = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)")


def check_endpoint(address: str) -> str:
    """``host:port``: a host name, an IPv4 address or a bracketed IPv6 address, and a port
    from 1 to 65535. Returned unchanged when it is one."""
    host, sep, port = address.rpartition(":")
    ok = bool(sep) and port.isascii() and port.isdigit() and 1 <= int(port) <= 65535 and len(port) <= 5
    if ok and host.startswith("[") and host.endswith("]"):
        try:
            ok = isinstance(ipaddress.ip_address(host[1:-1]), ipaddress.IPv6Address)
        except ValueError:
            ok = False
    elif ok:
        labels = host.split(".")
        ok = 0 < len(host) <= 253 and all(_HOST_LABEL.fullmatch(label) for label in labels)
    if not ok:
        raise InvalidArgumentError(
            f"endpoint {quote(address)} is not host:port (a host name, an IPv4 address or a bracketed IPv6 address, "
            "and a port from 1 to 65535)",
            reason="INVALID_ENDPOINT",
        )
    return address


def check_endpoints(addresses: Iterable[str]) -> list[str]:
    out = [check_endpoint(a) for a in addresses]
    twice = sorted({a for a in out if out.count(a) > 1})
    if twice:
        raise InvalidArgumentError(f"endpoint {twice[0]} is given twice", reason="DUPLICATE_ENDPOINT")
    return out


def _find_key(keys: Sequence[federation_pb2.PublicKey], key_id: str, whose: str) -> federation_pb2.PublicKey:
    """The key with this id, or with a unique id prefix of at least 8 hex digits (with or
    without ``ed25519:``)."""
    wanted = key_id.strip().lower().removeprefix("ed25519:")
    exact = [k for k in keys if k.key_id.lower() == key_id.strip().lower()]
    matches = exact or [k for k in keys if len(wanted) >= 8 and k.key_id.lower().removeprefix("ed25519:").startswith(wanted)]
    if len(matches) != 1:
        listed = ", ".join(k.key_id for k in keys) or "none"
        how = "no" if not matches else f"{len(matches)}"
        raise InvalidArgumentError(
            f"{how} key of {whose} matches {quote(key_id)} (its keys: {listed})", reason="KEY_NOT_FOUND"
        )
    return matches[0]


def _ends(key: federation_pb2.PublicKey) -> datetime | None:
    return from_timestamp(key.not_after_time) if key.HasField("not_after_time") else None


def _valid_after(key: federation_pb2.PublicKey, at: datetime) -> bool:
    """Does the key accept signatures at some instant later than ``at``?"""
    end = _ends(key)
    return end is None or end > at


def suspended(member: federation_pb2.Member, at: datetime) -> bool:
    """A member none of whose keys accepts a signature after ``at``: its new entries,
    checkpoints and access tokens are refused everywhere (see ``suspend_member``)."""
    return not any(_valid_after(k, at) for k in member.keys)


def add_member_key(
    doc: federation_pb2.FederationDocument, code: str, raw: bytes, not_before: datetime | None = None
) -> federation_pb2.PublicKey:
    """Publish a member's next signing key (before the member uses it)."""
    member = _member(doc, code)
    key = public_key(raw, not_before=not_before)
    for m in doc.members:
        if any(bytes(k.ed25519_public_key) == raw for k in m.keys):
            raise InvalidArgumentError(f"key {key.key_id} already belongs to member {m.code}", reason="DUPLICATE_KEY")
    member.keys.append(key)
    return key


def _end_key(member: federation_pb2.Member, key: federation_pb2.PublicKey, at: datetime, now: datetime) -> None:
    others = [k for k in member.keys if k.key_id != key.key_id and _valid_after(k, max(at, now))]
    if not others:
        raise InvalidArgumentError(
            f"{key.key_id} is {member.code}'s last valid key: publish its successor first (federation add-key), "
            f"or suspend or remove the member",
            reason="LAST_KEY",
        )
    key.not_after_time.CopyFrom(to_timestamp(at))


def retire_member_key(
    doc: federation_pb2.FederationDocument, code: str, key_id: str, not_after: datetime, now: datetime
) -> federation_pb2.PublicKey:
    """End a key's validity from ``not_after`` on (now or later): the normal end of a
    rotation. What it signed until then stays valid."""
    member = _member(doc, code)
    key = _find_key(member.keys, key_id, code)
    if not_after < now:
        raise InvalidArgumentError(
            f"{not_after.isoformat()} is in the past: retiring ends a key from now on; to refuse what it "
            "signed since an earlier instant, use withdraw-key --as-of",
            reason="INSTANT_IN_PAST",
        )
    end = _ends(key)
    if end is not None and end <= not_after:
        raise InvalidArgumentError(
            f"{key.key_id} already ends at {end.isoformat()}; a key's validity is never extended",
            reason="KEY_ALREADY_ENDED",
        )
    _end_key(member, key, not_after, now)
    return key


def withdraw_member_key(
    doc: federation_pb2.FederationDocument, code: str, key_id: str, as_of: datetime, now: datetime
) -> federation_pb2.PublicKey:
    """Withdraw a compromised key as of a past instant: entries, checkpoints and access
    tokens it signed after ``as_of`` are refused everywhere; what it signed before still
    verifies."""
    member = _member(doc, code)
    key = _find_key(member.keys, key_id, code)
    if as_of > now:
        raise InvalidArgumentError(
            f"--as-of {as_of.isoformat()} is in the future: a withdrawal takes effect from a past instant "
            "(when the key may have been stolen); to end a key later, use retire-key --not-after",
            reason="INSTANT_IN_FUTURE",
        )
    end = _ends(key)
    if end is not None and end <= as_of:
        raise InvalidArgumentError(
            f"{key.key_id} already ends at {end.isoformat()}, before {as_of.isoformat()}", reason="KEY_ALREADY_ENDED",
        )
    _end_key(member, key, as_of, now)
    return key


def set_member_endpoints(
    doc: federation_pb2.FederationDocument, code: str,
    endpoints: Sequence[str] | None, peer_endpoints: Sequence[str] | None,
) -> None:
    """Replace a member's public endpoints and/or its peer endpoints (None: kept)."""
    member = _member(doc, code)
    if endpoints is not None:
        checked = check_endpoints(endpoints)
        del member.endpoints[:]
        member.endpoints.extend(checked)
    if peer_endpoints is not None:
        checked = check_endpoints(peer_endpoints)
        del member.peer_endpoints[:]
        member.peer_endpoints.extend(checked)


def suspend_member(doc: federation_pb2.FederationDocument, code: str, now: datetime) -> list[str]:
    """Suspend a member: every key of it still valid gets ``not_after`` = now, so its new
    entries, checkpoints and access tokens are refused everywhere while what it signed so
    far still verifies; its endpoints and node certificates are kept. Return the key ids
    ended. (The document has no field for a suspension: the keys' validity carries it.)"""
    member = _member(doc, code)
    ended = [k for k in member.keys if _valid_after(k, now)]
    if not ended:
        raise InvalidArgumentError(f"{code} is already suspended: none of its keys is valid after now", reason="ALREADY_SUSPENDED")
    for k in ended:
        k.not_after_time.CopyFrom(to_timestamp(now))
    return [k.key_id for k in ended]


def resume_member(doc: federation_pb2.FederationDocument, code: str, now: datetime) -> list[str]:
    """Undo ``suspend_member``: the keys its suspension ended (those ending at the latest
    instant any key of the member ends) are valid again without an end; keys retired or
    withdrawn before stay ended. Return the key ids restored."""
    member = _member(doc, code)
    if not suspended(member, now):
        raise InvalidArgumentError(f"{code} is not suspended: it has a key valid after now", reason="NOT_SUSPENDED")
    ends = [e for e in (_ends(k) for k in member.keys) if e is not None]
    if not ends:
        raise InvalidArgumentError(f"{code} has no key to restore: publish one with add-key", reason="NO_MEMBER_KEYS")
    last = max(ends)
    restored = [k for k in member.keys if _ends(k) == last]
    for k in restored:
        k.ClearField("not_after_time")
    return [k.key_id for k in restored]


def remove_member(doc: federation_pb2.FederationDocument, code: str) -> federation_pb2.Member:
    """Take a member out: its keys, endpoints and certificates go with it, so nothing it
    signs is accepted any more, and no node calls or admits its node."""
    member = _member(doc, code)
    removed = federation_pb2.Member()
    removed.CopyFrom(member)
    kept = [m for m in doc.members if m.code != code]
    del doc.members[:]
    doc.members.extend(kept)
    return removed


def change_root_keys(
    doc: federation_pb2.FederationDocument, add: Iterable[bytes] = (), remove: Iterable[str] = (),
    threshold: int | None = None,
) -> None:
    """Add and remove root keys and/or set the threshold. The version this makes must still
    be signed by a threshold of the previous version's root keys, and by its own."""
    for key_id in remove:
        key = _find_key(doc.root_keys, key_id, "the root")
        kept = [k for k in doc.root_keys if k.key_id != key.key_id]
        del doc.root_keys[:]
        doc.root_keys.extend(kept)
    for raw in add:
        key = public_key(raw)
        if any(k.key_id == key.key_id for k in doc.root_keys):
            raise InvalidArgumentError(f"{key.key_id} is already a root key", reason="DUPLICATE_KEY")
        doc.root_keys.append(key)
    if not doc.root_keys:
        raise InvalidArgumentError("at least one root key must remain", reason="NO_ROOT_KEYS")
    wanted = doc.root_threshold if threshold is None else threshold
    if not 1 <= wanted <= len(doc.root_keys):
        given = "" if threshold is not None else " (the current one; give --threshold)"
        raise InvalidArgumentError(
            f"threshold {wanted}{given} must be between 1 and the number of root keys ({len(doc.root_keys)})",
            reason="INVALID_THRESHOLD",
        )
    doc.root_threshold = wanted


# --- what an edit changed ----------------------------------------------------------------


def when(ts: datetime) -> str:
    """An instant as people read it in the diff: ISO 8601, UTC, ``Z``."""
    return ts.isoformat().replace("+00:00", "Z")


def key_window(key: federation_pb2.PublicKey) -> str:
    start = when(from_timestamp(key.not_before_time)) if key.HasField("not_before_time") else None
    end = _ends(key)
    if start and end:
        return f"valid from {start} until {when(end)}"
    if start:
        return f"valid from {start}, no end"
    if end:
        return f"valid until {when(end)}"
    return "valid, no start or end"


def _span(td: timedelta) -> str:
    if td % timedelta(days=1) == timedelta(0):
        return f"{td.days} days"
    if td % timedelta(hours=1) == timedelta(0):
        return f"{int(td.total_seconds()) // 3600} hours"
    return f"{int(td.total_seconds())} seconds"


def _list(values: Iterable[str]) -> str:
    return ", ".join(values) or "(none)"


def _member_lines(old: federation_pb2.Member | None, new: federation_pb2.Member) -> list[str]:
    code = new.code
    out: list[str] = []
    if old is not None and old.display_name != new.display_name:
        out.append(f"{code}: name {old.display_name!r} -> {new.display_name!r}")
    old_keys = {k.key_id: k for k in old.keys} if old is not None else {}
    new_keys = {k.key_id: k for k in new.keys}
    for kid, k in new_keys.items():
        if kid not in old_keys:
            out.append(f"{code}: + key {kid} ({key_window(k)})")
        elif key_window(old_keys[kid]) != key_window(k):
            out.append(f"{code}: ~ key {kid}: {key_window(old_keys[kid])} -> {key_window(k)}")
    out += [f"{code}: - key {kid} (everything it signed stops verifying)" for kid in old_keys if kid not in new_keys]
    for field, label in (("endpoints", "endpoints"), ("peer_endpoints", "peer endpoints")):
        before = list(getattr(old, field)) if old is not None else []
        after = list(getattr(new, field))
        if before != after:
            out.append(f"{code}: {label} {_list(before)} -> {_list(after)}")
    old_certs = [tls.fingerprint(bytes(c)) for c in old.tls_certificates] if old is not None else []
    new_certs = [tls.fingerprint(bytes(c)) for c in new.tls_certificates]
    out += [f"{code}: + TLS certificate sha256:{f}" for f in new_certs if f not in old_certs]
    out += [f"{code}: - TLS certificate sha256:{f}" for f in old_certs if f not in new_certs]
    if old is not None and old.keys and new.keys and (_last_end(old) is None) != (_last_end(new) is None):
        end = _last_end(new)
        out.append(f"{code}: suspended (no key valid after {when(end)})" if end is not None else f"{code}: resumed")
    return out


def _last_end(member: federation_pb2.Member) -> datetime | None:
    """When the member's last key ends; None while one of its keys has no end."""
    ends = [_ends(k) for k in member.keys]
    return max(e for e in ends if e is not None) if ends and None not in ends else None


def content_changed(old: federation_pb2.FederationDocument, new: federation_pb2.FederationDocument) -> bool:
    """Does ``new`` differ from ``old`` in anything but its version and dates?"""

    def content(doc: federation_pb2.FederationDocument) -> bytes:
        c = federation_pb2.FederationDocument()
        c.CopyFrom(doc)
        for f in ("version", "issue_time", "expire_time"):
            c.ClearField(f)
        return c.SerializeToString(deterministic=True)

    return content(old) != content(new)


def describe_changes(old: federation_pb2.FederationDocument, new: federation_pb2.FederationDocument) -> list[str]:
    """What a new version (or draft) changes, one line per fact, for people to check
    before they sign: version, expiry, root keys, threshold, then member by member (code
    order) added or removed, keys with their validity, endpoints, peer endpoints and node
    certificates by SHA-256 fingerprint. ``+`` added, ``-`` removed, ``~`` changed."""
    out: list[str] = []
    if old.version != new.version:
        out.append(f"version {old.version} -> {new.version}")
    if old.expire_time != new.expire_time:
        length = from_timestamp(new.expire_time) - from_timestamp(new.issue_time)
        out.append(
            f"expires {when(from_timestamp(old.expire_time))} -> {when(from_timestamp(new.expire_time))} "
            f"({_span(length)} after its issue)"
        )
    old_roots = {k.key_id for k in old.root_keys}
    new_roots = {k.key_id for k in new.root_keys}
    out += [f"root keys: + {kid}" for kid in [k.key_id for k in new.root_keys] if kid not in old_roots]
    out += [f"root keys: - {kid}" for kid in [k.key_id for k in old.root_keys] if kid not in new_roots]
    if old.root_threshold != new.root_threshold:
        out.append(f"threshold {old.root_threshold} -> {new.root_threshold} (of {len(new.root_keys)} root keys)")
    old_members = {m.code: m for m in old.members}
    new_members = {m.code: m for m in new.members}
    for code in sorted(old_members.keys() | new_members.keys()):
        if code not in new_members:
            out.append(f"- member {code} ({old_members[code].display_name}): its keys, endpoints and certificates go")
        elif code not in old_members:
            out.append(f"+ member {code} ({new_members[code].display_name})")
            out += _member_lines(None, new_members[code])
        else:
            out += _member_lines(old_members[code], new_members[code])
    if old.vocabularies != new.vocabularies:
        out.append("vocabularies changed")
    if old.limits != new.limits:
        out.append("limits changed")
    if old.federation_id != new.federation_id:
        out.append(f"federation id {old.federation_id!r} -> {new.federation_id!r}")
    return out


def open_for_edit(
    envelope: bytes, now: datetime, valid_for: timedelta | None = None
) -> tuple[federation_pb2.FederationDocument, bool]:
    """The document to change, and whether it became the next version.

    A fully signed document is in force somewhere, so a change to it is the draft of its
    next version; a draft (under-signed) is changed in place. Either way the old
    signatures no longer cover the payload, and the caller writes it unsigned. The new
    version is issued now and valid for ``valid_for``, by default as long as the document
    was (its expiry minus its issue time).
    """
    doc, good, threshold = signature_status(envelope)
    bumped = good >= threshold
    if bumped:
        doc.version += 1
    stamp(doc, now, valid_for if valid_for is not None else validity(doc))
    return doc, bumped


def validity(doc: federation_pb2.FederationDocument) -> timedelta:
    """How long the document is valid from its issue: what an edit keeps by default."""
    length = from_timestamp(doc.expire_time) - from_timestamp(doc.issue_time)
    return length if length > timedelta(0) else DEFAULT_VALIDITY


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
    """Write the envelope as DSSE JSON, atomically: a reader (or a crash) sees the old file
    or the new one, never half of one."""
    env = signing.parse_envelope(envelope)
    text = json_format.MessageToJson(env, indent=2) + "\n"
    fd, tmp = tempfile.mkstemp(dir=path.parent if str(path.parent) else ".", prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        if path.exists():
            os.chmod(tmp, path.stat().st_mode & 0o777)
        else:
            os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


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
