"""Checking a node's answer without trusting the node.

A node only relays what members signed. Every answer carries, for each record, the
origin's signed entry bytes and an RFC 9162 inclusion proof, and for each member the
origin's signed checkpoint. With a pinned federation document (which says which keys
may sign for which member) the client can check that:

1. each checkpoint is signed by a key of its member (and learn its size, root and age);
2. each proof's entry is signed by that member, sits at the claimed position, and is a
   leaf of the tree the checkpoint signs;
3. each record shown to the user is byte-for-byte the body of such an entry.

The cryptography and Merkle code are the domain's own (``counterpart_core``);
this module only decides what must be checked against what, and turns any failure into
:class:`~directory_client.errors.VerificationFailed` naming the record or member.

4. each record shown is the *latest* version of its name: the checkpoint also signs the
   roots of the member's state trees (``counterpart_core.state``), and each proof carries
   the name's leaf in one of them (``check_latest``); a name the node says does not exist
   comes with the neighbouring leaves that prove it (``verify_absence``).

What this does not prove: that a list or search left nothing out. A checkpoint signed
before state roots existed proves no latest version (the answer then says so in
``Verification.warnings``). Checkpoint age and expiry bound how stale an answer can be.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import NamedTuple

from google.protobuf.message import Message

from counterpart.v1 import directory_service_pb2 as ds
from counterpart.v1 import records_pb2
from counterpart_core import effective, log, merkle, names, redaction, state
from counterpart_core.errors import CounterpartError
from counterpart_core.federation import Federation
from counterpart_core.timeutil import from_timestamp
from directory_client.errors import VerificationFailed

__all__ = [
    "RECORD_KINDS",
    "MemberStatus",
    "Record",
    "Verification",
    "check_latest",
    "records_in",
    "verify_absence",
    "verify_answer",
    "verify_member_checkpoint",
    "verify_not_found",
    "verify_response",
]

Record = (
    records_pb2.Authority | records_pb2.Contact | records_pb2.Rule | records_pb2.Treaty | records_pb2.Place
)
"""The record messages an answer shows (the bodies of signed entries)."""

RECORD_KINDS: dict[type[Message], str] = {
    records_pb2.Authority: "authority",
    records_pb2.Contact: "contact",
    records_pb2.Rule: "rule",
    records_pb2.Treaty: "treaty",
    records_pb2.Place: "place",
}
"""Record message classes and the name of the ``Entry.body`` field that holds each."""

# Messages that carry evidence rather than answer content: never searched for records.
_EVIDENCE = (ds.RecordProof, ds.Provenance)


class MemberStatus(NamedTuple):
    """Freshness of one member's data, taken from its verified checkpoint."""

    member: str
    checkpoint_size: int
    issue_time: datetime
    age: timedelta
    stale: bool


@dataclass(frozen=True)
class Verification:
    """What was verified in one answer.

    ``records_checked`` counts the signed records whose entry signature and inclusion in
    a signed checkpoint were verified (every record shown in the answer is one of them);
    ``members`` gives the freshness of each member's checkpoint, recomputed locally.
    """

    records_checked: int
    members: list[MemberStatus] = field(default_factory=list)
    latest_proven: int = 0
    """How many records shown were proven to be the latest version of their name."""
    warnings: list[str] = field(default_factory=list)
    """What could not be proven, for the reader (a checkpoint without state roots, a proof
    made against the public records only for a signed-in caller)."""

    @property
    def stale(self) -> bool:
        """Some member's checkpoint had expired: its data may be out of date."""
        return any(m.stale for m in self.members)


def _fail(what: str, error: CounterpartError | str) -> VerificationFailed:
    """A VerificationFailed naming what was being checked and why it failed."""
    if isinstance(error, CounterpartError):
        return VerificationFailed(f"{what}: {error.message} [{error.reason}]")
    return VerificationFailed(f"{what}: {error}")


def _verify_provenances(
    federation: Federation, provenances: Sequence[ds.Provenance], now: datetime
) -> dict[str, log.LogCheckpoint]:
    """Verify every member's signed checkpoint; refuse provenance that contradicts it."""
    checkpoints: dict[str, log.LogCheckpoint] = {}
    for p in provenances:
        what = f"checkpoint of {p.member or '(no member)'}"
        try:
            cp = log.verify_checkpoint(bytes(p.signed_checkpoint), p.member, federation)
        except CounterpartError as e:
            raise _fail(what, e) from e
        previous = checkpoints.get(p.member)
        if previous is not None and previous.envelope != cp.envelope:
            raise _fail(what, "the answer holds two different checkpoints for this member")
        # The plain fields restate the signed checkpoint; a node that changes them lies.
        if p.checkpoint_size != cp.size:
            raise _fail(what, f"provenance claims size {p.checkpoint_size}, the signed checkpoint "
                              f"says {cp.size}")
        if (p.HasField("checkpoint_issue_time")
                and from_timestamp(p.checkpoint_issue_time) != cp.issue_time):
            raise _fail(what, "provenance misstates the checkpoint's issue time")
        if (p.HasField("checkpoint_expire_time")
                and from_timestamp(p.checkpoint_expire_time) != cp.expire_time):
            raise _fail(what, "provenance misstates the checkpoint's expiry time")
        checkpoints[p.member] = cp
    return checkpoints


def check_latest(
    name: str, shown_seq: int, latest: state.StateLeaf | None, proven: AbstractSet[tuple[str, int]] = frozenset()
) -> None:
    """The record shown (``name`` at ``shown_seq``) must be the latest version of its name,
    as the member's signed state tree says (``latest``: its leaf, None when the name is not
    current). The one place that decides it. Answers as of a past instant are not checked
    here at all; a current answer may show an older version only when the latest one is a
    scheduled version it also proves (``proven``: the (name, seq) of every entry the answer
    proves), whose start after the answer's instant ``_check_as_of`` then checks.

    Raises VerificationFailed "X@S is not the latest version (latest: @L)".
    """
    if latest is None:
        raise VerificationFailed(f"{name}@{shown_seq} is not the latest version (latest: deleted or withdrawn)")
    if latest.seq != shown_seq and (name, latest.seq) not in proven:
        raise VerificationFailed(f"{name}@{shown_seq} is not the latest version (latest: @{latest.seq})")


def _state_tree(proof: ds.StateProof, cp: log.LogCheckpoint, what: str) -> tuple[bytes, int]:
    """(root, size) of the signed state tree a state proof claims to be made against."""
    assert cp.state is not None
    if proof.scope == ds.STATE_SCOPE_ALL:
        root, size = cp.state.root, cp.state.size
    elif proof.scope == ds.STATE_SCOPE_PUBLIC:
        root, size = cp.state.public_root, cp.state.public_size
    else:
        raise _fail(what, "the state proof names no state tree")
    if proof.tree_size != size:
        raise _fail(what, f"the state proof is for a tree of {proof.tree_size} records, but "
                          f"{cp.member}'s signed checkpoint says {size}")
    return root, size


def _proven_leaves(proof: ds.StateProof) -> list[state.ProvenLeaf]:
    return [
        state.ProvenLeaf(
            state.StateLeaf(leaf.name, leaf.seq, bytes(leaf.entry_hash)), leaf.leaf_index,
            tuple(bytes(h) for h in leaf.inclusion_path),
        )
        for leaf in proof.leaves
    ]


def verify_state(name: str, proof: ds.StateProof, cp: log.LogCheckpoint) -> state.StateLeaf | None:
    """Verify a state proof of ``name`` against ``cp``'s signed state roots: the name's
    leaf (returned) or the neighbours that prove it absent (None)."""
    what = f"state proof of {name}"
    if proof.name != name:
        raise _fail(what, f"it is about {proof.name!r}")
    root, size = _state_tree(proof, cp, what)
    leaves = _proven_leaves(proof)
    try:
        if len(leaves) == 1 and leaves[0].leaf.name == name:
            return state.verify_presence(name, leaves, size, root)
        state.verify_absence(name, leaves, size, root)
    except CounterpartError as e:
        raise _fail(what, e) from e
    return None


def verify_absence(name: str, proof: ds.StateProof, cp: log.LogCheckpoint) -> None:
    """``name`` does not exist (in the state tree the proof names) at checkpoint ``cp``."""
    if cp.state is None:
        raise _fail(f"absence of {name}", f"{cp.member}'s checkpoint carries no state root")
    if verify_state(name, proof, cp) is not None:
        raise VerificationFailed(f"the node says {name} does not exist, but its proof shows it does")


def _check_state(
    proof: ds.RecordProof, entry: log.LogEntry, cp: log.LogCheckpoint, signed_in: bool, warnings: list[str],
    proven: AbstractSet[tuple[str, int]] = frozenset(),
) -> bool:
    """Check that a proven entry is the latest of its name; True when proven. A checkpoint
    without state roots, or a public-only proof of a members-only record for a signed-in
    caller, proves nothing either way: a warning says so."""
    if cp.state is None:
        note = f"{cp.member}'s checkpoint carries no state root: not proven to be the latest"
        if note not in warnings:
            warnings.append(note)
        return False
    if not proof.HasField("state"):
        raise _fail(f"proof of {proof.name}", "the answer does not prove that it is the latest version")
    latest = verify_state(proof.name, proof.state, cp)
    if signed_in and proof.state.scope == ds.STATE_SCOPE_PUBLIC:
        note = f"the node proved {cp.member}'s records the latest against its public records only"
        if note not in warnings:
            warnings.append(note)
        if latest is None and redaction.record_members_only(entry.record):
            return False  # a members-only record: the public tree cannot hold it
    check_latest(proof.name, entry.seq, latest, proven)
    if latest is not None and latest.seq == entry.seq and latest.entry_hash != entry.leaf_hash:
        raise _fail(f"state proof of {proof.name}", "its leaf stands for another entry than the one shown")
    return True


def _verify_proofs(
    federation: Federation,
    proofs: Sequence[ds.RecordProof],
    checkpoints: dict[str, log.LogCheckpoint],
    deletions: bool = False,
    latest: _Latest | None = None,
) -> dict[str, list[log.LogEntry]]:
    """Verify each proof's entry and inclusion; return the verified entries by name. A
    deletion entry proves a record only in a history (``deletions``). With ``latest``, each
    entry must also be proven the latest of its name (see ``_check_state``)."""
    entries: dict[str, list[log.LogEntry]] = {}
    for proof in proofs:
        what = f"proof of {proof.name or '(unnamed record)'}"
        try:
            parsed = names.parse_record_name(proof.name)
        except CounterpartError as e:
            raise _fail(what, e) from e
        member = parsed.member
        cp = checkpoints.get(member)
        if cp is None:
            raise _fail(what, f"the answer carries no signed checkpoint of {member}")
        if proof.tree_size != cp.size:
            raise _fail(what, f"the proof is for a tree of {proof.tree_size} entries, but "
                              f"{member}'s signed checkpoint covers {cp.size}")
        if proof.leaf_index >= cp.size:
            raise _fail(what, f"leaf {proof.leaf_index} lies outside {member}'s checkpoint "
                              f"of {cp.size} entries")
        signed_entry = bytes(proof.signed_entry)
        try:
            entry = log.verify_entry(signed_entry, member, proof.leaf_index + 1, federation)
            merkle.verify_inclusion(
                merkle.leaf_hash(signed_entry), proof.leaf_index, proof.tree_size,
                [bytes(h) for h in proof.inclusion_path], cp.root_hash,
            )
        except CounterpartError as e:
            raise _fail(what, e) from e
        if entry.name != proof.name:
            raise _fail(what, f"the signed entry ({member} seq {entry.seq}) is about "
                              f"{entry.name!r}")
        if entry.kind != parsed.kind and not (deletions and entry.kind == "deletion"):
            raise _fail(what, f"the signed entry ({member} seq {entry.seq}) is a "
                              f"{entry.kind} entry, not one of kind {parsed.kind!r}")
        if latest is not None and _check_state(proof, entry, cp, latest.signed_in, latest.warnings, latest.versions):
            latest.proven += 1
        entries.setdefault(proof.name, []).append(entry)
    return entries


@dataclass
class _Latest:
    """What the latest-version checks of one answer found."""

    signed_in: bool
    versions: AbstractSet[tuple[str, int]] = frozenset()
    """(name, seq) of every entry the answer proves."""
    proven: int = 0
    warnings: list[str] = field(default_factory=list)


def _check_records(records: Sequence[Message], entries: dict[str, list[log.LogEntry]]) -> None:
    """Each record shown must be, byte for byte, the body of a verified entry."""
    for record in records:
        if not isinstance(record, Record):
            raise TypeError(f"{type(record).__name__} is not a record message")
        kind = RECORD_KINDS[type(record)]
        name = record.name
        candidates = entries.get(name)
        if not candidates:
            raise _fail(f"{kind} {name or '(unnamed)'}", "the answer carries no proof for it")
        shown = record.SerializeToString(deterministic=True)
        for entry in candidates:
            body = getattr(entry.entry, kind) if entry.kind == kind else None
            if body is not None and body.SerializeToString(deterministic=True) == shown:
                break
        else:
            seqs = ", ".join(f"seq {e.seq}" for e in candidates)
            raise _fail(f"{kind} {name}",
                        f"the record differs from the entry {candidates[0].member} signed ({seqs})")


def _statuses(checkpoints: dict[str, log.LogCheckpoint], now: datetime) -> list[MemberStatus]:
    """Freshness per member, from the verified checkpoints and the local clock only."""
    return [
        MemberStatus(
            member=code, checkpoint_size=cp.size, issue_time=cp.issue_time,
            age=max(now - cp.issue_time, timedelta(0)), stale=cp.stale(now),
        )
        for code, cp in sorted(checkpoints.items())
    ]


def _verify(
    federation: Federation,
    proofs: Sequence[ds.RecordProof],
    provenances: Sequence[ds.Provenance],
    records: Sequence[Message],
    now: datetime,
    deletions: bool = False,
    signed_in: bool = False,
    as_of: bool = False,
) -> tuple[Verification, dict[str, list[log.LogEntry]], dict[str, log.LogCheckpoint]]:
    checkpoints = _verify_provenances(federation, provenances, now)
    # a history shows every version on purpose, and an answer as of a past instant the
    # versions in effect then: neither needs to be the latest (the state roots are today's)
    latest = None if deletions or as_of else _Latest(signed_in, {(p.name, p.leaf_index + 1) for p in proofs})
    entries = _verify_proofs(federation, proofs, checkpoints, deletions, latest)
    _check_records(records, entries)
    verified = Verification(
        records_checked=sum(len(v) for v in entries.values()),
        members=_statuses(checkpoints, now),
        latest_proven=latest.proven if latest else 0,
        warnings=latest.warnings if latest else [],
    )
    return verified, entries, checkpoints


def verify_answer(
    federation: Federation,
    proofs: Sequence[ds.RecordProof],
    provenances: Sequence[ds.Provenance],
    records: Sequence[Message],
    now: datetime,
    signed_in: bool = False,
) -> Verification:
    """Verify an answer's proofs and records against the pinned ``federation``.

    ``records`` are the Authority / Contact / Rule / Treaty messages shown to the user
    (see :func:`records_in`). Staleness is recomputed from each verified checkpoint's
    expiry and ``now``; the node's own ``stale`` flag is ignored.

    Raises :class:`VerificationFailed` on the first failure; returns what was verified.
    """
    verified, _, _ = _verify(federation, proofs, provenances, records, now, signed_in=signed_in)
    return verified


# --- whole responses --------------------------------------------------------------------


def records_in(message: Message) -> list[Record]:
    """Every record message inside a response, e.g. candidates[].authority, rule, contacts[].

    Walks the message generically, so new response shapes need no change here; proofs
    and provenance are skipped (they are evidence, not content).
    """
    return list(_walk(message))


def _walk(message: Message) -> Iterator[Record]:
    for fd, value in message.ListFields():
        if fd.message_type is None:
            continue
        items: list[Message] = list(value) if fd.is_repeated else [value]
        for item in items:
            if isinstance(item, Record):
                yield item
            elif not isinstance(item, _EVIDENCE):
                yield from _walk(item)


_PAGES = (
    ds.ListAuthoritiesResponse, ds.ListContactsResponse, ds.ListRulesResponse,
    ds.ListTreatiesResponse, ds.ListPlacesResponse, ds.SearchAuthoritiesResponse,
    ds.FindCounterpartResponse,
)
_SINGLES = (
    ds.GetAuthorityResponse, ds.GetContactResponse, ds.GetRuleResponse, ds.GetTreatyResponse,
    ds.GetPlaceResponse,
)


def _evidence(response: Message) -> tuple[list[ds.RecordProof], list[ds.Provenance]]:
    """The proofs and provenances a response carries, whatever its shape."""
    if isinstance(response, _PAGES):
        return list(response.proofs), list(response.provenances)
    if isinstance(response, _SINGLES):
        if not response.HasField("proof"):
            raise VerificationFailed("the answer carries no proof for its record")
        if not response.HasField("provenance"):
            raise VerificationFailed("the answer carries no signed checkpoint")
        return [response.proof], [response.provenance]
    if isinstance(response, ds.ListRecordRevisionsResponse):
        return [r.proof for r in response.revisions], [response.provenance] if response.HasField("provenance") else []
    if isinstance(response, ds.ListMembersResponse):
        return [], [m.provenance for m in response.members if m.HasField("provenance")]
    if isinstance(response, ds.GetMemberResponse):
        member = response.member
        return [], [member.provenance] if member.HasField("provenance") else []
    raise TypeError(f"{type(response).__name__} is not a DirectoryService response")


def verify_response(
    federation: Federation,
    response: Message,
    now: datetime,
    request: ds.FindCounterpartRequest | None = None,
    asked: ds.AsOf | None = None,
    signed_in: bool = False,
) -> Verification:
    """Verify any DirectoryService response: its records, proofs and checkpoints.

    For a FindCounterpartResponse it also checks what the node derived from the signed
    records: urgent contacts and matching languages must come from verified authorities,
    and each legal basis must rest on a verified treaty record in force. With the
    ``request``, every record must belong to the requested member, so a node cannot
    answer with another member's (validly signed) records.

    An as-of answer (``asked``, or the request's as_of) must state the instant and reading
    asked for, and every signed entry it rests on must answer at that instant
    (``effective.holds_at``); a current FindCounterpart is checked at the instant it states
    (not before its checkpoints were signed), where a scheduled version may be shown only
    beside the version in effect, and only if it takes effect later.
    """
    proofs, provenances = _evidence(response)
    records = records_in(response)
    revisions = isinstance(response, ds.ListRecordRevisionsResponse)
    if request is not None and request.HasField("as_of"):
        asked = request.as_of
    verified, entries, checkpoints = _verify(
        federation, proofs, provenances, records, now, deletions=revisions, signed_in=signed_in,
        as_of=asked is not None,
    )
    if asked is not None or isinstance(response, ds.FindCounterpartResponse):
        _check_as_of(response, records, entries, asked, provenances, now)
    if isinstance(response, ds.FindCounterpartResponse):
        _check_find(response, entries, request)
        _check_absences(response, checkpoints, request)
    if isinstance(response, ds.ListRecordRevisionsResponse):
        _check_revisions(response, entries)
    return verified


_CLOCK_SLACK = timedelta(minutes=5)  # between the clocks of an origin and the node that answers


def _check_as_of(
    response: Message, records: Sequence[Record], entries: dict[str, list[log.LogEntry]],
    asked: ds.AsOf | None, provenances: Sequence[ds.Provenance], now: datetime,
) -> None:
    """Every entry an as-of answer rests on answers at its instant (see verify_response)."""
    stated: ds.AsOf | None = getattr(response, "as_of", None)
    newest = max((from_timestamp(p.checkpoint_issue_time) for p in provenances
                  if p.HasField("checkpoint_issue_time")), default=None)
    if stated is None or not response.HasField("as_of") or not stated.HasField("time"):
        if asked is not None:
            raise _fail("as of", "the answer does not say which instant and reading it used")
        # a current answer of a node that predates as_of: checked now, by this clock (or the
        # checkpoints', when they are ahead: nothing they cover was published after them)
        stated = ds.AsOf(reading=ds.AS_OF_READING_IN_EFFECT)
        stated.time.FromDatetime(max(now, newest) if newest is not None else now)
    at = from_timestamp(stated.time)
    reading = effective.PUBLISHED if stated.reading == ds.AS_OF_READING_PUBLISHED else effective.IN_EFFECT
    if asked is not None:
        wanted = effective.PUBLISHED if asked.reading == ds.AS_OF_READING_PUBLISHED else effective.IN_EFFECT
        if from_timestamp(asked.time) != at or wanted != reading:
            raise _fail("as of", f"the answer is as of {effective.format_instant(at)} ({reading}), "
                                 f"not the instant and reading asked for")
    else:
        if reading != effective.IN_EFFECT or (newest is not None and at < newest - _CLOCK_SLACK):
            raise _fail("as of", f"a current answer is stated as of {effective.format_instant(at)} "
                                 f"({reading}), before the checkpoints it rests on were signed")
    for record in records:
        kind = RECORD_KINDS[type(record)]
        shown = record.SerializeToString(deterministic=True)
        same = [e for e in entries.get(record.name, []) if e.kind == kind
                and getattr(e.entry, kind).SerializeToString(deterministic=True) == shown]
        reasons = [effective.holds_at(_version(e), at, reading) for e in same]
        if same and all(reasons):
            raise _fail(f"{kind} {record.name} (seq {same[0].seq})",
                        f"shown as of {effective.format_instant(at)}, but {reasons[0]}")
        _check_picked(kind, record.name, same, entries.get(record.name, []), at, reading)
    for name, versions in sorted(entries.items()):
        holding = [e for e in versions if not effective.holds_at(_version(e), at, reading)]
        for e in versions:
            why = effective.holds_at(_version(e), at, reading)
            scheduled = _version(e).start > at and asked is None and bool(holding)
            if why and not scheduled:
                raise _fail(f"{e.kind} {name} (seq {e.seq})",
                            f"the answer rests on it as of {effective.format_instant(at)}, but {why}")


def _check_picked(
    kind: str, name: str, shown: Sequence[log.LogEntry], proven: Sequence[log.LogEntry], at: datetime, reading: str,
) -> None:
    """The version shown must be the one the rule picks among the versions the answer proves:
    no other proven version may start later (or at the same start, with a later seq) and
    already be known and started at the instant. Otherwise an older version could be shown
    beside a latest one that is already in effect, as if that one were only scheduled."""
    if not shown:
        return
    picked = _version(shown[0])
    for e in proven:
        v = _version(e)
        if e.seq == picked.seq or (v.start, v.seq) < (picked.start, picked.seq) or v.start > at:
            continue
        if reading == effective.PUBLISHED and v.publish_time > at:
            continue
        raise _fail(f"{kind} {name} (seq {picked.seq})",
                    f"shown as of {effective.format_instant(at)}, but version @{v.seq}, also in the "
                    "answer, supersedes it then")


def _version(entry: log.LogEntry) -> effective.Version:
    return effective.version_of(entry.seq, entry.publish_time, entry.record)


def _check_revisions(response: ds.ListRecordRevisionsResponse, entries: dict[str, list[log.LogEntry]]) -> None:
    """What a revision states beside its proof must be what the signed entry says: one record,
    newest first, each version's position, deletion and publish time."""
    names_seen = {r.proof.name for r in response.revisions}
    if len(names_seen) > 1:
        raise _fail("history", f"the answer mixes the versions of several records: {', '.join(sorted(names_seen))}")
    by_seq = {e.seq: e for versions in entries.values() for e in versions}
    last = None
    for r in response.revisions:
        entry = by_seq.get(r.proof.leaf_index + 1)
        what = f"revision {r.revision_name or '(unnamed)'}"
        if entry is None or r.seq != entry.seq or r.revision_name != f"{entry.name}@{entry.seq}":
            raise _fail(what, "its name or position is not that of its signed entry")
        if r.deleted != (entry.kind == "deletion"):
            raise _fail(what, "it says deleted where the signed entry does not, or the reverse")
        if r.HasField("publish_time") and from_timestamp(r.publish_time) != entry.publish_time:
            raise _fail(what, "its publish time is not the one the member signed")
        if last is not None and r.seq >= last:
            raise _fail(what, "the revisions are not newest first")
        last = r.seq


def _in_force_treaty(entries: dict[str, list[log.LogEntry]], name: str) -> records_pb2.Treaty | None:
    for entry in entries.get(name, []):
        if entry.kind == "treaty" and entry.entry.treaty.status == records_pb2.TREATY_STATUS_IN_FORCE:
            return entry.entry.treaty
    return None


def _check_find(
    response: ds.FindCounterpartResponse,
    entries: dict[str, list[log.LogEntry]],
    request: ds.FindCounterpartRequest | None,
) -> None:
    """Check the parts of a FindCounterpart answer the node derived from signed records."""
    candidates = {c.authority.name for c in response.candidates}
    if request is not None:
        member = request.requested_member
        for name in sorted(candidates):
            if not name.startswith(f"members/{member}/"):
                raise _fail(f"candidate {name}",
                            f"it is not an authority of {member}, the member asked about")
        wanted = f"members/{member}/rules/{request.request_type}"
        if response.HasField("rule") and response.rule.name != wanted:
            raise _fail(f"rule {response.rule.name}", f"the question was about {wanted}")
    for contact in response.contacts:
        if contact.authority not in candidates:
            raise _fail(f"contact {contact.name}",
                        f"it belongs to {contact.authority or 'no authority'}, not to a candidate")
    authorities = [c.authority for c in response.candidates]
    for cand in response.candidates:
        extra = [lang for lang in cand.matching_languages if lang not in cand.authority.languages]
        if extra:
            raise _fail(f"candidate {cand.authority.name}",
                        f"languages {', '.join(extra)} are not in its signed record")
    signed_urgent = {a.urgent_contact.SerializeToString(deterministic=True) for a in authorities}
    for uc in response.urgent_contacts:
        if uc.SerializeToString(deterministic=True) not in signed_urgent:
            raise _fail(f"urgent contact {uc.phone or uc.email or uc.description!r}",
                        "it is not the urgent contact of any verified candidate authority")
    for basis in response.legal_bases:
        what = f"legal basis {basis.instrument}"
        if request is not None:
            theirs = [f"members/{request.requested_member}/treaties/{basis.instrument}"]
        else:
            theirs = [n for n in entries if n.endswith(f"/treaties/{basis.instrument}")]
        treaty = next((t for n in theirs if (t := _in_force_treaty(entries, n))), None)
        if basis.requested_member_party and treaty is None:
            raise _fail(what, "no verified treaty record says it is in force for the requested "
                              "member")
        if treaty is not None and list(basis.declared_languages) != list(treaty.declared_languages):
            raise _fail(what, "its declared languages differ from the signed treaty record")
        if basis.requesting_member_party and request is not None:
            ours = f"members/{request.requesting_member}/treaties/{basis.instrument}"
            if _in_force_treaty(entries, ours) is None:
                raise _fail(what, f"no verified treaty record says it is in force for "
                                  f"{request.requesting_member or 'the requesting member'}")


def _check_absences(
    response: ds.FindCounterpartResponse,
    checkpoints: dict[str, log.LogCheckpoint],
    request: ds.FindCounterpartRequest | None,
) -> None:
    """Every absence the answer states is proven; and with the request, an answer without
    the requested member's rule must prove that the member has none, when its checkpoint
    signs state roots (a node must not hide a rule)."""
    proven: set[str] = set()
    for absence in response.absences:
        what = f"absence of {absence.name or '(unnamed)'}"
        try:
            member = names.parse_record_name(absence.name).member
        except CounterpartError as e:
            raise _fail(what, e) from e
        cp = checkpoints.get(member)
        if cp is None:
            raise _fail(what, f"the answer carries no signed checkpoint of {member}")
        verify_absence(absence.name, absence, cp)
        proven.add(absence.name)
    if request is None or response.HasField("rule"):
        return
    wanted = f"members/{request.requested_member}/rules/{request.request_type}"
    cp = checkpoints.get(request.requested_member)
    if cp is None:
        raise _fail(f"rule {wanted}", f"the answer carries no rule and no signed checkpoint of "
                                      f"{request.requested_member}")
    if cp.state is not None and wanted not in proven:
        raise VerificationFailed(f"the node omitted {wanted} without proof that it does not exist")


def verify_not_found(federation: Federation, name: str, proof: ds.AbsenceProof, now: datetime) -> None:
    """Verify the proof a NOT_FOUND answer carries that ``name`` does not exist: a checkpoint
    signed by the name's member, and the state leaves that bracket the name in it."""
    member = names.parse_record_name(name).member
    if proof.provenance.member != member:
        raise _fail(f"absence of {name}", f"the proof comes with a checkpoint of {proof.provenance.member!r}")
    checkpoints = _verify_provenances(federation, [proof.provenance], now)
    verify_absence(name, proof.state, checkpoints[member])


def verify_member_checkpoint(
    federation: Federation, response: ds.GetMemberResponse, member: str, now: datetime
) -> log.LogCheckpoint | None:
    """The member's checkpoint in a GetMember answer, its signature verified (None when the
    node holds nothing of the member)."""
    if response.member.code != member or not response.member.HasField("provenance"):
        return None
    return _verify_provenances(federation, [response.member.provenance], now)[member]
