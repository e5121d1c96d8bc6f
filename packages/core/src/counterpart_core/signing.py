"""DSSE envelopes signed with Ed25519, key identifiers and encrypted key files.

An envelope's signatures cover PAE(payload_type, payload) (DSSE v1 protocol), never a
re-serialized message: the payload bytes are produced once by the signer and every
verifier checks those exact bytes.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from counterpart.v1 import log_pb2
from counterpart_core.errors import KeyFileError, SignatureError

ENTRY_TYPE = "application/vnd.counterpart.entry.v1+binpb"
CHECKPOINT_TYPE = "application/vnd.counterpart.checkpoint.v1+binpb"
FEDERATION_TYPE = "application/vnd.counterpart.federation.v1+binpb"

PrivateKey = Ed25519PrivateKey | ec.EllipticCurvePrivateKey
"""The private keys a node keeps: Ed25519 for signing, ECDSA P-256 for TLS."""


def pae(payload_type: str, payload: bytes) -> bytes:
    """DSSE pre-authentication encoding: "DSSEv1" SP len(type) SP type SP len(body) SP body."""
    t = payload_type.encode()
    return b"DSSEv1 %d %s %d %s" % (len(t), t, len(payload), payload)


def key_id(public_key: bytes) -> str:
    """Stable identifier of a raw 32-byte Ed25519 public key."""
    return "ed25519:" + hashlib.sha256(public_key).hexdigest()[:32]


@dataclass(frozen=True)
class SigningKey:
    """An Ed25519 private key with its identifier."""

    private: Ed25519PrivateKey

    @classmethod
    def generate(cls) -> SigningKey:
        return cls(Ed25519PrivateKey.generate())

    @property
    def public_bytes(self) -> bytes:
        return self.private.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )

    @property
    def key_id(self) -> str:
        return key_id(self.public_bytes)

    def sign(self, message: bytes) -> bytes:
        return self.private.sign(message)


def sign_envelope(payload: bytes, payload_type: str, keys: Iterable[SigningKey]) -> bytes:
    """Sign payload with every key; return the serialized Envelope."""
    env = log_pb2.Envelope(payload=payload, payload_type=payload_type)
    message = pae(payload_type, payload)
    for k in keys:
        env.signatures.add(key_id=k.key_id, sig=k.sign(message))
    return env.SerializeToString(deterministic=True)


def add_signature(envelope_bytes: bytes, key: SigningKey) -> bytes:
    """Add one more signature to a serialized envelope (threshold signing)."""
    env = parse_envelope(envelope_bytes)
    if any(s.key_id == key.key_id for s in env.signatures):
        raise SignatureError(f"the envelope is already signed by {key.key_id}", reason="ALREADY_SIGNED")
    env.signatures.add(key_id=key.key_id, sig=key.sign(pae(env.payload_type, env.payload)))
    return env.SerializeToString(deterministic=True)


def parse_envelope(data: bytes, expected_type: str | None = None) -> log_pb2.Envelope:
    """Parse envelope bytes, checking the payload type when one is expected."""
    env = log_pb2.Envelope()
    try:
        env.ParseFromString(data)
    except Exception as e:  # protobuf raises DecodeError, a plain Exception subclass
        raise SignatureError("not a valid envelope", reason="MALFORMED_ENVELOPE") from e
    if expected_type is not None and env.payload_type != expected_type:
        raise SignatureError(
            f"payload type is {env.payload_type!r}, expected {expected_type!r}",
            reason="WRONG_PAYLOAD_TYPE",
        )
    return env


def verify_signatures(
    env: log_pb2.Envelope,
    key_lookup: Callable[[str], bytes | None],
) -> set[str]:
    """Return the ids of the known keys whose signatures verify.

    ``key_lookup`` maps a key id to its raw key, or None for a key it does not know. As
    DSSE prescribes, signatures that do not verify, or that are by unknown keys, are not
    counted, and do not cancel the valid ones: otherwise anyone relaying an envelope could
    make it unusable by adding a bogus signature. A key counts once however often it signs.
    """
    good, _ = _check_signatures(env, key_lookup)
    return good


def _check_signatures(
    env: log_pb2.Envelope, key_lookup: Callable[[str], bytes | None]
) -> tuple[set[str], list[str]]:
    """(ids of known keys with a valid signature, ids of known keys with an invalid one)."""
    message = pae(env.payload_type, env.payload)
    good: set[str] = set()
    bad: list[str] = []
    for s in env.signatures:
        if s.key_id in good:
            continue  # a key counts once: its second signature costs no verification
        raw = key_lookup(s.key_id)
        if raw is None:
            continue  # an unknown key id costs no verification
        try:
            Ed25519PublicKey.from_public_bytes(raw).verify(s.sig, message)
        except (InvalidSignature, ValueError):
            bad.append(s.key_id)
            continue
        good.add(s.key_id)
    return good, bad


MAX_SIGNATURES = 4
"""Signatures a member's envelope (entry or checkpoint) may carry. The origin signs with one
key (two while it rotates); anything beyond a few is padding by whoever relayed it, and each
would cost an Ed25519 verification (about 150 µs): 400 bogus signatures on each of 300 entries
are 18 s of CPU. DSSE lets a relay add signatures that do not cancel the valid ones; it does
not oblige a verifier to try an unbounded number of them."""


def verify_one(
    env: log_pb2.Envelope, key_lookup: Callable[[str], bytes | None], max_signatures: int = MAX_SIGNATURES
) -> str:
    """Require at least one valid signature by a known key; return its key id.

    An envelope with more than ``max_signatures`` signatures is refused before any is
    verified (``TOO_MANY_SIGNATURES``); signatures by key ids ``key_lookup`` does not know
    cost no verification, and each known key is verified once.
    """
    if len(env.signatures) > max_signatures:
        raise SignatureError(
            f"the envelope carries {len(env.signatures)} signatures; at most {max_signatures} are accepted",
            reason="TOO_MANY_SIGNATURES",
        )
    good, bad = _check_signatures(env, key_lookup)
    if good:
        return min(good)
    if bad:
        raise SignatureError(
            f"signature by {bad[0]} does not verify: the payload was altered or the signature forged",
            reason="BAD_SIGNATURE",
        )
    ids = ", ".join(s.key_id for s in env.signatures) or "none"
    raise SignatureError(
        f"no signature by a key valid for this signer (signed by: {ids})", reason="UNKNOWN_KEY"
    )


# --- key files ---------------------------------------------------------------------------


def write_key_file(path: Path, key: SigningKey, passphrase: bytes) -> None:
    """Write the key as passphrase-encrypted PKCS#8 PEM, created with mode 0600."""
    write_private_key(path, key.private, passphrase)


def write_private_key(path: Path, private: PrivateKey, passphrase: bytes) -> None:
    """Write any private key as passphrase-encrypted PKCS#8 PEM, created with mode 0600,
    never over an existing file."""
    if not passphrase:
        raise KeyFileError("a passphrase is required to encrypt the key file", reason="NO_PASSPHRASE")
    pem = private.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(passphrase),
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError as e:
        raise KeyFileError(f"{path} exists; refusing to overwrite a key", reason="KEY_EXISTS") from e
    with os.fdopen(fd, "wb") as f:
        f.write(pem)


def read_private_key(path: Path, passphrase: bytes) -> PrivateKey:
    """Read an encrypted key file; refuse one that others can read."""
    try:
        mode = path.stat().st_mode & 0o777
        data = path.read_bytes()
    except OSError as e:
        raise KeyFileError(f"cannot read key file {path}: {e.strerror}", reason="KEY_UNREADABLE") from e
    if mode & 0o077:
        raise KeyFileError(
            f"key file {path} has mode {mode:o}; it must be 600 (chmod 600 {path})",
            reason="KEY_FILE_MODE",
        )
    try:
        key = serialization.load_pem_private_key(data, password=passphrase or None)
    except (ValueError, TypeError) as e:
        raise KeyFileError(
            f"cannot decrypt key file {path}: wrong passphrase or not a key", reason="KEY_DECRYPT"
        ) from e
    if not isinstance(key, (Ed25519PrivateKey, ec.EllipticCurvePrivateKey)):
        raise KeyFileError(f"{path} holds a key of a type Counterpart does not use", reason="KEY_TYPE")
    return key


def read_key_file(path: Path, passphrase: bytes) -> SigningKey:
    """Read an encrypted Ed25519 signing key file; refuse one that others can read."""
    key = read_private_key(path, passphrase)
    if not isinstance(key, Ed25519PrivateKey):
        raise KeyFileError(f"{path} is not an Ed25519 key", reason="KEY_TYPE")
    return SigningKey(key)


def passphrase_from_env(passphrase_file: Path | None = None) -> bytes:
    """The key passphrase: from a file if given, else $COUNTERPART_KEY_PASSPHRASE."""
    if passphrase_file is not None:
        try:
            return passphrase_file.read_bytes().rstrip(b"\r\n")
        except OSError as e:
            raise KeyFileError(
                f"cannot read passphrase file {passphrase_file}: {e.strerror}",
                reason="PASSPHRASE_UNREADABLE",
            ) from e
    value = os.environ.get("COUNTERPART_KEY_PASSPHRASE", "")
    if not value:
        raise KeyFileError(
            "no key passphrase: set COUNTERPART_KEY_PASSPHRASE or pass --passphrase-file",
            reason="NO_PASSPHRASE",
        )
    return value.encode()


def write_public_key_file(path: Path, public_key: bytes) -> None:
    """Write a raw public key as PEM SubjectPublicKeyInfo (public; any mode)."""
    pem = Ed25519PublicKey.from_public_bytes(public_key).public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    path.write_bytes(pem)


def read_public_key_file(path: Path) -> bytes:
    """Read a PEM public key written by write_public_key_file; return raw 32 bytes."""
    try:
        key = serialization.load_pem_public_key(path.read_bytes())
    except (OSError, ValueError) as e:
        raise KeyFileError(f"cannot read public key {path}: {e}", reason="PUBLIC_KEY_UNREADABLE") from e
    if not isinstance(key, Ed25519PublicKey):
        raise KeyFileError(f"{path} is not an Ed25519 public key", reason="KEY_TYPE")
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
