"""Baseline for bench_find.py: a gRPC server that does nothing.

A Python gRPC server built like the node's (``grpc.server`` over a ThreadPoolExecutor of
4 workers by default, as the node, insecure port on loopback) with one generic handler that answers every unary
method -- whatever its name -- with an empty message. Requests and responses pass as raw
bytes, so nothing is parsed or serialized. It also serves grpc.health.v1 so the benchmark
can wait for SERVING the same way as for the node.

What the node's figures add on top of this server's is the cost of FindCounterpart
itself (lookups, proofs, protobuf encoding) rather than of gRPC, the thread pool and the
client loop, which both share.

Usage: python bench/empty_server.py --listen 127.0.0.1:PORT [--workers 4]
Stops on SIGTERM or SIGINT.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from concurrent import futures
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc


def _empty(request: bytes, context: grpc.ServicerContext) -> bytes:
    return b""


class EmptyHandler(grpc.GenericRpcHandler):
    """Answers any unary-unary method with an empty response."""

    def __init__(self) -> None:
        self._handler: grpc.RpcMethodHandler[bytes, bytes] = grpc.unary_unary_rpc_method_handler(
            _empty, request_deserializer=None, response_serializer=None
        )

    def service(
        self, handler_call_details: grpc.HandlerCallDetails
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        if handler_call_details.method.startswith("/grpc.health.v1.Health/"):
            return None  # left to the health servicer
        return self._handler


def serve(listen: str, workers: int) -> int:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=workers))
    health_servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    server.add_generic_rpc_handlers((EmptyHandler(),))
    if server.add_insecure_port(listen) == 0:
        print(f"cannot listen on {listen}", file=sys.stderr)
        return 1
    server.start()
    health_servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    done = threading.Event()

    def stop(_signum: int, _frame: Any) -> None:
        done.set()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    done.wait()
    server.stop(1.0).wait(5.0)
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="An empty gRPC server (benchmark baseline).")
    p.add_argument("--listen", required=True, help="host:port, e.g. 127.0.0.1:7799")
    p.add_argument("--workers", type=int, default=4, help="thread pool size (the node's default is 4)")
    a = p.parse_args(argv)
    return serve(a.listen, a.workers)


if __name__ == "__main__":
    sys.exit(main())
