"""Prometheus metrics of a serving node, over plain HTTP on a port of their own (DESIGN §9).

Counted as they happen, in this process: gRPC calls (``MetricsInterceptor``, outermost in the
server's interceptor chain, so calls refused by the guard or the authenticator count too)
and sync passes (``NodeMetrics.observe_sync``, fed every ``PeerReport`` the sync engine
makes). Read from the store at each scrape (``StoreCollector``), so they hold for the node
whichever process changed it: per member, the log size, the checkpoint's age, whether it is
stale and equivocation evidence; the members-only records served (the access audit); the
federation document's version and expiry.

Each ``NodeMetrics`` has a registry of its own: several nodes in one process (the tests) do
not mix their figures. Labels take only bounded values: methods the server implements, status
codes, member codes, peers the node syncs from, rejection reasons.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any
from wsgiref.simple_server import WSGIServer

import grpc
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Histogram,
    disable_created_metrics,
    start_http_server,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.gc_collector import GCCollector
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector

from counterpart_core.timeutil import from_timestamp
from directory_server.node import Node
from directory_server.service.interceptors import Behaviour, Wrapped, rewrap, status_name
from directory_server.sync import PeerReport

log = logging.getLogger("counterpart.metrics")

# seconds; lookups answer in milliseconds, range pulls and WatchCheckpoints take much longer
RPC_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 120.0)


class NodeMetrics:
    """The metrics of one node, and the HTTP endpoint that serves them."""

    def __init__(self, node: Node) -> None:
        disable_created_metrics()  # type: ignore[no-untyped-call]  # no `_created` series beside every counter: they double what is scraped
        self.registry = CollectorRegistry()
        r = self.registry
        self.rpc_requests = Counter(
            "counterpart_rpc_requests", "gRPC calls handled, by method and status code", ["method", "code"], registry=r,
        )
        self.rpc_duration = Histogram(
            "counterpart_rpc_duration_seconds", "Time to handle a gRPC call (a streaming call: until its stream ends), "
            "by method and status code", ["method", "code"], buckets=RPC_BUCKETS, registry=r,
        )
        self.sync_passes = Counter(
            "counterpart_sync_passes", "Sync passes against a peer, by outcome: ok; rejected (something the peer "
            "offered failed verification); error (unreachable, or it answered with an error)", ["peer", "outcome"],
            registry=r,
        )
        self.sync_entries = Counter(
            "counterpart_sync_entries_pulled", "Log entries pulled from peers, verified and stored, by member",
            ["member"], registry=r,
        )
        self.sync_rejections = Counter(
            "counterpart_sync_rejections", "What peers offered that was refused, by reason and peer "
            "(OWN_LOG_FROM_PEER is an alarm)", ["reason", "peer"], registry=r,
        )
        self.sync_equivocations = Counter(
            "counterpart_sync_equivocations", "Checkpoints a peer showed that are inconsistent with one the member "
            "signed before, by member and peer", ["member", "peer"], registry=r,
        )
        r.register(StoreCollector(node))
        ProcessCollector(registry=r)
        GCCollector(registry=r)
        self.interceptor = MetricsInterceptor(self)
        self._http: WSGIServer | None = None

    def observe_sync(self, report: PeerReport) -> None:
        """Count one sync pass (the sync engine's observer)."""
        outcome = "error" if report.error else ("rejected" if report.rejected else "ok")
        self.sync_passes.labels(report.peer, outcome).inc()
        for member, count in report.pulled.items():
            self.sync_entries.labels(member).inc(count)
        for _member, reason, _message in report.rejected:
            self.sync_rejections.labels(reason, report.peer).inc()
        for member in report.equivocations:
            self.sync_equivocations.labels(member, report.peer).inc()

    def observe_rpc(self, method: str, code: str, seconds: float) -> None:
        self.rpc_requests.labels(method, code).inc()
        self.rpc_duration.labels(method, code).observe(seconds)

    def listen(self, address: str) -> str:
        """Serve the metrics on ``address`` (host:port; port 0 picks one) at /metrics; return
        the address bound. Raises OSError when it cannot listen."""
        host, _, port = address.rpartition(":")
        self._http, _thread = start_http_server(int(port), addr=host.strip("[]"), registry=self.registry)
        bound = self._http.server_address[1]
        return f"{host}:{bound}"

    def close(self) -> None:
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
            self._http = None


class StoreCollector(Collector):
    """Figures read from the store at each scrape: true whichever process changed the node."""

    def __init__(self, node: Node) -> None:
        self.node = node
        self._lock = threading.Lock()  # one scrape at a time reads the store

    def collect(self) -> Iterable[Metric]:
        with self._lock:
            try:
                metrics = list(self._read())
            except Exception:  # the database may be briefly unavailable: say so, do not fail the scrape
                log.exception("metrics: cannot read the store")
                metrics = []
            up = GaugeMetricFamily("counterpart_store_up", "1 when the last scrape could read the node's store")
            up.add_metric([], 1 if metrics else 0)
        return [up, *metrics]

    def _read(self) -> Iterator[Metric]:
        node = self.node
        federation = node.federation()
        doc = federation.document
        version = GaugeMetricFamily("counterpart_federation_version", "Version of the federation document the node "
                                    "follows", labels=["federation"])
        version.add_metric([doc.federation_id], doc.version)
        expiry = GaugeMetricFamily("counterpart_federation_expiry_timestamp_seconds", "When the federation document "
                                   "expires (Unix time); ask the secretariat for the next version before",
                                   labels=["federation"])
        expiry.add_metric([doc.federation_id], from_timestamp(doc.expire_time).timestamp())
        served = CounterMetricFamily("counterpart_members_only_records_served", "Members-only records served, "
                                     "from the access audit (`counterpart-node access audit`)")
        served.add_metric([], node.store.audit_count())
        size = GaugeMetricFamily("counterpart_member_log_entries", "Entries of the member's log the node holds",
                                 labels=["member"])
        withheld = GaugeMetricFamily("counterpart_member_withheld_entries", "Entries of the member's log held as "
                                     "their leaf hash only (members-only, not given to this node)", labels=["member"])
        age = GaugeMetricFamily("counterpart_member_checkpoint_age_seconds", "Age of the member's checkpoint the node "
                                "holds", labels=["member"])
        stale = GaugeMetricFamily("counterpart_member_checkpoint_stale", "1 when the member's checkpoint the node "
                                  "holds has expired (its origin has not re-signed it in time)", labels=["member"])
        evidence = GaugeMetricFamily("counterpart_member_equivocations", "Pairs of inconsistent checkpoints of the "
                                     "member kept as evidence", labels=["member"])
        for s in node.member_statuses():
            if not s.member:  # rejections about the federation document itself
                continue
            size.add_metric([s.member], s.log_size)
            withheld.add_metric([s.member], s.withheld)
            stale.add_metric([s.member], 1 if s.stale else 0)
            evidence.add_metric([s.member], len(s.equivocations))
            if s.checkpoint_age_seconds is not None:
                age.add_metric([s.member], s.checkpoint_age_seconds)
        yield from (version, expiry, served, size, withheld, age, stale, evidence)


class MetricsInterceptor(grpc.ServerInterceptor):
    """Counts and times every call to a method the server implements, by method and status."""

    def __init__(self, metrics: NodeMetrics) -> None:
        self.metrics = metrics
        self._wrapped = Wrapped()

    def intercept_service(self, continuation: Callable[[Any], Any], details: grpc.HandlerCallDetails) -> Any:
        handler = continuation(details)
        if handler is None:  # unknown method: gRPC answers UNIMPLEMENTED; not a label an attacker can grow
            return None
        return self._wrapped.get(details.method, handler, lambda: self._timing(handler, details.method.lstrip("/")))

    def _timing(self, handler: Any, method: str) -> Any:
        observe = self.metrics.observe_rpc

        def unary(inner: Behaviour) -> Behaviour:
            def timed(request: Any, context: grpc.ServicerContext) -> Any:
                start = time.perf_counter()
                code = "OK"
                try:
                    response = inner(request, context)
                    code = status_name(context, "OK")
                    return response
                except Exception:
                    code = status_name(context, "UNKNOWN")
                    raise
                finally:
                    observe(method, code, time.perf_counter() - start)

            return timed

        def streaming(inner: Behaviour) -> Behaviour:
            def timed(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
                start = time.perf_counter()
                code = "OK"
                try:
                    yield from inner(request, context)
                    code = status_name(context, "OK")
                except GeneratorExit:  # the stream was closed before its end: the client went away
                    code = "CANCELLED"
                    raise
                except Exception:
                    code = status_name(context, "UNKNOWN")
                    raise
                finally:
                    observe(method, code, time.perf_counter() - start)

            return timed

        return rewrap(handler, unary_unary=unary, unary_stream=streaming, stream_unary=unary, stream_stream=streaming)
