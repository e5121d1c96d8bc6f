#!/usr/bin/env python3
"""Health probe of a Counterpart node: grpc.health.v1 Check over TLS on its public listener.

Installed in the image as ``counterpart-healthcheck``; the Docker HEALTHCHECK and the
Kubernetes liveness/readiness probes run it inside the node's container. Exit 0 when the node
answers SERVING, 1 otherwise (one line on stderr says why).

Why not ``grpc_health_probe`` or a Kubernetes ``grpc:`` probe: the listener speaks TLS only,
with the node's own self-signed certificate (the federation document is the trust, not a
certificate authority), and Kubernetes' ``grpc:`` probes do not speak TLS. This probe trusts
exactly the node's certificate file and asks for ``node.counterpart.invalid``, a name every
node certificate holds (counterpart_core/tls.py), so an expired or replaced certificate
makes the probe fail too.

It reads what the node reads: ``$COUNTERPART_DATA_DIR/node.toml`` (``listen``, ``tls``,
``tls_cert_file``), each overridden by ``COUNTERPART_<KEY>`` as the node does. A wildcard
listen address (0.0.0.0, ::) is probed on loopback. Only the standard library, grpcio and
grpcio-health-checking (dependencies of the node) are used, so the probe does not depend on
how the project's Python packages are named.
"""

from __future__ import annotations

import os
import sys
import tomllib
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

SERVER_NAME = "node.counterpart.invalid"
WILDCARDS = {"", "0.0.0.0", "::", "[::]", "*"}


def setting(config: dict[str, object], key: str, default: str) -> str:
    return os.environ.get(f"COUNTERPART_{key.upper()}") or str(config.get(key, default))


def target(listen: str) -> str:
    host, _, port = listen.rpartition(":")
    if not port.isdigit():
        raise ValueError(f"listen address {listen!r} is not host:port")
    return f"127.0.0.1:{port}" if host in WILDCARDS else f"{host}:{port}"


def main() -> int:
    data_dir = Path(os.environ.get("COUNTERPART_DATA_DIR", "/var/lib/counterpart"))
    timeout = float(os.environ.get("COUNTERPART_HEALTHCHECK_TIMEOUT", "3"))
    try:
        config = tomllib.loads((data_dir / "node.toml").read_text(encoding="utf-8"))
        address = target(setting(config, "listen", "127.0.0.1:7700"))
        tls = setting(config, "tls", "off") == "on"
        credentials = None
        if tls:
            cert = Path(setting(config, "tls_cert_file", "keys/tls-cert.pem"))
            cert = cert if cert.is_absolute() else data_dir / cert
            credentials = grpc.ssl_channel_credentials(root_certificates=cert.read_bytes())
    except (OSError, ValueError, tomllib.TOMLDecodeError) as e:
        print(f"unhealthy: cannot read the node's configuration: {e}", file=sys.stderr)
        return 1
    options = [("grpc.ssl_target_name_override", SERVER_NAME)] if credentials else []
    channel = (
        grpc.secure_channel(address, credentials, options=options)
        if credentials
        else grpc.insecure_channel(address)
    )
    try:
        with channel:
            response = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), timeout=timeout
            )
    except grpc.RpcError as e:
        print(f"unhealthy: {address}: {e.code().name}: {e.details()}", file=sys.stderr)
        return 1
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)
    if response.status != health_pb2.HealthCheckResponse.SERVING:
        print(f"unhealthy: {address} answers {status}", file=sys.stderr)
        return 1
    print(f"{address} {status} ({'TLS' if tls else 'plaintext, loopback'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
