"""Answers to lookups from the node's verified state, each with its proofs (DESIGN §6).

The gRPC servicer only decodes requests and encodes these answers; every decision about
what matches and how it ranks is made here or in the pure helpers of the domain.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping, MutableSequence, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Protocol, TypeVar

from counterpart.v1 import directory_service_pb2 as ds
from counterpart.v1 import federation_pb2, log_pb2, records_pb2
from counterpart_core import bounds, index, names, places, signing, state
from counterpart_core.access import ANONYMOUS, Caller
from counterpart_core.errors import ConflictError, InvalidArgumentError, NotFoundError, quote
from counterpart_core.federation import Federation
from counterpart_core.index import fold
from counterpart_core.query import (
    decode_page_token,
    encode_page_token,
    page_size,
    parse_filter,
)
from counterpart_core.records import Record
from counterpart_core.timeutil import from_timestamp, utcnow
from directory_server.memberindex import (
    ANSWER_BYTES,
    LEAF_BYTES,
    PROOF_BYTES,
    STATE_BYTES,
    CompactTree,
    Indexes,
    MemberIndex,
    PlaceNames,
)
from directory_server.storage.store import Generation, RecordKey, Store

log = logging.getLogger("counterpart.access")
logger = logging.getLogger("counterpart.lookup")
MAX_PLACE_TERMS = 16  # names of a place a search also looks for

_P = TypeVar("_P")
_KIND_CLASS: dict[str, type[Record]] = {
    "authority": records_pb2.Authority,
    "contact": records_pb2.Contact,
    "rule": records_pb2.Rule,
    "treaty": records_pb2.Treaty,
}
_SCOPE_RANK = {
    federation_pb2.INSTRUMENT_SCOPE_BILATERAL: 0,
    federation_pb2.INSTRUMENT_SCOPE_REGIONAL: 1,
    federation_pb2.INSTRUMENT_SCOPE_UNIVERSAL: 2,
}


class RowLike(Protocol):
    """A current record's row (``RecordRow``, or anything with its fields)."""

    @property
    def name(self) -> str: ...
    @property
    def member(self) -> str: ...
    @property
    def kind(self) -> str: ...
    @property
    def seq(self) -> int: ...
    @property
    def public(self) -> bool: ...


@dataclass
class Loaded:
    """A current record with what proves it."""

    name: str
    member: str
    record: Record
    proof: ds.RecordProof


@dataclass
class Evidence:
    """Collects the proofs and provenance an answer needs, once per record / member."""

    proofs: dict[str, ds.RecordProof] = field(default_factory=dict)
    records: dict[str, Record] = field(default_factory=dict)
    members: set[str] = field(default_factory=set)

    def add(self, loaded: Loaded) -> None:
        self.proofs[loaded.name] = loaded.proof
        self.records[loaded.name] = loaded.record
        self.members.add(loaded.member)


@dataclass(frozen=True)
class MemberState:
    """A member's state trees at one checkpoint (``counterpart_core.state``).

    ``everything`` is None when this node holds some of the member's entries withheld: it
    cannot tell what they change, so it proves against the public tree only.
    """

    public: state.StateTree
    everything: state.StateTree | None

    def proof(self, name: str, caller: Caller) -> ds.StateProof:
        """Proof of the latest version of ``name``, or of its absence, in the tree the
        caller may see: the whole state for those who may see members-only records (when
        this node can prove it), the public one otherwise, whose leaves are public records
        only, so not even a neighbour reveals a members-only name."""
        if caller.sees_members_only and self.everything is not None:
            tree, scope = self.everything, ds.STATE_SCOPE_ALL
        else:
            tree, scope = self.public, ds.STATE_SCOPE_PUBLIC
        out = ds.StateProof(name=name, scope=scope, tree_size=tree.size)
        for p in tree.prove(name):
            out.leaves.append(ds.StateLeaf(
                name=p.leaf.name, seq=p.leaf.seq, entry_hash=p.leaf.entry_hash, leaf_index=p.index,
                inclusion_path=list(p.path),
            ))
        return out


@dataclass(frozen=True)
class ProvenanceBase:
    """A member's provenance at one generation but what changes with the clock (``stale``,
    ``checkpoint_age``), kept with the member's index: every answer about the member states
    it, and converting the checkpoint's times on each one cost more than the rest of a kept
    answer's tail (bench/README.md)."""

    message: ds.Provenance  # shared: copied into each answer, never changed
    issued: datetime
    expires: datetime

    def stamp(self, out: ds.Provenance, now: datetime) -> bool:
        """Fill ``out`` with the provenance as of ``now``; whether the data is stale."""
        out.CopyFrom(self.message)
        age = max(now - self.issued, timedelta(0))
        out.checkpoint_age.SetInParent()  # stated even when zero
        out.checkpoint_age.seconds = age.days * 86400 + age.seconds  # what Duration.FromTimedelta sets
        out.checkpoint_age.nanos = age.microseconds * 1000
        stale = now > self.expires
        out.stale = stale
        return stale


@dataclass(frozen=True)
class Answer:
    """A FindCounterpart answer but its provenance, as kept for one generation: ``served``
    are the members-only records in it (audited at every answer that shows them)."""

    body: bytes  # serialized: a third of the memory of the message, and sent as it is
    members: tuple[str, ...]
    served: tuple[RowLike, ...]
    weight: int


class Snapshot:
    """What one answer reads of each member: its generation (checkpoint, size, withheld
    count; ``Store.generations``), read once, and the member's index for exactly it.

    Every proof and provenance of an answer then refers to the same tree, even when
    the member publishes while the answer is being made. ``caller`` decides which state
    tree proves that a record is the latest (``MemberState.proof``).
    """

    def __init__(
        self, directory: Directory, caller: Caller = ANONYMOUS,
        generations: Mapping[str, Generation | None] | None = None,
    ) -> None:
        self._directory = directory
        self.caller = caller
        self._generations: dict[str, Generation | None] = dict(generations or {})
        self._indexes: dict[str, MemberIndex] = {}

    def read(self, members: Iterable[str]) -> None:
        """Read the generations of the members not read yet, in one query."""
        missing = sorted({m for m in members if m and m not in self._generations})
        if missing:
            got = self._directory.store.lookup_generations(missing)
            for m in missing:
                self._generations[m] = got.get(m)

    def generation(self, member: str) -> Generation | None:
        self.read([member])
        return self._generations.get(member)

    def checkpoint(self, member: str) -> bytes | None:
        generation = self.generation(member)
        return None if generation is None else generation.checkpoint

    def index(self, member: str) -> MemberIndex:
        if member not in self._indexes:
            generation = self.generation(member)
            if generation is None:
                raise NotFoundError(f"this node holds no verified data of member {member}", reason="MEMBER_NOT_FOUND")
            self._indexes[member] = self._directory.indexes.get(member, generation)
        return self._indexes[member]

    def tree(self, member: str) -> tuple[bytes, CompactTree]:
        idx = self.index(member)
        return idx.generation.checkpoint, self._directory._tree(idx)

    def state_proof(self, name: str, member: str) -> ds.StateProof | None:
        """Proof that ``name`` is current at its latest seq, or absent; None when the member's
        checkpoint signs no state root (then nothing proves it is the latest). Shared between
        answers: copy it, never change it."""
        return self._directory._state_proof(self.index(member), name, self.caller)


class Directory:
    """Read-only lookups over a Store, for one federation document."""

    def __init__(self, store: Store, federation: Callable[[], Federation], clock: Callable[[], datetime] = utcnow) -> None:
        self.store = store
        self._federation = federation
        self.clock = clock
        self.indexes = Indexes()

    def federation(self) -> Federation:
        return self._federation()

    # --- proofs ------------------------------------------------------------------------

    def _once(
        self, idx: MemberIndex, attr: str, make: Callable[[], _P], weigh: Callable[[_P], int], heavy: bool = False
    ) -> _P:
        """``idx.<attr>``, made (one thread at a time) and charged to the indexes' weight the
        first time it is needed in this generation (again after a heavy part was dropped)."""
        value: _P | None = getattr(idx, attr)
        if value is None:
            weight = 0
            with idx.lock:
                value = getattr(idx, attr)
                if value is None:
                    value = make()
                    setattr(idx, attr, value)
                    weight = weigh(value)
            if weight:
                (self.indexes.charge_heavy if heavy else self.indexes.charge)(idx, weight)
        return value

    def _piece(
        self, idx: MemberIndex, key: tuple[object, ...], make: Callable[[], _P], weigh: Callable[[_P], int] = lambda _: 512
    ) -> _P:
        value, delta = idx.piece(key, make, weigh)
        if delta:
            self.indexes.charge(idx, delta)
        return value

    def _tree(self, idx: MemberIndex) -> CompactTree:
        """The member's tree at the index's checkpoint, built once per generation."""
        return self._once(
            idx, "tree", lambda: CompactTree(self.store.leaf_hashes(idx.member, upto=idx.generation.size)),
            lambda tree: LEAF_BYTES * tree.size,
        )

    def _state_proof(self, idx: MemberIndex, name: str, caller: Caller) -> ds.StateProof | None:
        key = (name, caller.sees_members_only)
        with idx.lock:
            found, proof = idx.state_proofs.find(key)
        if found:
            return proof
        member_state = self._state(idx)
        proof = None if member_state is None else member_state.proof(name, caller)
        with idx.lock:
            delta = idx.state_proofs.keep(key, proof, PROOF_BYTES)
        self.indexes.charge(idx, delta)
        return proof

    def _state(self, idx: MemberIndex) -> MemberState | None:
        """The member's state trees at this generation (None: its checkpoint signs no state
        root), built from the derived records once per generation.

        Raises ConflictError (RETRY) when the records no longer make the signed roots because
        the member published while the answer was being made. When they do not make them for
        another reason (derived state this node must rebuild), it proves nothing it cannot:
        no whole tree, or no state at all (clients then refuse the answers about the member,
        as they must), and says so in the log.
        """
        member, cp = idx.member, idx.checkpoint

        def build() -> tuple[MemberState | None]:
            if not cp.public_state_root:
                return (None,)
            everything, public = state.state_leaves(self.store.current_entries(member))
            whole = idx.generation.withheld == 0
            public_tree = state.StateTree(public)
            whole_tree = state.StateTree(everything) if whole else None
            public_ok = public_tree.root == cp.public_state_root
            whole_ok = whole_tree is None or whole_tree.root == cp.state_root
            if not (public_ok and whole_ok):
                if self.store.generations([member]).get(member) != idx.generation:
                    raise ConflictError("the records changed while the answer was made; ask again", reason="RETRY")
                logger.error(
                    "derived records do not make the checkpoint's state roots: run counterpart-node verify and rebuild",
                    extra={"member": member, "public_ok": public_ok, "whole_ok": whole_ok},
                )
            return (MemberState(public_tree, whole_tree if whole_ok else None) if public_ok else None,)

        def weigh(built: tuple[MemberState | None]) -> int:
            return 1 if built[0] is None else STATE_BYTES * (built[0].public.size + (built[0].everything or built[0].public).size)

        return self._once(idx, "state", build, weigh, heavy=True)[0]

    def _places(self, idx: MemberIndex) -> PlaceNames:
        """The member's place names (gazetteer and coverage), read once per generation (again
        after being dropped); RETRY when the member published while they were read."""

        def read() -> PlaceNames:
            rows = self.store.place_rows(idx.member)
            if self.store.generations([idx.member]).get(idx.member) != idx.generation:
                raise ConflictError("the records changed while the answer was made; ask again", reason="RETRY")
            return PlaceNames(rows)

        return self._once(idx, "places", read, lambda names: names.weight, heavy=True)

    def _load_rows(
        self, rows: Sequence[RowLike], snap: Snapshot, read: Mapping[tuple[str, int], bytes] | None = None
    ) -> list[Loaded]:
        """Each row's record with its inclusion proof and state proof, against the snapshot's
        checkpoint; kept per generation and visibility (``MemberIndex.loaded``). ``read``:
        envelopes already read with the rows (``Store.record_keys``), by (member, seq)."""
        sees = snap.caller.sees_members_only
        found: dict[tuple[str, int], Loaded] = {}
        missing: list[RowLike] = []
        for row in rows:
            idx = snap.index(row.member)
            if row.seq > idx.generation.size:  # published after this answer read the checkpoint
                raise ConflictError("the records changed while the answer was made; ask again", reason="RETRY")
            with idx.lock:
                _, hit = idx.loaded.find((row.name, row.seq, sees))
            if isinstance(hit, Loaded):
                found[(row.name, row.seq)] = hit
            else:
                missing.append(row)
        if missing:
            envelopes = dict(read or {})
            unread = [(r.member, r.seq) for r in missing if (r.member, r.seq) not in envelopes]
            if unread:
                envelopes.update(self.store.envelopes_at(unread))
            for row in missing:
                envelope = envelopes.get((row.member, row.seq))
                if envelope is None:  # derived state points at a missing entry: rebuild needed
                    raise NotFoundError(f"{row.name}: entry {row.member}/{row.seq} is missing", reason="INDEX_STALE")
                _, tree = snap.tree(row.member)
                entry = log_pb2.Entry.FromString(signing.parse_envelope(envelope).payload)
                record: Record = getattr(entry, row.kind)
                proof = ds.RecordProof(
                    name=row.name, signed_entry=envelope, leaf_index=row.seq - 1, tree_size=tree.size,
                    inclusion_path=tree.inclusion_path(row.seq - 1),
                )
                # proves the latest version of the NAME: an answer that shows an older version
                # (as of a past date) must let the client see that it is not the latest
                latest = snap.state_proof(row.name, row.member)
                if latest is not None:
                    proof.state.CopyFrom(latest)
                loaded = Loaded(row.name, row.member, record, proof)
                idx = snap.index(row.member)
                with idx.lock:
                    delta = idx.loaded.keep((row.name, row.seq, sees), loaded, PROOF_BYTES + 6 * len(envelope))
                self.indexes.charge(idx, delta)
                found[(row.name, row.seq)] = loaded
        return [found[(r.name, r.seq)] for r in rows]

    def provenance(self, member: str) -> ds.Provenance:
        return self._provenance(member, Snapshot(self))

    def _provenance(self, member: str, snap: Snapshot) -> ds.Provenance:
        p = ds.Provenance()
        self._provenance_of(snap.index(member)).stamp(p, self.clock())
        return p

    def _provenance_of(self, idx: MemberIndex) -> ProvenanceBase:
        """What the provenance of the member's answers holds at this generation, made once."""

        def make() -> ProvenanceBase:
            cp = idx.checkpoint
            p = ds.Provenance(member=idx.member, checkpoint_size=cp.size, signed_checkpoint=idx.generation.checkpoint)
            p.checkpoint_issue_time.CopyFrom(cp.issue_time)
            p.checkpoint_expire_time.CopyFrom(cp.expire_time)
            return ProvenanceBase(p, from_timestamp(cp.issue_time), from_timestamp(cp.expire_time))

        return self._once(idx, "provenance", make, lambda base: 256 + len(idx.generation.checkpoint))

    # --- Get / List / Search -----------------------------------------------------------

    def get(self, name: str, collection: str, caller: Caller = ANONYMOUS) -> tuple[Loaded, ds.Provenance]:
        parsed = names.parse_record_name(name, collection)
        snap = Snapshot(self, caller)
        row = self.store.record_row(str(parsed))
        if row is None or not self._visible(row, caller):  # members-only: absent to the public
            raise NotFoundError(
                f"{name} does not exist", reason="RECORD_NOT_FOUND", details=self._absence(str(parsed), snap)
            )
        loaded = self._load_rows([row], snap)[0]
        self._audit(caller, f"Get {collection}", [row])
        return loaded, self._provenance(row.member, snap)

    def list_records(
        self, kind: str, parent: str, size: int, token: str, filter_text: str, caller: Caller = ANONYMOUS,
    ) -> tuple[list[Loaded], str, list[ds.Provenance]]:
        member = names.parse_parent(parent)
        conditions = parse_filter(filter_text, kind)
        limit = page_size(size, 50, 500)
        scope = f"{kind}|{parent}|{filter_text}"
        after = decode_page_token(token, scope)
        if member is not None and self._federation().member(member) is None and not self.store.checkpoint(member):
            raise NotFoundError(f"members/{member} is not a member of the federation", reason="MEMBER_NOT_FOUND")
        snap = Snapshot(self, caller)
        rows = self.store.list_rows(
            kind, member, after, limit + 1, public_only=not caller.sees_members_only,
            attrs=[(c.field, c.op, c.value) for c in conditions],
        )
        more = len(rows) > limit
        rows = rows[:limit]
        loaded = self._load_rows(rows, snap)
        self._audit(caller, f"List {kind}", rows)
        next_token = encode_page_token(scope, rows[-1].name) if more and rows else ""
        return loaded, next_token, [self._provenance(m, snap) for m in sorted({r.member for r in rows})]

    def search(
        self, query: str, member: str, size: int, token: str, caller: Caller = ANONYMOUS
    ) -> tuple[list[Loaded], str, list[ds.Provenance]]:
        bounds.check_text(query, "query", bounds.MAX_QUERY_CHARS, reason="QUERY_TOO_LONG", text=True)
        folded = fold(query)
        if len(folded) < 2:
            raise InvalidArgumentError(
                f"query {quote(query)} is too short: give at least two letters or digits", reason="QUERY_TOO_SHORT"
            )
        bounds.check_length(folded, "query (folded)", bounds.MAX_FOLDED_QUERY_CHARS, reason="QUERY_TOO_LONG")
        if member:
            names.check_member_code(member)
        limit = page_size(size, 20, 100)
        scope = f"search|{member}|{folded}"
        offset_text = decode_page_token(token, scope)
        offset = int(offset_text) if offset_text.isdigit() else 0
        snap = Snapshot(self, caller)
        hits = self._search_hits(folded, member or None, limit + 1, offset)
        more = len(hits) > limit
        rows_by_name = self.store.record_rows([n for n, _ in hits[:limit]])
        rows = [rows_by_name[n] for n, _ in hits[:limit] if n in rows_by_name]
        loaded = self._load_rows(rows, snap)
        next_token = encode_page_token(scope, str(offset + limit)) if more else ""
        return loaded, next_token, [self._provenance(m, snap) for m in sorted({r.member for r in rows})]

    def _search_hits(self, folded: str, member: str | None, limit: int, offset: int) -> list[tuple[str, int]]:
        """Search by the query and, when it is a place a gazetteer names, by every other name
        of that place too (Երևան finds what Yerevan finds); best rank of any name wins."""
        terms = {folded}
        matching = self.store.places_matching(folded, member)
        if matching:
            terms |= {r.folded for r in self.store.place_rows_named(sorted({r.name for r in matching}))}
        if len(terms) == 1:
            return self.store.search_page(folded, member, limit, offset)
        best: dict[str, int] = {}
        for term in sorted(terms)[:MAX_PLACE_TERMS]:
            for name, rank in self.store.search_page(term, member, offset + limit, 0):
                best[name] = min(rank, best.get(name, rank))
        ordered = sorted(best.items(), key=lambda kv: (kv[1], kv[0]))
        return ordered[offset : offset + limit]

    # --- history -----------------------------------------------------------------------

    def revisions(
        self, name: str, size: int, token: str, caller: Caller = ANONYMOUS
    ) -> tuple[list[ds.RecordRevision], str, ds.Provenance]:
        """Every version of a record, newest first, deletions included, each with its signed
        entry and inclusion proof. Members-only versions exist only for callers who may see
        them; a record with no version the caller may see does not exist."""
        parsed = names.parse_record_name(name)
        limit = page_size(size, 50, 500)
        scope = f"revisions|{parsed}"
        before_text = decode_page_token(token, scope)
        before = int(before_text) if before_text.isdigit() else None
        snap = Snapshot(self)
        _, tree = snap.tree(parsed.member)
        rows = [
            r for r in self.store.revisions(str(parsed), before, limit + 1)
            if r.member == parsed.member and r.seq <= tree.size and (not r.restricted or caller.sees_members_only)
        ]
        if not rows and before is None:
            raise NotFoundError(f"{name} has no published version", reason="RECORD_NOT_FOUND")
        more = len(rows) > limit
        rows = rows[:limit]
        envelopes = self.store.envelopes_at([(r.member, r.seq) for r in rows])
        out = []
        for r in rows:
            proof = ds.RecordProof(
                name=r.name, signed_entry=envelopes[(r.member, r.seq)], leaf_index=r.seq - 1, tree_size=tree.size,
                inclusion_path=tree.inclusion_path(r.seq - 1),
            )
            revision = ds.RecordRevision(
                revision_name=f"{r.name}@{r.seq}", seq=r.seq, deleted=r.kind == "deletion", proof=proof,
            )
            if r.publish_time is not None:
                revision.publish_time.FromDatetime(r.publish_time)
            out.append(revision)
        restricted = [f"{r.name}@{r.seq}" for r in rows if r.restricted]
        if restricted:
            self.store.audit(caller.describe(), "ListRecordRevisions", restricted, self.clock())
        next_token = encode_page_token(scope, str(rows[-1].seq)) if more and rows else ""
        return out, next_token, self._provenance(parsed.member, snap)

    # --- members -----------------------------------------------------------------------

    def member_info(self, code: str, caller: Caller = ANONYMOUS) -> ds.MemberInfo:
        names.check_member_code(code)
        m = self._federation().member(code)
        has_data = self.store.checkpoint(code) is not None
        if m is None and not has_data:
            raise NotFoundError(f"members/{code} is not a member of the federation", reason="MEMBER_NOT_FOUND")
        info = ds.MemberInfo(name=f"members/{code}", code=code)
        if m is not None:
            info.display_name = m.display_name
            info.endpoints.extend(m.endpoints)
        if has_data:
            counts = self.store.count_records(code)
            public = self.store.count_records(code, public_only=True)
            info.log_size = self.store.log_size(code)
            info.authority_count = counts.get("authority", 0)
            if caller.sees_members_only:
                info.contact_count = counts.get("contact", 0)
            else:  # "N withheld", nothing more (DESIGN §8)
                info.contact_count = public.get("contact", 0)
                info.withheld_contact_count = counts.get("contact", 0) - info.contact_count
            info.rule_count = counts.get("rule", 0)
            info.treaty_count = counts.get("treaty", 0)
            info.provenance.CopyFrom(self._provenance(code, Snapshot(self)))
        return info

    def members(self, size: int, token: str, caller: Caller = ANONYMOUS) -> tuple[list[ds.MemberInfo], str]:
        limit = page_size(size, 50, 500)
        after = decode_page_token(token, "members")
        codes = sorted({m.code for m in self._federation().members()} | set(self.store.checkpoints()))
        codes = [c for c in codes if c > after]
        page = codes[:limit]
        next_token = encode_page_token("members", page[-1]) if len(codes) > limit else ""
        return [self.member_info(c, caller) for c in page], next_token

    # --- FindCounterpart ---------------------------------------------------------------

    def find_counterpart(
        self, req: ds.FindCounterpartRequest, caller: Caller = ANONYMOUS,
        generations: Mapping[str, Generation | None] | None = None,
    ) -> ds.FindCounterpartResponse:
        """The answer to a prosecutor's question. ``generations``: those of the requested and
        requesting members when the caller has read them already (else one query reads them)."""
        return ds.FindCounterpartResponse.FromString(self.find_counterpart_bytes(req, caller, generations))

    def find_counterpart_bytes(
        self, req: ds.FindCounterpartRequest, caller: Caller = ANONYMOUS,
        generations: Mapping[str, Generation | None] | None = None, as_of: ds.AsOf | None = None,
    ) -> bytes:
        """``find_counterpart``, serialized (with ``as_of`` stated): the kept answer's bytes
        and, after them, its provenance as of now. Protobuf merges concatenated messages:
        repeated fields append (the staleness warnings come after the kept ones), and the
        kept bytes hold no provenance and no as_of."""
        federation = self._federation()
        request = req.SerializeToString(deterministic=True)
        snap = Snapshot(self, caller, generations)
        # a request answered before passed every check below: they depend on nothing but the
        # request and the federation document, both in the kept answer's key
        answer = self._kept_answer(req, request, caller, federation, generations) if generations else None
        if answer is None:
            self._check(req, federation)
            snap.read([req.requested_member, req.requesting_member])
            idx = snap.index(req.requested_member)  # NOT_FOUND when the node holds nothing of the member
            # the whole answer but its provenance (ages change with the clock), kept for the
            # generations it was made from, per visibility: an anonymous caller never gets one
            # made for a signed-in caller
            key = self._answer_key(req, request, caller, federation, idx.generation, snap.generation)
            answer = self.indexes.answer(key, lambda: self._answer(req, caller, federation, snap), lambda a: a.weight)
        self._audit(caller, "FindCounterpart", answer.served)
        tail = ds.FindCounterpartResponse(as_of=as_of)
        now = self.clock()
        for m in answer.members:
            if self._provenance_of(snap.index(m)).stamp(tail.provenances.add(), now):
                tail.warnings.append(f"the data of {m} is stale: its latest checkpoint expired")
        return answer.body + tail.SerializeToString()

    @staticmethod
    def _answer_key(
        req: ds.FindCounterpartRequest, request: bytes, caller: Caller, federation: Federation,
        generation: Generation, generation_of: Callable[[str], Generation | None],
    ) -> tuple[object, ...]:
        """What a kept answer is kept under: everything it was made from."""
        return (
            req.requested_member, generation, request, caller.sees_members_only, federation.version,
            generation_of(req.requesting_member) if req.requesting_member else None,
        )

    def _kept_answer(
        self, req: ds.FindCounterpartRequest, request: bytes, caller: Caller, federation: Federation,
        generations: Mapping[str, Generation | None],
    ) -> Answer | None:
        """The answer kept for the request at these generations, if any."""
        generation = generations.get(req.requested_member)
        if generation is None:
            return None
        kept = self.indexes.kept(
            self._answer_key(req, request, caller, federation, generation, lambda m: generations.get(m))
        )
        return kept if isinstance(kept, Answer) else None

    @staticmethod
    def _check(req: ds.FindCounterpartRequest, federation: Federation) -> None:
        """Refuse a request that is not a valid question in this federation."""
        for field_name, value, maximum in (
            ("requested_member", req.requested_member, bounds.MAX_CODE_CHARS),
            ("requesting_member", req.requesting_member, bounds.MAX_CODE_CHARS),
            ("request_type", req.request_type, bounds.MAX_CODE_CHARS),
            ("offence_category", req.offence_category, bounds.MAX_CODE_CHARS),
        ):
            bounds.check_text(value, field_name, maximum)
        bounds.check_text(req.place, "place", bounds.MAX_PLACE_CHARS, text=True)
        bounds.check_count(len(req.preferred_languages), "preferred_languages", bounds.MAX_LANGUAGES, "TOO_MANY_LANGUAGES")
        for tag in req.preferred_languages:
            bounds.check_text(tag, "preferred_languages", bounds.MAX_LANGUAGE_TAG_CHARS)
        vocab = federation.vocabulary
        member = req.requested_member
        if not member:
            raise InvalidArgumentError("requested_member is required (e.g. GE)", reason="MISSING_ARGUMENT")
        names.check_member_code(member, "requested_member")
        if req.requesting_member:
            names.check_member_code(req.requesting_member, "requesting_member")
            if federation.member(req.requesting_member) is None:
                raise NotFoundError(
                    f"requesting_member {quote(req.requesting_member)} is not a member of "
                    f"{federation.document.federation_id}", reason="MEMBER_NOT_FOUND",
                )
        if not req.request_type:
            raise InvalidArgumentError("request_type is required (e.g. mla.hearing.witness)", reason="MISSING_ARGUMENT")
        if req.request_type not in vocab.request_types:
            raise InvalidArgumentError(
                f"unknown request type {quote(req.request_type)}{vocab.hint('request_types', req.request_type)}",
                reason="UNKNOWN_REQUEST_TYPE",
            )
        if req.offence_category and req.offence_category not in vocab.offence_categories:
            raise InvalidArgumentError(
                f"unknown offence category {quote(req.offence_category)}"
                f"{vocab.hint('offence_categories', req.offence_category)}",
                reason="UNKNOWN_OFFENCE_CATEGORY",
            )
        for tag in req.preferred_languages:
            if not names.LANGUAGE_TAG_RE.match(tag):
                raise InvalidArgumentError(f"{quote(tag)} is not a BCP 47 language tag", reason="INVALID_LANGUAGE")

    def _answer(
        self, req: ds.FindCounterpartRequest, caller: Caller, federation: Federation, snap: Snapshot
    ) -> Answer:
        member = req.requested_member
        resp = ds.FindCounterpartResponse()
        evidence = Evidence()
        evidence.members.add(member)  # its checkpoint proves what the answer says it lacks
        resolution = self._resolve_place(member, req.place, snap)
        place = self._place_answer(req.place, resolution, evidence, snap)
        resp.place.CopyFrom(place)
        if resolution.approximate:
            resp.warnings.append(f"place {req.place.strip()!r} was read as {resolution.matched} ({resolution.subdivision})")

        rule_name = f"members/{member}/rules/{req.request_type}"
        rule = self._load_name(rule_name, snap)
        if rule is None:
            absent = snap.state_proof(rule_name, member)
            if absent is not None:
                resp.absences.append(absent)
        if rule is not None:
            evidence.add(rule)
            assert isinstance(rule.record, records_pb2.Rule)
            resp.rule.CopyFrom(rule.record)
            if rule.record.possible == records_pb2.POSSIBILITY_NO:
                resp.warnings.append(f"{member} states that {req.request_type} is not possible; see the rule's alternatives")
        else:
            resp.warnings.append(f"{member} has published no procedural rule for {req.request_type}")

        rule_record = rule.record if rule is not None and isinstance(rule.record, records_pb2.Rule) else None
        candidates = self._candidates(member, req, place, resolution, rule_record, snap, resp.warnings)
        for cand, loaded in candidates:
            evidence.add(loaded)
            resp.candidates.append(cand)
            if cand.authority.urgent_contact.ByteSize() and (req.urgent or cand.authority.urgent_contact.always_available):
                resp.urgent_contacts.append(cand.authority.urgent_contact)
        if not candidates:
            resp.warnings.append(f"no authority of {member} lists a competence for {req.request_type} covering this place")

        bases = self._legal_bases(
            member, req.requesting_member, req.request_type, req.offence_category, federation, evidence,
            resp.warnings, snap,
        )
        resp.legal_bases.extend(bases)
        resp.route = self._route(rule_record, bases, req.urgent, resp.warnings)
        resp.languages.extend(self._languages(rule_record, bases, candidates))
        wanted = list(req.preferred_languages)
        if not resp.languages:
            resp.warnings.append(f"{member} has published no language in which {req.request_type} is accepted")
        elif wanted and not set(wanted) & set(resp.languages):
            resp.warnings.append(
                f"none of your languages ({', '.join(wanted)}) is accepted: {member} accepts "
                f"{', '.join(resp.languages)} for {req.request_type}; the request needs a translation"
            )

        all_contacts = self.store.contact_keys([c.authority.name for c, _ in candidates])
        contact_rows = [r for r in all_contacts if self._visible(r, caller)]
        resp.withheld_contacts = len(all_contacts) - len(contact_rows)
        if resp.withheld_contacts:
            resp.warnings.append(
                f"{resp.withheld_contacts} members-only contact point(s) withheld: sign in with an access token "
                "issued by your national node (counterpart login) to see them"
            )
        for contact in self._load_rows(contact_rows, snap):
            evidence.add(contact)
            assert isinstance(contact.record, records_pb2.Contact)
            resp.contacts.append(contact.record)

        self._uncertainty_warnings(evidence, resp.warnings)
        resp.proofs.extend(evidence.proofs[n] for n in sorted(evidence.proofs))
        served = [r for r in contact_rows if not r.public]
        body = resp.SerializeToString()
        return Answer(body, tuple(sorted(evidence.members)), tuple(served), ANSWER_BYTES + len(body))

    @staticmethod
    def _visible(row: RowLike, caller: Caller) -> bool:
        """Members-only records exist only for signed-in users of a member and member nodes."""
        return row.public or caller.sees_members_only

    def _audit(self, caller: Caller, method: str, rows: Sequence[RowLike]) -> None:
        """Write every members-only record served to the audit log: who, which, when."""
        restricted = [r.name for r in rows if not r.public]
        if restricted:
            self.store.audit(caller.describe(), method, restricted, self.clock())
            log.info("members-only records served", extra={"caller": caller.describe(), "method": method,
                                                           "records": restricted})

    def _load_name(self, name: str, snap: Snapshot) -> Loaded | None:
        read: dict[tuple[str, int], bytes] = {}
        row = self.store.record_keys([name], read).get(name)
        if row is None or not row.public:
            return None
        return self._load_rows([row], snap, read)[0]

    def _absence(self, name: str, snap: Snapshot) -> list[ds.AbsenceProof]:
        """The proof that ``name`` is not current (in the tree the caller may see), with the
        checkpoint it refers to; none when the node holds nothing of the member or its
        checkpoint signs no state root."""
        member = names.parse_record_name(name).member
        if snap.checkpoint(member) is None:
            return []
        proof = snap.state_proof(name, member)
        if proof is None:
            return []
        return [ds.AbsenceProof(state=proof, provenance=self._provenance(member, snap))]

    def _place_part(self, idx: MemberIndex, needed: tuple[str, str]) -> list[places.PlaceName] | None:
        """The member's place names a query needs (``places.names_needed``), read through the
        places index; None when they hold no match and every name is needed. RETRY when the
        member published while they were read."""
        kind, value = needed
        if kind == "subdivision":
            rows = self.store.subdivision_rows(idx.member, value)
            if not rows and self._piece(idx, ("has subdivisions",), lambda: self.store.has_subdivisions(idx.member)):
                return None
        else:
            rows = self.store.folded_rows(idx.member, value)
            if not rows:
                return None
        if self.store.lookup_generations([idx.member]).get(idx.member) != idx.generation:
            raise ConflictError("the records changed while the answer was made; ask again", reason="RETRY")
        return [places.PlaceName(*row) for row in rows]

    def _resolve_place(self, member: str, query: str, snap: Snapshot) -> places.Resolution:
        """Where the query leads, resolved once per generation and query (an error is not kept):
        from the few names it needs when they hold the place; from every name of the member
        (kept for its generation) when the query is a typo or names no place."""
        if not query.strip():
            return places.Resolution("national")  # no place: nothing to read

        def resolve() -> places.Resolution:
            idx = snap.index(member)
            needed = places.names_needed(query, member)
            part = None if needed is None else self._place_part(idx, needed)
            if needed is None or part is not None:
                return places.resolve(query, member, part or [])
            names = self._places(idx)
            return places.resolve(query, member, names.names, names.grouped)

        return self._piece(snap.index(member), ("place", query), resolve)

    def _place_answer(
        self, query: str, res: places.Resolution, evidence: Evidence, snap: Snapshot
    ) -> ds.ResolvedPlace:
        """The place as the answer states it, with the gazetteer record that says so."""
        level = {
            "national": ds.COVERAGE_LEVEL_NATIONAL, "subdivision": ds.COVERAGE_LEVEL_SUBDIVISION,
            "municipality": ds.COVERAGE_LEVEL_MUNICIPALITY, "postal_code": ds.COVERAGE_LEVEL_POSTAL_CODE,
        }[res.level]
        place = ds.ResolvedPlace(
            query=query, level=level, subdivision=res.subdivision, postal_code=res.postal_code,
            matched_name=res.matched, approximate=res.approximate,
        )
        if res.level == "municipality":
            place.municipality = res.matched
        if res.record:
            loaded = self._load_name(res.record, snap)
            if loaded is not None and isinstance(loaded.record, records_pb2.Place):
                evidence.add(loaded)
                place.gazetteer_place.CopyFrom(loaded.record)
        return place

    def _subdivisions_of(self, member: str, code: str, snap: Snapshot) -> list[str]:
        """A subdivision and those it lies in, as the member's gazetteer says (AZ-NV in AZ-NX)."""
        if not code:
            return []
        return list(self._piece(snap.index(member), ("subdivisions", code), lambda: tuple(self._parents(member, code, snap))))

    def _parents(self, member: str, code: str, snap: Snapshot) -> list[str]:
        out = [code] if code else []
        while code:
            rows = self.store.subdivision_rows(member, code)
            record = next((n for _, _, n, sub, k in rows if k == index.PLACE_SUBDIVISION and sub == code), "")
            loaded = self._load_name(record, snap) if record else None
            parent = loaded.record.parent_subdivision if loaded and isinstance(loaded.record, records_pb2.Place) else ""
            code = parent if parent and parent not in out else ""
            if code:
                out.append(code)
        return out

    def _candidates(
        self, member: str, req: ds.FindCounterpartRequest, place: ds.ResolvedPlace, res: places.Resolution,
        rule: records_pb2.Rule | None, snap: Snapshot, warnings: MutableSequence[str],
    ) -> list[tuple[ds.Candidate, Loaded]]:
        # Coverage first: only the few authorities whose coverage includes the place (by any
        # of its names, its subdivision and those that contain it), then their competences
        # for the request type (both from indexes).
        subdivisions = self._subdivisions_of(member, place.subdivision, snap)
        municipalities = sorted(res.folded_names) if place.level == ds.COVERAGE_LEVEL_MUNICIPALITY else []
        shown_place = place.matched_name or place.query.strip()
        levels: dict[str, tuple[ds.CoverageLevel.ValueType, str]] = {}
        for cov_name, cov_level, cov_key, cov_last in self.store.coverage_rows(
            member, subdivisions, municipalities, place.postal_code
        ):
            match: tuple[ds.CoverageLevel.ValueType, str]
            if cov_level == index.LEVEL_NATIONAL:
                match = (ds.COVERAGE_LEVEL_NATIONAL, f"competent for the whole of {member}")
            elif cov_level == index.LEVEL_SUBDIVISION:
                match = (ds.COVERAGE_LEVEL_SUBDIVISION, f"competent for subdivision {cov_key}")
            elif cov_level == index.LEVEL_MUNICIPALITY:
                match = (ds.COVERAGE_LEVEL_MUNICIPALITY, f"competent for the municipality {shown_place}")
            else:
                match = (ds.COVERAGE_LEVEL_POSTAL_CODE, f"competent for postal codes {cov_key}-{cov_last}")
            if match[0] > levels.get(cov_name, (ds.COVERAGE_LEVEL_UNSPECIFIED, ""))[0]:
                levels[cov_name] = match

        roles: dict[str, set[records_pb2.CompetenceRole.ValueType]] = {}
        for c_name, c_role, c_offence, c_stage in self.store.competence_rows(member, req.request_type, list(levels)):
            if req.offence_category and c_offence not in ("", req.offence_category):
                continue
            if req.stage and c_stage not in (0, int(req.stage)):
                continue
            roles.setdefault(c_name, set()).add(records_pb2.CompetenceRole.ValueType(c_role))
        named_by_rule: dict[str, str] = {}
        if rule is not None:
            executing = rule.executing_authority
            for by in rule.executing_by_subdivision:
                if set(by.subdivisions) & set(subdivisions):
                    executing = by.authority
                    named_by_rule[by.authority] = (
                        f"named by the rule as competent to execute in {', '.join(by.subdivisions)}"
                    )
            if rule.receiving_authority:
                named_by_rule.setdefault(rule.receiving_authority, "named by the rule as competent to receive")
            if executing:
                named_by_rule.setdefault(executing, "named by the rule as competent to execute")
            for name, role in ((rule.receiving_authority, records_pb2.COMPETENCE_ROLE_RECEIVES),
                               (executing, records_pb2.COMPETENCE_ROLE_EXECUTES)):
                if not name:
                    continue
                if name not in levels:
                    # what the rule names is shown even where its coverage says otherwise: the
                    # answer must not contradict the rule, and the reader must see the conflict
                    levels[name] = (ds.COVERAGE_LEVEL_UNSPECIFIED, f"its coverage does not include {shown_place or member}")
                    warnings.append(
                        f"{member}'s rule for {req.request_type} names {name} as competent to "
                        f"{'receive' if role == records_pb2.COMPETENCE_ROLE_RECEIVES else 'execute'}, but its "
                        f"coverage does not include {shown_place or 'the whole member'}"
                    )
                roles.setdefault(name, set()).add(role)
        levels = {n: lv for n, lv in levels.items() if n in roles}
        read: dict[tuple[str, int], bytes] = {}
        rows = self.store.record_keys(list(levels), read)
        loaded = {ld.name: ld for ld in self._load_rows([rows[n] for n in sorted(levels) if n in rows], snap, read)}
        out: list[tuple[ds.Candidate, Loaded]] = []
        for name, ld in loaded.items():
            assert isinstance(ld.record, records_pb2.Authority)
            auth = ld.record
            level, why = levels[name]
            cand = ds.Candidate(coverage_level=level)
            cand.authority.CopyFrom(auth)
            cand.roles.extend(sorted(roles[name]))
            role_words = ", ".join(records_pb2.CompetenceRole.Name(r).removeprefix("COMPETENCE_ROLE_").lower() for r in sorted(roles[name]))
            cand.reasons.append(f"{role_words} {req.request_type}")
            cand.reasons.append(why)
            if name in named_by_rule:
                cand.reasons.append(named_by_rule[name])
            wanted = [lang for lang in req.preferred_languages if lang in auth.languages]
            cand.matching_languages.extend(wanted)
            if wanted:
                cand.reasons.append("accepts " + ", ".join(wanted))
            if req.urgent and auth.urgent_contact.always_available:
                cand.reasons.append("has a contact reachable around the clock")
            out.append((cand, ld))

        def rank(item: tuple[ds.Candidate, Loaded]) -> tuple[int, int, int, int, str]:
            cand, _ = item
            return (
                -int(cand.coverage_level),
                0 if cand.authority.name in named_by_rule else 1,
                -len(cand.matching_languages),
                0 if (req.urgent and cand.authority.urgent_contact.always_available) else 1,
                cand.authority.name,
            )

        out.sort(key=rank)
        if rule is not None and rule.territorial_execution:
            executor = next(
                (c for c, _ in out if records_pb2.COMPETENCE_ROLE_EXECUTES in c.roles
                 and c.coverage_level != ds.COVERAGE_LEVEL_UNSPECIFIED), None,
            )
            if executor is None:
                warnings.append(
                    f"{member}'s rule gives {req.request_type} to the authority territorially competent for the "
                    f"place, but no authority covering {shown_place or 'it'} lists an executing competence"
                )
            else:
                executor.reasons.append(
                    f"executes: the rule gives execution to the authority territorially competent for "
                    f"{shown_place or 'the whole of ' + member}"
                )
        return out

    def _legal_bases(
        self, member: str, requesting: str, request_type: str, offence: str, federation: Federation,
        evidence: Evidence, warnings: MutableSequence[str], snap: Snapshot,
    ) -> list[ds.LegalBasis]:
        requesting_known = bool(requesting) and snap.checkpoint(requesting) is not None
        if requesting and not requesting_known:
            warnings.append(
                f"this node holds no records of {requesting}: legal bases are shown from {member}'s side only"
            )

        def in_force(m: str) -> dict[str, RecordKey]:
            rows = self._piece(snap.index(m), ("in force",), lambda: self.store.treaties_in_force(m))
            return {r.name.rsplit("/", 1)[1]: r for r in rows}

        theirs = in_force(member)
        ours = in_force(requesting) if requesting_known else {}
        relevant = [
            code for code, instrument in federation.vocabulary.instruments.items()
            if request_type in instrument.request_types
            and not (instrument.parties and requesting and requesting not in instrument.parties)
            and not (offence and instrument.offence_categories and offence not in instrument.offence_categories)
            and code in theirs
            and (not requesting_known or code in ours)
        ]
        loaded = {
            ld.name: ld
            for ld in self._load_rows([theirs[c] for c in relevant] + [ours[c] for c in relevant if c in ours], snap)
        }
        bases: list[ds.LegalBasis] = []
        for code in relevant:
            instrument = federation.vocabulary.instruments[code]
            their_record = loaded[theirs[code].name]
            evidence.add(their_record)
            ours_in_force = code in ours
            if ours_in_force:
                evidence.add(loaded[ours[code].name])
            assert isinstance(their_record.record, records_pb2.Treaty)
            basis = ds.LegalBasis(
                instrument=code, title=instrument.title, scope=instrument.scope,
                direct_transmission=instrument.direct_transmission, requested_member_party=True,
                requesting_member_party=ours_in_force,
            )
            basis.declared_languages.extend(their_record.record.declared_languages)
            side = f"in force for {member}" + (f" and {requesting}" if ours_in_force else "")
            basis.explanation = f"{instrument.title} covers {request_type}; {side}"
            if instrument.parties and not requesting:
                basis.explanation += f"; applies only between {' and '.join(instrument.parties)}"
            basis.explanation += (
                "; allows direct transmission between judicial authorities" if instrument.direct_transmission
                else "; no direct transmission: through central authorities"
            )
            if their_record.record.declared_languages:
                basis.explanation += f"; {member} declared it accepts {', '.join(their_record.record.declared_languages)}"
            basis.offence_categories.extend(instrument.offence_categories)
            if instrument.offence_categories and not offence:
                basis.explanation += f"; only for offences of: {', '.join(instrument.offence_categories)}"
            bases.append(basis)
        bases.sort(key=lambda b: (_SCOPE_RANK.get(b.scope, 3), b.instrument))
        if not bases:
            warnings.append(f"no instrument in force for {member} covers {request_type}; reciprocity may apply")
        return bases

    @staticmethod
    def _route(
        rule: records_pb2.Rule | None, bases: Sequence[ds.LegalBasis], urgent: bool, warnings: MutableSequence[str]
    ) -> records_pb2.TransmissionRoute.ValueType:
        """The first route the rule names that a legal basis in force allows; what nobody
        published stays unstated (TRANSMISSION_ROUTE_UNSPECIFIED), never a default."""
        if rule is None or not rule.routes:
            warnings.append("route not stated: the requested member has published no route for this request type")
            return records_pb2.TRANSMISSION_ROUTE_UNSPECIFIED
        if urgent and rule.interpol_for_urgent:
            warnings.append("urgent: an advance copy through Interpol is accepted")
        direct_allowed = any(b.direct_transmission for b in bases)
        for route in rule.routes:
            if route == records_pb2.TRANSMISSION_ROUTE_DIRECT and not direct_allowed:
                continue
            return route
        warnings.append(
            "the rule names only direct transmission between judicial authorities, but no legal basis in force "
            "between the two members provides for it"
        )
        return rule.routes[0]

    @staticmethod
    def _languages(
        rule: records_pb2.Rule | None, bases: Sequence[ds.LegalBasis], candidates: Iterable[tuple[ds.Candidate, Loaded]]
    ) -> list[str]:
        out: list[str] = []
        sources: list[Iterable[str]] = [rule.languages if rule else [], *[b.declared_languages for b in bases]]
        if rule is None or not rule.languages:
            sources.extend(c.authority.languages for c, _ in candidates)
        for src in sources:
            for lang in src:
                if lang not in out:
                    out.append(lang)
        return out

    @staticmethod
    def _uncertainty_warnings(evidence: Evidence, warnings: MutableSequence[str]) -> None:
        for name, record in sorted(evidence.records.items()):
            for note in record.notes:
                if "uncertain" in note.text.lower():
                    warnings.append(f"{name}: {note.text}")
                    break
