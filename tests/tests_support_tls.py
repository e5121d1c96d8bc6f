"""Nodes on loopback that speak TLS: generated TLS keys and certificates, federation
documents that list them, access tokens, and raw gRPC calls as an outside client makes them."""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
import yaml
from conftest import PASSPHRASE, SAMPLE_DATA  # type: ignore[import-not-found, unused-ignore]
from cryptography.hazmat.primitives.asymmetric import ec
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from counterpart_core import federation as fed
from counterpart_core import signing, tls
from directory_server.config import CONFIG_NAME, NodeConfig
from directory_server.node import Node
from directory_server.security import TlsIdentity
from directory_server.service.server import NodeServer


@dataclass
class Member:
    """One member's keys: the signing key (entries, checkpoints, tokens) and the node's TLS key."""

    code: str
    key: signing.SigningKey
    tls_key: ec.EllipticCurvePrivateKey
    certificate: bytes  # DER

    @property
    def identity(self) -> TlsIdentity:
        return TlsIdentity(self.tls_key, self.certificate)


def new_member(code: str, now: datetime, key: signing.SigningKey | None = None) -> Member:
    tls_key = tls.generate_key()
    return Member(code, key or signing.SigningKey.generate(), tls_key,
                  tls.self_signed_certificate(tls_key, code, ["127.0.0.1"], now))


@dataclass
class TlsFederation:
    """Root keys and members of a test federation whose documents list node certificates."""

    root_keys: list[signing.SigningKey]
    federation_id: str = "test"
    members: dict[str, Member] = field(default_factory=dict)

    def document(
        self, codes: Sequence[str], now: datetime, *, version: int = 1, without_certificate: Sequence[str] = (),
        endpoints: dict[str, str] | None = None,
    ) -> bytes:
        doc = fed.new_document(
            self.federation_id, [k.public_bytes for k in self.root_keys], 1, now, timedelta(days=365)
        )
        doc.version = version
        for code in codes:
            m = self.members[code]
            certs = [] if code in without_certificate else [m.certificate]
            eps = [endpoints[code]] if endpoints and code in endpoints else []
            fed.add_member(doc, code, f"Member {code}", [m.key.public_bytes], eps, certs)
        return signing.sign_envelope(doc.SerializeToString(deterministic=True), signing.FEDERATION_TYPE, self.root_keys)


def make_tls_node(root: Path, member: Member, document: bytes, publish: str | None = None) -> Node:
    """A node of ``member`` with the federation installed and (optionally) sample data published."""
    data_dir = root / f"node-{member.code}"
    data_dir.mkdir()
    config = NodeConfig(data_dir=data_dir, member=member.code, tls="on")
    (data_dir / CONFIG_NAME).write_text(config.to_toml(), encoding="utf-8")
    signing.write_key_file(config.key_path, member.key, PASSPHRASE)
    signing.write_private_key(config.tls_key_path, member.tls_key, PASSPHRASE)
    config.tls_cert_path.write_bytes(tls.pem(member.certificate))
    node = Node(config)
    node.install_federation(document)
    if publish:
        records = root / f"records-{member.code}"
        shutil.copytree(SAMPLE_DATA / publish, records)
        node.publish(records, PASSPHRASE)
    return node


def serve(node: Node, member: Member, *, peers: list[str] | None = None, sync_interval: float = 30.0) -> NodeServer:
    server = NodeServer(
        node, "127.0.0.1:0", access_log=False, tls_identity=member.identity, peer_address="127.0.0.1:0",
        peers=peers, sync_interval=sync_interval,
    )
    server.start()
    return server


def client_channel(address: str, federation_members: Sequence[Any], server_member: str,
                   client: Member | None = None) -> grpc.Channel:
    """A TLS channel that trusts only ``server_member``'s listed certificates and presents
    ``client``'s certificate when given (mutual TLS)."""
    roots = tls.roots_pem(federation_members, only=server_member)
    creds = grpc.ssl_channel_credentials(
        roots, client.identity.key_pem if client else None, client.identity.certificate_pem if client else None
    )
    name = tls.member_name(server_member)
    return grpc.secure_channel(address, creds, options=[("grpc.ssl_target_name_override", name)])


def error_info(error: grpc.RpcError) -> error_details_pb2.ErrorInfo | None:
    status = rpc_status.from_call(error)  # type: ignore[arg-type]
    if status is None:
        return None
    for detail in status.details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            return info
    return None


def members_only_sentinels(member: str) -> list[bytes]:
    """E-mail addresses and phone numbers of the sample contacts that are not public."""
    data = yaml.safe_load((SAMPLE_DATA / member / "contacts.yaml").read_text(encoding="utf-8"))
    out: list[bytes] = []
    for c in data["contacts"]:
        if c.get("visibility") != "VISIBILITY_PUBLIC":
            out += [str(c[k]).encode() for k in ("email", "phone") if c.get(k)]
    assert out, f"{member}'s sample data has no members-only contact with an e-mail or phone"
    return out


def members_only_names(member: str) -> list[str]:
    data = yaml.safe_load((SAMPLE_DATA / member / "contacts.yaml").read_text(encoding="utf-8"))
    return [f"members/{member}/contacts/{c['id']}" for c in data["contacts"] if c.get("visibility") != "VISIBILITY_PUBLIC"]
