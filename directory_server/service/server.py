"""The node's gRPC server: DirectoryService, health checking, reflection, graceful shutdown."""

from __future__ import annotations

import errno
import json
import logging
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable
from concurrent import futures
from datetime import UTC, datetime
from logging import INFO
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from counterpart.v1 import (
    directory_service_pb2,
    replication_service_pb2,
    replication_service_pb2_grpc,
)
from counterpart_core import signing
from counterpart_core.errors import ConfigurationError, CounterpartError
from directory_server import security
from directory_server.lookup import Directory
from directory_server.node import Node
from directory_server.security import TlsIdentity
from directory_server.service.directory import DirectoryServicer
from directory_server.service.directory import add_to_server as add_directory_service
from directory_server.service.guard import RequestGuard
from directory_server.service.identity import Authenticator
from directory_server.service.interceptors import Behaviour, Wrapped, rewrap, status_name
from directory_server.service.metrics import NodeMetrics
from directory_server.service.replication import Broadcaster, ReplicationServicer
from directory_server.storage import pgnotify
from directory_server.sync import PeerReport, SyncEngine, peers_of
from directory_server.wake import WakeSocket

log = logging.getLogger("counterpart.node")
DIRECTORY_SERVICE = directory_service_pb2.DESCRIPTOR.services_by_name["DirectoryService"].full_name
REPLICATION_SERVICE = replication_service_pb2.DESCRIPTOR.services_by_name["ReplicationService"].full_name
# Peers that may follow WatchCheckpoints at once; each holds a server thread (the sync
# server has no other way to hold a stream open), so this bounds what a node watched by a
# big federation costs: with 32, a node of 200 members stays under 64 threads. A peer
# refused is told RESOURCE_EXHAUSTED, retries with backoff, and meanwhile learns of changes
# from the peers that relay them (every node pushes what it ingests: in two hops, 32 x 32
# watchers reach far more than 200 nodes) and from anti-entropy.
WATCH_LIMIT = 32


def rfc3339(created: float) -> str:
    """A log record's time in RFC 3339, UTC, with milliseconds: 2026-11-30T20:08:42.123Z."""
    t = datetime.fromtimestamp(created, UTC)
    return f"{t:%Y-%m-%dT%H:%M:%S}.{t.microsecond // 1000:03d}Z"


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time (RFC 3339, UTC, milliseconds), level, logger, message
    and any `extra` fields."""

    _skip = set(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {"message", "asctime"}

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "time": rfc3339(record.created),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        out.update({k: v for k, v in record.__dict__.items() if k not in self._skip})
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out, ensure_ascii=False, default=str)


class _Stderr:
    """Whatever sys.stderr is when a line is written: a progress bar on the terminal
    (rich) replaces it for a while, to print log lines above the bar."""

    def write(self, text: str) -> int:
        return sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()


def setup_logging(level: str = "INFO") -> None:
    handler = logging.StreamHandler(_Stderr())
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)


class _AccessLog(grpc.ServerInterceptor):
    """Logs every call with its method, status code and duration."""

    def __init__(self) -> None:
        self._wrapped = Wrapped()

    def intercept_service(self, continuation: Callable[[Any], Any], details: grpc.HandlerCallDetails) -> Any:
        handler = continuation(details)
        if handler is None:
            return None
        method = details.method
        return self._wrapped.get(method, handler, lambda: self._logging(handler, method))

    @staticmethod
    def _logging(handler: Any, method: str) -> Any:
        def logging(inner: Behaviour) -> Behaviour:
            def logged(request: Any, context: grpc.ServicerContext) -> Any:
                if not log.isEnabledFor(INFO):
                    return inner(request, context)
                start = time.perf_counter()
                code = "OK"
                try:
                    return inner(request, context)
                except Exception:
                    code = status_name(context, "UNKNOWN")
                    raise
                finally:
                    log.info("rpc", extra={"method": method, "code": code, "ms": round((time.perf_counter() - start) * 1000, 2)})

            return logged

        return rewrap(handler, unary_unary=logging)


def listen_error(address: str, what: str = "") -> CounterpartError:
    """Why ``address`` cannot be listened on, found by binding it once more with a plain
    socket (gRPC only says that it failed): in use, not an address of this machine, ..."""
    where = f"{address}{f' ({what})' if what else ''}"
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit():
        return CounterpartError(f"cannot listen on {where}: not host:port", reason="LISTEN_FAILED")
    try:
        infos = socket.getaddrinfo(host.strip("[]") or None, int(port), type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except (socket.gaierror, UnicodeError) as e:
        return CounterpartError(f"cannot listen on {where}: unknown host ({e})", reason="LISTEN_FAILED")
    for family, kind, proto, _, sockaddr in infos:
        with socket.socket(family, kind, proto) as probe:
            try:
                probe.bind(sockaddr)
            except OSError as e:
                if e.errno == errno.EADDRINUSE:
                    return CounterpartError(
                        f"cannot listen on {where}: address in use (another process listens on port {port}; "
                        f"`ss -ltnp 'sport = :{port}'` names it)",
                        reason="ADDRESS_IN_USE",
                    )
                if e.errno == errno.EADDRNOTAVAIL:
                    return CounterpartError(
                        f"cannot listen on {where}: {host} is not an address of this machine", reason="LISTEN_FAILED"
                    )
                if e.errno == errno.EACCES:
                    return CounterpartError(
                        f"cannot listen on {where}: permission denied (ports below 1024 need privileges)",
                        reason="LISTEN_FAILED",
                    )
                return CounterpartError(f"cannot listen on {where}: {e.strerror}", reason="LISTEN_FAILED")
    return CounterpartError(f"cannot listen on {where}", reason="LISTEN_FAILED")


class NodeServer:
    """A running node: its gRPC server, its heartbeat, its sync engine, and the thread that
    pushes every checkpoint the node accepts (own publishes, heartbeats, ingests) to the
    peers that watch it.

    Its listeners refuse a port another socket holds (``grpc.so_reuseport`` off, where gRPC
    turns it on by default and the kernel would split the traffic between two servers),
    unless ``several_processes``: several serving processes of one node, on purpose.
    ``metrics_address``: Prometheus metrics over HTTP there (``service.metrics``)."""

    def __init__(
        self, node: Node, address: str, *, max_workers: int = 4, access_log: bool = True,
        peers: list[str] | None = None, sync_interval: float = 30.0, sync_deadline: float = 10.0,
        push_poll: float = 5.0, tls_identity: TlsIdentity | None = None, peer_address: str = "",
        several_processes: bool = False, metrics_address: str = "", watch_limit: int = WATCH_LIMIT,
    ) -> None:
        self.node = node
        self.directory = Directory(node.store, node.federation, node.clock)
        self.metrics = NodeMetrics(node) if metrics_address else None
        interceptors: list[grpc.ServerInterceptor] = [
            *([self.metrics.interceptor] if self.metrics else []), RequestGuard(),
            *([_AccessLog()] if access_log else []),
        ]
        interceptors.append(Authenticator(node.federation, node.store.revoked, node.member, node.clock))
        self.server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=max_workers + watch_limit), interceptors=interceptors,
            maximum_concurrent_rpcs=max_workers + watch_limit,
            options=[("grpc.so_reuseport", 1 if several_processes else 0)],
        )
        add_directory_service(DirectoryServicer(self.directory), self.server)
        self.broadcaster = Broadcaster()
        replication_service_pb2_grpc.add_ReplicationServiceServicer_to_server(
            ReplicationServicer(node, self.broadcaster, watch_limit), self.server
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
            self.port = _bind(address, self.server.add_insecure_port)
        else:
            credentials = security.public_server_credentials(tls_identity)
            self.port = _bind(address, lambda a: self.server.add_secure_port(a, credentials))
        self.address = address.rsplit(":", 1)[0] + f":{self.port}"
        self.peer_address = ""
        if peer_address:
            if tls_identity is None:
                raise ConfigurationError(
                    "peer_listen needs the node's TLS key and certificate (tls = \"on\")", reason="TLS_REQUIRED"
                )
            peer_credentials = security.peer_server_credentials(tls_identity, node.federation)
            peer_port = _bind(peer_address, lambda a: self.server.add_secure_port(a, peer_credentials), "peer_listen")
            self.peer_address = peer_address.rsplit(":", 1)[0] + f":{peer_port}"
        self.metrics_address = ""
        if self.metrics is not None:
            try:
                self.metrics_address = self.metrics.listen(metrics_address)
            except (OSError, ValueError) as e:
                self.server.stop(None)  # not started: gives its ports back
                raise listen_error(metrics_address, "metrics_listen") from e
        self._stop = threading.Event()
        self._heartbeat: threading.Thread | None = None
        self._push_poll = push_poll
        self._wakeup: WakeSocket | None = None
        self._listener: pgnotify.Listener | None = None
        self.sync: SyncEngine | None = None
        self._configured_peers = list(peers or [])
        if peers is not None:
            self.sync = SyncEngine(
                node, lambda: peers_of(node, self._configured_peers, self.address),
                interval=sync_interval, deadline=sync_deadline,
            )
            self.sync.syncer.tls_identity = tls_identity
            self.sync.on_report = self._sync_report
        self._sync_observers: list[Callable[[PeerReport], None]] = []
        if self.metrics is not None:
            self._sync_observers.append(self.metrics.observe_sync)

    def observe_sync(self, observer: Callable[[PeerReport], None]) -> None:
        """Call ``observer`` with the report of every sync pass (from the peers' threads)."""
        self._sync_observers.append(observer)

    def _sync_report(self, report: PeerReport) -> None:
        for observer in list(self._sync_observers):
            try:
                observer(report)
            except Exception:  # an observer's bug must not stop the peer's sync thread
                log.exception("sync observer failed", extra={"peer": report.peer})

    def start(self, key: signing.SigningKey | None = None) -> None:
        self.node.federation()  # refuse to serve without a trust root
        self.server.start()
        for service in ("", DIRECTORY_SERVICE, REPLICATION_SERVICE):
            self.health.set(service, health_pb2.HealthCheckResponse.SERVING)
        if key is not None:
            self._heartbeat = threading.Thread(target=self._beat, args=(key,), name="heartbeat", daemon=True)
            self._heartbeat.start()
        try:
            self._wakeup = WakeSocket(self.node.config.data_dir)
        except OSError as e:
            log.warning("cannot bind the wake-up socket; pushes of commits by other processes wait for the "
                        "fallback poll", extra={"error": str(e), "seconds": self._push_poll})
            self._wakeup = None
        threading.Thread(target=self._push, args=(self._wakeup,), name="push", daemon=True).start()
        # commits by processes on other machines over the same PostgreSQL database
        self._listener = self.node.store.follow_other_processes()
        if self.sync is not None:
            self.sync.start()
        log.info("serving", extra={
            "address": self.address, "tls": self.tls_identity is not None, "peer_address": self.peer_address,
            "member": self.node.member, "metrics_address": self.metrics_address,
        })

    def set_peers(self, peers: list[str]) -> None:
        """Replace the configured peers (the federation's endpoints still count); the sync
        engine picks them up within a few seconds, or at once with ``sync.trigger``."""
        self._configured_peers = list(peers)
        if self.sync is not None:
            self.sync.refresh_peers()

    def _push(self, wakeup: WakeSocket | None) -> None:
        """Push every checkpoint and federation version this node accepted (in this process
        or another over the same data directory: `counterpart-node publish` is one) to the
        peers that watch it. Woken by every such commit (``directory_server.wake``), so a
        push waits on no interval. Commits by processes on other machines over one PostgreSQL
        database reach it too: the Store's listener (``storage.pgnotify``) calls the commit
        watchers, and the node's watcher pokes this socket. ``push_poll`` is only a safety net
        for a data directory where the socket cannot be bound, or notifications lost while
        the listening connection was down."""
        seen = self.node.store.checkpoints()
        version = self.node.federation().version
        try:
            while not self._stop.is_set():
                if wakeup is not None:
                    wakeup.wait(self._push_poll)
                else:
                    self._stop.wait(self._push_poll)
                if self._stop.is_set():
                    return
                try:
                    if self.node.refresh_federation():
                        version = self.node.federation().version
                        self.broadcaster.publish(replication_service_pb2.WatchCheckpointsResponse(federation_version=version))
                    current = self.node.store.checkpoints()
                except Exception:  # the database may be briefly unavailable; the next wake-up or poll tries again
                    log.exception("push failed")
                    continue
                for member, envelope in sorted(current.items()):
                    if seen.get(member) != envelope:
                        self.broadcaster.publish(
                            replication_service_pb2.WatchCheckpointsResponse(signed_checkpoint=envelope, federation_version=version)
                        )
                seen = current
        finally:
            if wakeup is not None:
                wakeup.close()

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
        if self._listener is not None:
            self._listener.stop()
        if self._wakeup is not None:
            self._wakeup.stop()
        if self.sync is not None:
            self.sync.stop()
        self.broadcaster.close()
        self.health.enter_graceful_shutdown()
        self.server.stop(grace).wait()
        if self.metrics is not None:
            self.metrics.close()
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


def _bind(address: str, add_port: Callable[[str], int], what: str = "") -> int:
    """Add a listening port to the server, or raise naming why it cannot listen."""
    try:
        port = add_port(address)
    except RuntimeError:  # grpcio raises "Failed to bind to address ..." where older ones returned 0
        port = 0
    if port == 0:
        raise listen_error(address, what)
    return port
