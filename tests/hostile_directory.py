"""A hostile directory node for tests: a real gRPC DirectoryService that answers from a real
node's data, altered (issue 10 item 3).

It forwards every call it does not tamper with to the honest node's own server, so what it
sends is genuine (valid signatures, valid inclusion proofs) except for what each ``mode``
changes:

- ``superseded``: GetRule serves an older version of the rule as current, with that entry's
  genuine signature and inclusion proof, and the honest state proof (which names the latest);
- ``superseded-forged-state``: the same, with a state leaf rewritten to claim the old version;
- ``deny``: GetRule answers NOT_FOUND RECORD_NOT_FOUND for an existing rule, without proof;
- ``deny-forged``: the same with an AbsenceProof built from genuine state leaves that are
  not neighbours (the leaves before and after the name);
- ``omit-rule``: FindCounterpart drops the requested member's rule and its proof.
"""

from __future__ import annotations

from concurrent import futures

import grpc

from counterpart.v1 import directory_service_pb2 as ds
from counterpart.v1 import directory_service_pb2_grpc as ds_grpc
from counterpart.v1 import log_pb2
from counterpart_core import merkle, signing, state
from counterpart_core.errors import NotFoundError
from counterpart_core.query import ProofTree
from directory_server.node import Node
from directory_server.service.errors import to_status


class HostileDirectory(ds_grpc.DirectoryServiceServicer):
    """DirectoryService that lies about one thing at a time (see the module docstring)."""

    def __init__(self, node: Node, upstream: grpc.Channel) -> None:
        self.node = node
        self.stub = ds_grpc.DirectoryServiceStub(upstream)
        self.mode = ""

    # --- honest forwarding ---------------------------------------------------------------

    def GetMember(self, request: ds.GetMemberRequest, context: grpc.ServicerContext) -> ds.GetMemberResponse:
        return self.stub.GetMember(request)

    def GetAuthority(self, request: ds.GetAuthorityRequest, context: grpc.ServicerContext) -> ds.GetAuthorityResponse:
        return self.stub.GetAuthority(request)

    # --- lies ------------------------------------------------------------------------------

    def GetRule(self, request: ds.GetRuleRequest, context: grpc.ServicerContext) -> ds.GetRuleResponse:
        if self.mode in ("deny", "deny-forged"):
            details = [self._forged_absence(request.name)] if self.mode == "deny-forged" else []
            context.abort_with_status(
                to_status(NotFoundError(f"{request.name} does not exist", reason="RECORD_NOT_FOUND", details=details))
            )
        answer = self.stub.GetRule(request)
        if self.mode.startswith("superseded"):
            self._serve_older(answer)
        return answer

    def FindCounterpart(
        self, request: ds.FindCounterpartRequest, context: grpc.ServicerContext
    ) -> ds.FindCounterpartResponse:
        answer = self.stub.FindCounterpart(request)
        if self.mode == "omit-rule" and answer.HasField("rule"):
            rule = answer.rule.name
            answer.ClearField("rule")
            kept = [p for p in answer.proofs if p.name != rule]
            del answer.proofs[:]
            answer.proofs.extend(kept)
        if self.mode == "superseded-beside-latest" and answer.HasField("rule"):
            # the rule's oldest version shown, the genuine latest one proven beside it, as a
            # scheduled version would be: but the latest is already in effect
            genuine = next(p for p in answer.proofs if p.name == answer.rule.name)
            older = ds.RecordProof()
            older.CopyFrom(genuine)
            answer.rule.CopyFrom(self._older(older).rule)
            answer.proofs.append(older)
        return answer

    # --- building the lies from genuine material --------------------------------------------

    def _serve_older(self, answer: ds.GetRuleResponse) -> None:
        """Replace the rule by its oldest version, with that entry's genuine inclusion proof."""
        entry = self._older(answer.proof)
        answer.rule.CopyFrom(entry.rule)
        if self.mode == "superseded-forged-state":
            leaf = answer.proof.state.leaves[0]
            leaf.seq = answer.proof.leaf_index + 1
            leaf.entry_hash = merkle.leaf_hash(answer.proof.signed_entry)

    def _older(self, proof: ds.RecordProof) -> log_pb2.Entry:
        """Point ``proof`` at the oldest version of its record (genuine entry and inclusion
        path, same tree); return that entry."""
        member = proof.name.split("/")[1]
        oldest = self.node.store.revisions(proof.name, None, 1000)[-1]
        envelope = bytes(oldest.envelope)
        proof.signed_entry = envelope
        proof.leaf_index = oldest.seq - 1
        del proof.inclusion_path[:]
        tree = ProofTree(self.node.store.leaf_hashes(member, upto=proof.tree_size))
        proof.inclusion_path.extend(tree.inclusion_path(oldest.seq - 1))
        return log_pb2.Entry.FromString(signing.parse_envelope(envelope).payload)

    def _forged_absence(self, name: str) -> ds.AbsenceProof:
        """Genuine leaves of the public state tree, the ones before and after ``name``: each
        verifies, but they are not neighbours (``name`` lies between them)."""
        member = name.split("/")[1]
        _, public = state.state_leaves(self.node.store.current_entries(member))
        tree = state.StateTree(public)
        before = tree.prove(name[:-1] + chr(ord(name[-1]) - 1) + "\U0010ffff")[0]
        after = tree.prove(name + "\x00")[-1]
        proof = ds.StateProof(name=name, scope=ds.STATE_SCOPE_PUBLIC, tree_size=tree.size)
        for p in (before, after):
            proof.leaves.append(ds.StateLeaf(
                name=p.leaf.name, seq=p.leaf.seq, entry_hash=p.leaf.entry_hash, leaf_index=p.index,
                inclusion_path=list(p.path),
            ))
        provenance = self.stub.GetMember(ds.GetMemberRequest(name=f"members/{member}")).member.provenance
        return ds.AbsenceProof(state=proof, provenance=provenance)


class HostileDirectoryServer:
    """The hostile servicer on a free loopback port."""

    def __init__(self, node: Node, upstream: grpc.Channel) -> None:
        self.servicer = HostileDirectory(node, upstream)
        self._server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        ds_grpc.add_DirectoryServiceServicer_to_server(self.servicer, self._server)
        port = self._server.add_insecure_port("127.0.0.1:0")
        self.address = f"127.0.0.1:{port}"
        self._server.start()

    def stop(self) -> None:
        self._server.stop(grace=0)
