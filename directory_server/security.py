"""The node's TLS identity and the gRPC credentials built from it (DESIGN §8).

Listeners: the public one (``listen``) speaks TLS 1.3 with the node's certificate and
asks no client certificate (prosecutors, systems, anonymous readers); the peer one
(``peer_listen``) requires a client certificate that the *current* federation document
lists for some member (gRPC asks for the trusted roots on every handshake, so a new
document version rotates or revokes a node's certificate without a restart). Plaintext is
allowed on loopback only.

Outgoing calls to another node trust exactly the certificates the federation document lists
for the member whose endpoint is called (or, for an address the document does not list,
those of every member), and present this node's certificate.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import grpc
from cryptography.hazmat.primitives.asymmetric import ec

from counterpart_core import signing, tls
from counterpart_core.errors import ConfigurationError, InvalidArgumentError, KeyFileError
from counterpart_core.federation import Federation
from directory_server.config import NodeConfig

TLS_SCHEME = tls.TLS_SCHEME
host_of = tls.host_of
is_loopback = tls.is_loopback


@dataclass(frozen=True)
class TlsIdentity:
    """The node's TLS key (decrypted, in memory only) and its certificate."""

    key: ec.EllipticCurvePrivateKey
    certificate_der: bytes

    @property
    def key_pem(self) -> bytes:
        return tls.key_pem(self.key)

    @property
    def certificate_pem(self) -> bytes:
        return tls.pem(self.certificate_der)

    @property
    def fingerprint(self) -> str:
        return tls.fingerprint(self.certificate_der)


def create_tls_identity(config: NodeConfig, passphrase: bytes, hosts: Sequence[str], now: datetime) -> TlsIdentity:
    """A new TLS key (encrypted, mode 600) and its self-signed certificate, for init."""
    key = tls.generate_key()
    certificate = tls.self_signed_certificate(key, config.member, hosts, now)
    signing.write_private_key(config.tls_key_path, key, passphrase)
    write_certificate(config.tls_cert_path, certificate)
    return TlsIdentity(key, certificate)


def write_certificate(path: Path, certificate_der: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(tls.pem(certificate_der))


def read_certificate(path: Path) -> bytes:
    """A certificate file (PEM or DER) as DER."""
    try:
        data = path.read_bytes()
    except OSError as e:
        raise ConfigurationError(f"cannot read certificate {path}: {e.strerror}", reason="CERTIFICATE_UNREADABLE") from e
    return tls.der(data)


def load_tls_identity(config: NodeConfig, passphrase: bytes) -> TlsIdentity:
    """The node's TLS key and certificate from the data directory; the key must match."""
    key = signing.read_private_key(config.tls_key_path, passphrase)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise KeyFileError(f"{config.tls_key_path} is not an ECDSA TLS key", reason="KEY_TYPE")
    certificate = read_certificate(config.tls_cert_path)
    if not tls.certificate_matches_key(certificate, key):
        raise ConfigurationError(
            f"{config.tls_cert_path} is not the certificate of the key in {config.tls_key_path}",
            reason="CERTIFICATE_KEY_MISMATCH",
        )
    return TlsIdentity(key, certificate)


def check_plaintext_allowed(address: str, what: str) -> None:
    """Plaintext only on loopback: refuse anything else with what to do instead."""
    if not is_loopback(address):
        raise ConfigurationError(
            f"refusing to listen on {address} ({what}) without TLS: plaintext is allowed on loopback "
            "only. Set `tls = \"on\"` in node.toml (the key and certificate are keys/tls-key.pem and "
            "keys/tls-cert.pem, created by `counterpart-node init`), or listen on 127.0.0.1",
            reason="TLS_REQUIRED",
        )


def public_server_credentials(identity: TlsIdentity) -> grpc.ServerCredentials:
    """TLS with the node's certificate; no client certificate asked."""
    return grpc.ssl_server_credentials([(identity.key_pem, identity.certificate_pem)])


def peer_server_credentials(identity: TlsIdentity, federation: Callable[[], Federation]) -> grpc.ServerCredentials:
    """Mutual TLS: the client must hold the key of a certificate that the current federation
    document lists for some member; the list is read again on every handshake."""
    pair = [(identity.key_pem, identity.certificate_pem)]
    cache: dict[int, bytes] = {}

    def roots() -> bytes:
        current = federation()
        if current.version not in cache:
            cache.clear()
            # a document that lists no certificate yet still needs a root for the TLS stack:
            # the node's own certificate, which no other node holds the key of
            cache[current.version] = tls.roots_pem(current.members()) or identity.certificate_pem
        return cache[current.version]

    def fetch() -> grpc.ServerCertificateConfiguration:
        return grpc.ssl_server_certificate_configuration(pair, root_certificates=roots())

    return grpc.dynamic_ssl_server_credentials(fetch(), fetch, require_client_authentication=True)


def channel_credentials(
    federation: Federation, address: str, identity: TlsIdentity | None, expect_member: str | None = None
) -> tuple[grpc.ChannelCredentials, list[tuple[str, str]]]:
    """Credentials and channel options to call another node over TLS (``tls.trust_for``),
    presenting this node's certificate if it has one."""
    try:
        roots, name, _ = tls.trust_for(federation.members(), address, expect_member)
    except InvalidArgumentError as e:
        raise ConfigurationError(e.message, reason=e.reason) from e
    creds = grpc.ssl_channel_credentials(
        root_certificates=roots,
        private_key=identity.key_pem if identity else None,
        certificate_chain=identity.certificate_pem if identity else None,
    )
    return creds, [("grpc.ssl_target_name_override", name), ("grpc.default_authority", name)]
