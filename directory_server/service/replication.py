"""counterpart.v1.ReplicationService: serves every member's verified log to peers (relay).

Thin: it reads the Store and encodes; the only logic is cutting ranges into batches that
stay within the federation's message and batch limits, and withholding members-only entries
from callers that may not see them (``domain.redaction.serve_whole``).
"""

from __future__ import annotations

import contextlib
import threading
from collections import deque
from collections.abc import Callable, Iterator

import grpc

from counterpart.v1 import replication_service_pb2 as rs
from counterpart.v1 import replication_service_pb2_grpc as rs_grpc
from counterpart_core import redaction, replication
from counterpart_core.bounds import INT64_MAX
from counterpart_core.errors import InvalidArgumentError, ResourceExhaustedError
from counterpart_core.names import check_member_code
from directory_server.node import Node
from directory_server.service import identity
from directory_server.service.errors import handle_errors, handle_stream_errors

BATCH_OVERHEAD = 1024  # bytes kept free in each message for its own framing
READ_CHUNK = 1000  # entries read from the store at a time


class Broadcaster:
    """Fans out pushes to every WatchCheckpoints stream: a ring of recent events; each
    watcher follows it at its own pace and skips what fell off (pushes are only hints)."""

    def __init__(self, keep: int = 1024) -> None:
        self._events: deque[tuple[int, rs.WatchCheckpointsResponse]] = deque(maxlen=keep)
        self._generation = 0
        self._cond = threading.Condition()
        self._closed = False

    def publish(self, event: rs.WatchCheckpointsResponse) -> None:
        with self._cond:
            self._generation += 1
            self._events.append((self._generation, event))
            self._cond.notify_all()

    def wake(self) -> None:
        """Wake every watcher to look whether its caller is still there (a call ended)."""
        with self._cond:
            self._cond.notify_all()

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def follow(self, active: Callable[[], bool], poll: float = 60.0) -> Iterator[rs.WatchCheckpointsResponse]:
        """Events from now on, while ``active()``. The caller wakes the watchers with
        ``wake`` when a call ends; ``poll`` is only a safety net, not a latency: a
        watcher that waits costs no CPU."""
        with self._cond:
            seen = self._generation
        while True:
            with self._cond:
                if not self._closed and self._generation == seen and active():
                    self._cond.wait(timeout=poll)
                if self._closed:
                    return
                fresh = [e for g, e in self._events if g > seen]
                seen = self._generation
            if not active():
                return
            yield from fresh


class ReplicationServicer(rs_grpc.ReplicationServiceServicer):
    def __init__(self, node: Node, broadcaster: Broadcaster, watch_limit: int = 64) -> None:
        self.node = node
        self.broadcaster = broadcaster
        self._watchers = threading.BoundedSemaphore(watch_limit)

    @handle_errors
    def GetCheckpoints(self, request: rs.GetCheckpointsRequest, context: grpc.ServicerContext) -> rs.GetCheckpointsResponse:
        checkpoints = self.node.store.checkpoints()
        federation = self.node.federation()
        # only current members: a removed member's checkpoint would make the reply hold more
        # checkpoints than the federation has members, which peers refuse whole
        return rs.GetCheckpointsResponse(
            signed_checkpoints=[checkpoints[m] for m in sorted(checkpoints) if federation.member(m) is not None],
            federation_version=federation.version,
        )

    def GetEntries(self, request: rs.GetEntriesRequest, context: grpc.ServicerContext) -> Iterator[rs.GetEntriesResponse]:
        # Who the caller is, read as the call starts: the stream below runs lazily, as gRPC
        # pulls each message, and must not depend on the caller still being set by then.
        caller = identity.current()
        # members-only entries whole to member nodes and to signed-in users of a member,
        # who may read every members-only version anyway (ListRecordRevisions) and keep an
        # offline copy of them (`counterpart mirror`); README "Where the code differs"
        member_node = caller.sees_members_only

        def entries(servicer: ReplicationServicer, request: rs.GetEntriesRequest, context: grpc.ServicerContext) -> Iterator[rs.GetEntriesResponse]:
            return servicer._entries(request, context, member_node, caller.describe())

        entries.__name__ = "GetEntries"
        stream: Iterator[rs.GetEntriesResponse] = handle_stream_errors(entries)(self, request, context)
        return stream

    def _entries(
        self, request: rs.GetEntriesRequest, context: grpc.ServicerContext, member_node: bool, caller: str
    ) -> Iterator[rs.GetEntriesResponse]:
        """The range, each members-only entry whole only to a member node or a signed-in
        user and withheld (an empty item, its leaf hash in ``withheld_leaf_hashes``) to
        anyone else; an entry this node holds withheld is always served withheld."""
        check_member_code(request.member)
        if request.start_seq < 1 or request.end_seq < request.start_seq:
            raise InvalidArgumentError(
                f"start_seq {request.start_seq} and end_seq {request.end_seq} do not form a range starting at 1 or later",
                reason="INVALID_RANGE",
            )
        row = self.node.store.checkpoint_row(request.member)
        end = min(request.end_seq, row.size if row else 0)  # only what a verified checkpoint covers
        limits = self.node.federation().limits
        for batch in replication.batches(
            self._read(request.member, request.start_seq, end, context, member_node, caller),
            limits.max_message_bytes - BATCH_OVERHEAD, limits.max_batch_entries,
        ):
            yield rs.GetEntriesResponse(
                start_seq=batch.start, signed_entries=batch.envelopes, withheld_leaf_hashes=batch.withheld
            )

    def _read(
        self, member: str, start: int, end: int, context: grpc.ServicerContext, member_node: bool, caller: str
    ) -> Iterator[tuple[int, bytes, bytes]]:
        """(seq, envelope, b"") or (seq, b"", leaf hash) for a withheld one, READ_CHUNK
        entries at a time from the store, while the caller listens. Members-only entries
        served whole (to member nodes) are written to the audit log, a chunk at a time."""
        for first in range(start, end + 1, READ_CHUNK):
            if not context.is_active():
                return
            served: list[str] = []
            for entry in self.node.store.log_rows(member, first, min(end, first + READ_CHUNK - 1)):
                if redaction.serve_whole(entry.restricted, entry.withheld, member_node):
                    if entry.restricted:
                        served.append(f"{entry.name}@{entry.seq}")
                    yield entry.seq, entry.envelope, b""
                else:
                    yield entry.seq, b"", entry.leaf_hash
            self.node.store.audit(caller, "GetEntries", served, self.node.clock())

    @handle_errors
    def GetConsistencyProof(
        self, request: rs.GetConsistencyProofRequest, context: grpc.ServicerContext
    ) -> rs.GetConsistencyProofResponse:
        check_member_code(request.member)
        row = self.node.store.checkpoint_row(request.member)
        held = row.size if row else 0
        if not 0 < request.first_size <= request.second_size <= held:
            raise InvalidArgumentError(
                f"sizes {request.first_size} and {request.second_size} must satisfy 0 < first <= second <= {held}, "
                f"the size of {request.member}'s log this node holds",
                reason="INVALID_RANGE",
            )
        # O(log n + change): from the stored frontier nearest below first_size
        proof = self.node.store.consistency_proof(request.member, request.first_size, request.second_size)
        return rs.GetConsistencyProofResponse(hashes=proof)

    @handle_stream_errors
    def WatchCheckpoints(
        self, request: rs.WatchCheckpointsRequest, context: grpc.ServicerContext
    ) -> Iterator[rs.WatchCheckpointsResponse]:
        # each watcher holds a server thread for as long as it follows
        if not self._watchers.acquire(blocking=False):
            raise ResourceExhaustedError("too many peers are watching this node; try again later", reason="TOO_MANY_WATCHERS")
        try:
            context.add_callback(self.broadcaster.wake)  # the call ended: its thread is given back at once
            with contextlib.suppress(ValueError):  # already sent (by an interceptor): as good
                context.send_initial_metadata(())  # the watcher knows at once that it was accepted
            yield from self.broadcaster.follow(context.is_active)
        finally:
            self._watchers.release()

    @handle_errors
    def GetFederation(self, request: rs.GetFederationRequest, context: grpc.ServicerContext) -> rs.GetFederationResponse:
        # uint64 on the wire, int64 in SQL: beyond it no version can be stored, so the chain is empty
        if request.from_version > INT64_MAX:
            return rs.GetFederationResponse()
        return rs.GetFederationResponse(signed_documents=self.node.store.federation_chain(max(1, request.from_version)))
