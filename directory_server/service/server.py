"""The node's gRPC server: DirectoryService, health checking, reflection, graceful shutdown."""

from __future__ import annotations

import json
import logging
import signal
import sys
import threading
import time
from collections.abc import Callable
from concurrent import futures
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from counterpart.v1 import (
    directory_service_pb2,
    directory_service_pb2_grpc,
    replication_service_pb2,
    replication_service_pb2_grpc,
)
from directory_server import security
from directory_server.domain import signing
from directory_server.domain.errors import ConfigurationError, CounterpartError
from directory_server.lookup import Directory
from directory_server.node import Node
from directory_server.security import TlsIdentity
from directory_server.service.directory import DirectoryServicer
from directory_server.service.guard import RequestGuard
from directory_server.service.identity import Authenticator
from directory_server.service.replication import Broadcaster, ReplicationServicer
from directory_server.sync import SyncEngine, peers_of

log = logging.getLogger("counterpart.node")
DIRECTORY_SERVICE = directory_service_pb2.DESCRIPTOR.services_by_name["DirectoryService"].full_name
REPLICATION_SERVICE = replication_service_pb2.DESCRIPTOR.services_by_name["ReplicationService"].full_name
WATCH_LIMIT = 64  # peers that may follow WatchCheckpoints at once; each holds a server thread


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message and any `extra` fields."""

    _skip = set(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {"message", "asctime"}

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        out.update({k: v for k, v in record.__dict__.items() if k not in self._skip})
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out, ensure_ascii=False, default=str)


def setup_logging(level: str = "INFO") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)


class _AccessLog(grpc.ServerInterceptor):
    """Logs every call with its method, status code and duration."""

    def intercept_service(self, continuation: Callable[[Any], Any], details: grpc.HandlerCallDetails) -> Any:
        handler = continuation(details)
        if handler is None or handler.unary_unary is None:
            return handler
        inner = handler.unary_unary
        method = details.method

        def logged(request: Any, context: grpc.ServicerContext) -> Any:
            start = time.perf_counter()
            code = "OK"
            try:
                return inner(request, context)
            except Exception:
                status = getattr(context, "code", lambda: None)()
                code = status.name if status is not None else "UNKNOWN"
                raise
            finally:
                log.info("rpc", extra={"method": method, "code": code, "ms": round((time.perf_counter() - start) * 1000, 2)})

        return grpc.unary_unary_rpc_method_handler(
            logged, request_deserializer=handler.request_deserializer, response_serializer=handler.response_serializer
        )


class NodeServer:
    """A running node: its gRPC server, its heartbeat, its sync engine, and the thread that
    pushes every checkpoint the node accepts (own publishes, heartbeats, ingests) to the
    peers that watch it."""

    def __init__(
        self, node: Node, address: str, *, max_workers: int = 4, access_log: bool = True,
        peers: list[str] | None = None, sync_interval: float = 30.0, sync_deadline: float = 10.0,
        push_poll: float = 0.1, tls_identity: TlsIdentity | None = None, peer_address: str = "",
    ) -> None:
        self.node = node
        self.directory = Directory(node.store, node.federation, node.clock)
        interceptors: list[grpc.ServerInterceptor] = [RequestGuard(), *([_AccessLog()] if access_log else [])]
        interceptors.append(Authenticator(node.federation, node.store.revoked, node.member, node.clock))
        self.server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=max_workers + WATCH_LIMIT), interceptors=interceptors,
            maximum_concurrent_rpcs=max_workers + WATCH_LIMIT,
        )
        directory_service_pb2_grpc.add_DirectoryServiceServicer_to_server(DirectoryServicer(self.directory), self.server)
        self.broadcaster = Broadcaster()
        replication_service_pb2_grpc.add_ReplicationServiceServicer_to_server(
            ReplicationServicer(node, self.broadcaster, WATCH_LIMIT), self.server
        )
        self.health = health.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        reflection.enable_server_reflection(
            (
                DIRECTORY_SERVICE, REPLICATION_SERVICE, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
                reflection.SERVICE_NAME,
            ),
            self.server,
        )
        self.tls_identity = tls_identity
        if tls_identity is None:
            security.check_plaintext_allowed(address, "listen")
            self.port = self.server.add_insecure_port(address)
        else:
            self.port = self.server.add_secure_port(address, security.public_server_credentials(tls_identity))
        if self.port == 0:
            raise CounterpartError(f"cannot listen on {address}", reason="LISTEN_FAILED")
        self.address = address.rsplit(":", 1)[0] + f":{self.port}"
        self.peer_address = ""
        if peer_address:
            if tls_identity is None:
                raise ConfigurationError(
                    "peer_listen needs the node's TLS key and certificate (tls = \"on\")", reason="TLS_REQUIRED"
                )
            peer_port = self.server.add_secure_port(
                peer_address, security.peer_server_credentials(tls_identity, node.federation)
            )
            if peer_port == 0:
                raise CounterpartError(f"cannot listen on {peer_address}", reason="LISTEN_FAILED")
            self.peer_address = peer_address.rsplit(":", 1)[0] + f":{peer_port}"
        self._stop = threading.Event()
        self._heartbeat: threading.Thread | None = None
        self._push_poll = push_poll
        self.sync: SyncEngine | None = None
        self._configured_peers = list(peers or [])
        if peers is not None:
            self.sync = SyncEngine(
                node, lambda: peers_of(node, self._configured_peers, self.address),
                interval=sync_interval, deadline=sync_deadline,
            )
            self.sync.syncer.tls_identity = tls_identity

    def start(self, key: signing.SigningKey | None = None) -> None:
        self.node.federation()  # refuse to serve without a trust root
        self.server.start()
        for service in ("", DIRECTORY_SERVICE, REPLICATION_SERVICE):
            self.health.set(service, health_pb2.HealthCheckResponse.SERVING)
        if key is not None:
            self._heartbeat = threading.Thread(target=self._beat, args=(key,), name="heartbeat", daemon=True)
            self._heartbeat.start()
        threading.Thread(target=self._push, name="push", daemon=True).start()
        if self.sync is not None:
            self.sync.start()
        log.info("serving", extra={
            "address": self.address, "tls": self.tls_identity is not None, "peer_address": self.peer_address,
            "member": self.node.member,
        })

    def set_peers(self, peers: list[str]) -> None:
        """Replace the configured peers (the federation's endpoints still count); the sync
        engine picks them up within a few seconds, or at once with ``sync.trigger``."""
        self._configured_peers = list(peers)
        if self.sync is not None:
            self.sync.refresh_peers()

    def _push(self) -> None:
        """Watch the store for checkpoints and federation versions this node accepted (in
        this process or another: `counterpart-node publish` is one) and push each."""
        seen = self.node.store.checkpoints()
        version = self.node.federation().version
        while not self._stop.wait(self._push_poll):
            try:
                if self.node.refresh_federation():
                    version = self.node.federation().version
                    self.broadcaster.publish(replication_service_pb2.WatchCheckpointsResponse(federation_version=version))
                current = self.node.store.checkpoints()
            except Exception:  # the database may be briefly unavailable; try again next tick
                log.exception("push poll failed")
                continue
            for member, envelope in sorted(current.items()):
                if seen.get(member) != envelope:
                    self.broadcaster.publish(
                        replication_service_pb2.WatchCheckpointsResponse(signed_checkpoint=envelope, federation_version=version)
                    )
            seen = current

    def _beat(self, key: signing.SigningKey) -> None:
        interval = self.node.config.heartbeat_interval_td.total_seconds()
        while not self._stop.is_set():
            try:
                cp = self.node.heartbeat(key)
                if cp is not None:
                    log.info("heartbeat checkpoint", extra={"size": cp.size, "expires": cp.expire_time.isoformat()})
            except CounterpartError as e:
                log.warning("heartbeat failed", extra={"reason": e.reason, "error": e.message})
            self._stop.wait(interval)

    def stop(self, grace: float = 5.0) -> None:
        """Graceful shutdown: report NOT_SERVING, let calls in flight finish, then stop."""
        self._stop.set()
        if self.sync is not None:
            self.sync.stop()
        self.broadcaster.close()
        self.health.enter_graceful_shutdown()
        self.server.stop(grace).wait()
        log.info("stopped", extra={"member": self.node.member})

    def wait_for_signal(self) -> None:
        done = threading.Event()

        def handler(signum: int, _frame: Any) -> None:
            log.info("signal received; shutting down", extra={"signal": signal.Signals(signum).name})
            done.set()

        signal.signal(signal.SIGTERM, handler)
        signal.signal(signal.SIGINT, handler)
        done.wait()
        self.stop()
