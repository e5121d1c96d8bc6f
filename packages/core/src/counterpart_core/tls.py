"""A node's TLS identity, bound to its member's entry in the federation document (DESIGN §8).

Choice: the federation document lists each member node's *certificate* (DER, self-signed,
one ECDSA P-256 key each; two while a key is rotated) beside its endpoints and signing
keys. Trust is the list, not a name or an outside authority:

- a client that asks a member's node trusts exactly the certificates the pinned document
  lists for that member (like SSH's known_hosts, signed by the federation's root keys);
- a node that accepts a replication caller as member X requires that the caller's
  certificate is one that the *current* document lists for X; a new document version that
  rotates or removes it takes effect on the next handshake and the next call.

Why a listed certificate rather than its SPKI hash: gRPC's TLS stack verifies a peer against
a set of root certificates and offers no hook to pin a key hash, so listing the certificate
itself lets the stock TLS handshake do the check. Why not a certificate signed by the root
keys: those are offline Ed25519 keys that sign documents by threshold; X.509 has no
threshold signatures, and one more signing ceremony per node key would be needed.

The names inside a certificate carry no trust (gRPC checks one of them, so each certificate
names ``node.counterpart.invalid`` and its member's ``xx.node.counterpart.invalid``, and a
client asks for the one it expects); the ``.invalid`` top-level domain (RFC 2606) never
resolves, so no public certificate can ever hold these names.
"""

from __future__ import annotations

import hashlib
import ipaddress
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from counterpart.v1 import federation_pb2
from counterpart_core.errors import InvalidArgumentError
from counterpart_core.names import check_member_code

ANY_NODE_NAME = "node.counterpart.invalid"
DEFAULT_VALIDITY = timedelta(days=2 * 365)


def member_name(member: str) -> str:
    """The name in every certificate of ``member``'s node, which a client asks for."""
    return f"{member.lower()}.{ANY_NODE_NAME}"


def generate_key() -> ec.EllipticCurvePrivateKey:
    """A new TLS key (ECDSA P-256: every TLS 1.3 stack speaks it)."""
    return ec.generate_private_key(ec.SECP256R1())


def self_signed_certificate(
    key: ec.EllipticCurvePrivateKey, member: str, hosts: Iterable[str], now: datetime,
    valid_for: timedelta = DEFAULT_VALIDITY,
) -> bytes:
    """A self-signed certificate (DER) for ``member``'s node: usable as server and client
    certificate, naming the member's node and the given host names or addresses."""
    check_member_code(member)
    subject = x509.Name([
        x509.NameAttribute(NameOID.COMMON_NAME, member_name(member)),
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, f"Counterpart node of {member}"),
    ])
    alt: list[x509.GeneralName] = [x509.DNSName(member_name(member)), x509.DNSName(ANY_NODE_NAME)]
    for host in dict.fromkeys(hosts):
        if not host:
            continue
        try:
            alt.append(x509.IPAddress(ipaddress.ip_address(host.strip("[]"))))
        except ValueError:
            alt.append(x509.DNSName(host))
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + valid_for)
        .add_extension(x509.SubjectAlternativeName(alt), critical=False)
        # a self-signed certificate that is its own trust anchor: CA true, no path below it
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True, key_cert_sign=True, content_commitment=False,
                key_encipherment=False, data_encipherment=False, key_agreement=False,
                crl_sign=False, encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False
        )
    )
    return builder.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.DER)


def parse_certificate(data: bytes, what: str = "certificate") -> x509.Certificate:
    """A certificate from DER or PEM bytes; InvalidArgumentError when it is neither."""
    try:
        if data.lstrip().startswith(b"-----BEGIN"):
            return x509.load_pem_x509_certificate(data)
        return x509.load_der_x509_certificate(data)
    except ValueError as e:
        raise InvalidArgumentError(f"{what} is not an X.509 certificate", reason="INVALID_CERTIFICATE") from e


def der(data: bytes) -> bytes:
    """The DER form of a certificate given as DER or PEM."""
    return parse_certificate(data).public_bytes(serialization.Encoding.DER)


def pem(certificate_der: bytes) -> bytes:
    return parse_certificate(certificate_der).public_bytes(serialization.Encoding.PEM)


def fingerprint(certificate_der: bytes) -> str:
    """SHA-256 of the DER certificate, hex: what operators compare and `--remove` takes."""
    return hashlib.sha256(certificate_der).hexdigest()


def key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    """Unencrypted PKCS#8 PEM, for the TLS stack in memory only (never written to disk)."""
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())


def certificate_matches_key(certificate_der: bytes, key: ec.EllipticCurvePrivateKey) -> bool:
    public = parse_certificate(certificate_der).public_key()
    spki = serialization.PublicFormat.SubjectPublicKeyInfo
    return public.public_bytes(serialization.Encoding.DER, spki) == key.public_key().public_bytes(
        serialization.Encoding.DER, spki
    )


@dataclass(frozen=True)
class Expiry:
    not_before: datetime
    not_after: datetime


def validity(certificate_der: bytes) -> Expiry:
    cert = parse_certificate(certificate_der)
    return Expiry(cert.not_valid_before_utc, cert.not_valid_after_utc)


def member_of_certificate(members: Iterable[federation_pb2.Member], certificate_der: bytes) -> str | None:
    """The member whose entry lists exactly this certificate, or None."""
    for m in members:
        if any(bytes(c) == certificate_der for c in m.tls_certificates):
            return m.code
    return None


def roots_pem(members: Iterable[federation_pb2.Member], only: str | None = None) -> bytes:
    """The certificates a TLS peer must chain to: those of one member, or of every member."""
    out = b"".join(pem(bytes(c)) for m in members if only is None or m.code == only for c in m.tls_certificates)
    return out


TLS_SCHEME = "tls://"


def host_of(address: str) -> str:
    """The host of ``[tls://]host:port`` (brackets of an IPv6 address removed)."""
    host = address.removeprefix(TLS_SCHEME).rsplit(":", 1)[0]
    return host.strip("[]")


def is_loopback(address: str) -> bool:
    """Is the host of ``host:port`` a loopback address (127.0.0.0/8, ::1, localhost)?"""
    host = host_of(address)
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def member_at(members: Iterable[federation_pb2.Member], address: str) -> str | None:
    """The member whose entry lists this endpoint (public or peer), if any."""
    plain = address.removeprefix(TLS_SCHEME)
    for m in members:
        if plain in m.endpoints or plain in m.peer_endpoints:
            return m.code
    return None


def trust_for(
    members: Sequence[federation_pb2.Member], address: str, expect_member: str | None = None
) -> tuple[bytes, str, str | None]:
    """(root certificates, name to ask for, member) to call the node at ``address`` over TLS:
    exactly the certificates listed for the member expected there (given, or found by its
    endpoints), or those of every member for an address the document does not list."""
    member = expect_member or member_at(members, address)
    roots = roots_pem(members, only=member)
    if not roots:
        whose = f"member {member}" if member else "any member"
        raise InvalidArgumentError(
            f"the federation document lists no TLS certificate of {whose}, so {address} cannot be authenticated",
            reason="NO_CERTIFICATE_LISTED",
        )
    return roots, member_name(member) if member else ANY_NODE_NAME, member
