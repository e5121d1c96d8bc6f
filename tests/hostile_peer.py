"""A hostile ReplicationService peer for the sync tests: a real gRPC server on loopback that
serves whatever a test tells it to, built from a real node's signed data.

By default it is honest: it serves the source node's checkpoints, entries, consistency
proofs and federation chain, members-only entries withheld (as a node serves a caller that is
not a member node) unless ``member_node`` is set. A test replaces one of ``checkpoints``,
``entries``, ``proof`` or ``documents`` (or a whole log, ``serve_log``) to tamper with what it
sends, and reads ``calls`` (and ``times``) to see what the node under test asked for and when.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent import futures

import grpc

from counterpart.v1 import log_pb2
from counterpart.v1 import replication_service_pb2 as rs
from counterpart.v1 import replication_service_pb2_grpc as rs_grpc
from counterpart_core import merkle, redaction, replication
from directory_server.node import Node

Batches = Callable[[rs.GetEntriesRequest, grpc.ServicerContext], Iterable[rs.GetEntriesResponse]]
SEND_LIMIT = 64 * 1024 * 1024  # far above any federation's message limit: the receiver must refuse


class HostilePeer(rs_grpc.ReplicationServiceServicer):
    """Serves ``source``'s log, or what the test put in its place."""

    def __init__(self, source: Node, member: str) -> None:
        self.source = source
        self.member = member
        self.checkpoints: list[bytes] | None = None  # None: the source's current checkpoints
        self.entries: Batches | None = None  # None: the requested range, honestly
        self.proof: Callable[[rs.GetConsistencyProofRequest], list[bytes]] | None = None  # None: honest
        self.federation_version: int | None = None  # None: the source's
        self.documents: list[bytes] | None = None  # None: the source's federation chain
        self.pushes: list[bytes] | None = None  # None: pushes nothing; else these, on each watch stream
        self.member_node = False  # True: serve members-only entries whole, as to a member node
        self.calls: list[tuple[str, int, int]] = []  # (method, first, second) as asked
        self.times: list[tuple[str, float]] = []  # (method, time.monotonic()) of each call
        self._lock = threading.Lock()
        self._server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=8),
            options=[("grpc.max_send_message_length", SEND_LIMIT), ("grpc.max_receive_message_length", SEND_LIMIT)],
        )
        rs_grpc.add_ReplicationServiceServicer_to_server(self, self._server)
        port = self._server.add_insecure_port("127.0.0.1:0")
        assert port, "no free loopback port"
        self.address = f"127.0.0.1:{port}"

    # --- lifecycle ----------------------------------------------------------------------

    def start(self) -> HostilePeer:
        self._server.start()
        return self

    def stop(self) -> None:
        self._server.stop(grace=0).wait()

    # --- what to serve ------------------------------------------------------------------

    def envelopes(self) -> list[bytes]:
        """The source's entries of the member, exactly as signed, seq 1 first (all whole)."""
        return [env for _, env in self.source.store.envelopes(self.member)]

    def withheld_view(self, start: int = 1, end: int | None = None) -> rs.GetEntriesResponse:
        """The source's entries of ``start..end`` as one batch the way a node serves them to a
        caller that is not a member node: members-only ones withheld, as their leaf hash."""
        batch = rs.GetEntriesResponse(start_seq=start)
        for row in self.source.store.log_rows(self.member, start, end):
            if redaction.serve_whole(row.restricted, row.withheld, False):
                batch.signed_entries.append(row.envelope)
            else:
                batch.signed_entries.append(b"")
                batch.withheld_leaf_hashes[row.seq] = row.leaf_hash
        return batch

    def serve_batches(self, batches: Sequence[tuple[int, Sequence[bytes]]]) -> None:
        """Answer every GetEntries with these (start_seq, envelopes) batches, whatever was asked."""
        fixed = [rs.GetEntriesResponse(start_seq=start, signed_entries=list(envs)) for start, envs in batches]
        self.entries = lambda request, context: iter(fixed)

    def serve_log(self, envelopes: Sequence[bytes]) -> None:
        """Serve this log of the member (ranges and consistency proofs cut from it, honestly
        framed) in place of the source's: for logs no honest node would hold."""
        log = list(envelopes)
        self.entries = lambda request, context: iter(
            [rs.GetEntriesResponse(start_seq=request.start_seq, signed_entries=log[request.start_seq - 1 : request.end_seq])]
        )
        self.proof = lambda request: merkle.consistency_proof(
            [merkle.leaf_hash(e) for e in log[: request.second_size]], request.first_size
        )

    def asked(self, method: str) -> list[tuple[int, int]]:
        with self._lock:
            return [(a, b) for m, a, b in self.calls if m == method]

    def _note(self, method: str, first: int = 0, second: int = 0) -> None:
        with self._lock:
            self.calls.append((method, first, second))
            self.times.append((method, time.monotonic()))

    # --- ReplicationService -------------------------------------------------------------

    def GetCheckpoints(self, request: rs.GetCheckpointsRequest, context: grpc.ServicerContext) -> rs.GetCheckpointsResponse:
        self._note("GetCheckpoints")
        checkpoints = self.checkpoints
        if checkpoints is None:
            held = self.source.store.checkpoints()
            checkpoints = [held[m] for m in sorted(held)]
        version = self.federation_version if self.federation_version is not None else self.source.federation().version
        return rs.GetCheckpointsResponse(signed_checkpoints=checkpoints, federation_version=version)

    def GetEntries(self, request: rs.GetEntriesRequest, context: grpc.ServicerContext) -> Iterator[rs.GetEntriesResponse]:
        self._note("GetEntries", request.start_seq, request.end_seq)
        if self.entries is not None:
            yield from self.entries(request, context)
            return
        rows = [
            (row.seq, row.envelope, b"") if redaction.serve_whole(row.restricted, row.withheld, self.member_node)
            else (row.seq, b"", row.leaf_hash)
            for row in self.source.store.log_rows(request.member, request.start_seq, request.end_seq)
        ]
        for batch in replication.batches(rows, SEND_LIMIT, 1000):
            yield rs.GetEntriesResponse(start_seq=batch.start, signed_entries=batch.envelopes, withheld_leaf_hashes=batch.withheld)

    def GetConsistencyProof(
        self, request: rs.GetConsistencyProofRequest, context: grpc.ServicerContext
    ) -> rs.GetConsistencyProofResponse:
        self._note("GetConsistencyProof", request.first_size, request.second_size)
        if self.proof is not None:
            return rs.GetConsistencyProofResponse(hashes=self.proof(request))
        hashes = self.source.store.leaf_hashes(request.member, upto=request.second_size)
        return rs.GetConsistencyProofResponse(hashes=merkle.consistency_proof(hashes, request.first_size))

    def WatchCheckpoints(
        self, request: rs.WatchCheckpointsRequest, context: grpc.ServicerContext
    ) -> Iterator[rs.WatchCheckpointsResponse]:
        self._note("WatchCheckpoints")
        if self.pushes is None:
            return iter(())  # pushes nothing: a hostile peer need not help
        return self._flood(list(self.pushes), context)

    @staticmethod
    def _flood(pushes: list[bytes], context: grpc.ServicerContext) -> Iterator[rs.WatchCheckpointsResponse]:
        for envelope in pushes:
            yield rs.WatchCheckpointsResponse(signed_checkpoint=envelope)
        while context.is_active():  # then keeps the stream open, as a watcher expects
            time.sleep(0.05)

    def GetFederation(self, request: rs.GetFederationRequest, context: grpc.ServicerContext) -> rs.GetFederationResponse:
        self._note("GetFederation", request.from_version)
        if self.documents is not None:
            return rs.GetFederationResponse(signed_documents=self.documents)
        return rs.GetFederationResponse(signed_documents=self.source.store.federation_chain(max(1, request.from_version)))


# --- tampering ------------------------------------------------------------------------------


def forge_signature(envelope: bytes) -> bytes:
    """The same envelope with every signature replaced by 64 bytes that are not a signature
    (the key ids stay: the forgery claims the member's key)."""
    env = log_pb2.Envelope()
    env.ParseFromString(envelope)
    for s in env.signatures:
        s.sig = bytes((b ^ 0x5A) for b in s.sig)
    return env.SerializeToString(deterministic=True)


def flip_payload_byte(envelope: bytes) -> bytes:
    """The envelope with one bit flipped in the middle of its signed payload; the framing
    (lengths, payload type, signatures) is untouched, so it still parses."""
    env = log_pb2.Envelope()
    env.ParseFromString(envelope)
    at = envelope.find(env.payload)
    assert at > 0 and envelope.count(env.payload) == 1
    i = at + len(env.payload) // 2
    return envelope[:i] + bytes([envelope[i] ^ 0x01]) + envelope[i + 1 :]
