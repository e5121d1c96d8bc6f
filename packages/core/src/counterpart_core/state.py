"""The state tree of a member: proof that a record is the latest, or that a name does not exist.

An inclusion proof in the member's log shows that an entry was signed, not that it is still
current: a node could serve a superseded version, or deny that a name exists (issue 10,
DESIGN §3 ``state_root``). So each checkpoint also signs the root of a second RFC 6962
Merkle tree (reusing :mod:`counterpart_core.merkle`) over the member's *current* state:
one leaf per current name (its latest entry, unless that entry is a deletion), sorted by
the name's UTF-8 bytes. Each leaf holds::

    b"counterpart.state.v1\\x00" || name || b"\\x00" || seq (8 bytes, big-endian)
        || RFC 6962 leaf hash of the entry's envelope in the log

so a state leaf names the exact log entry it stands for. Because the leaves are sorted,
two adjacent leaves that bracket a name prove that the name is not there (absence), as
does the first leaf sorting after it, the last sorting before it, or an empty tree.

Every member has two state trees:

- ``ALL``: every current record;
- ``PUBLIC``: only names whose latest entry is not members-only (DESIGN §8). A name whose
  latest entry is members-only is absent from it, so proofs in this tree never show an
  anonymous caller a members-only name, not even as the neighbour of an absent one.

Pure: no I/O. Verifiers raise :class:`~counterpart_core.errors.ProofError` (reason
``STATE_PROOF_INVALID``) and never return a boolean a caller could forget to check.
"""

from __future__ import annotations

import bisect
import hashlib
import hmac
import sys
from array import array
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from itertools import accumulate, pairwise
from typing import overload

from counterpart_core import merkle
from counterpart_core.errors import ProofError, VerificationError
from counterpart_core.query import ProofTree

__all__ = [
    "LEAF_PREFIX",
    "CurrentEntry",
    "ProvenLeaf",
    "SortedLeafTree",
    "StateLeaf",
    "StateRoots",
    "StateTree",
    "check_roots",
    "check_tree_roots",
    "leaf_data",
    "state_leaves",
    "state_roots",
    "state_trees",
    "verify_absence",
    "verify_presence",
]

LEAF_PREFIX = b"counterpart.state.v1\x00"
"""Domain separation: a state leaf can never be read as a log entry or another structure."""

_INVALID = "STATE_PROOF_INVALID"


@dataclass(frozen=True)
class StateLeaf:
    """One current name of a member: the seq and the log leaf hash of its latest entry."""

    name: str
    seq: int
    entry_hash: bytes

    @property
    def key(self) -> bytes:
        """What leaves are sorted by: the name's UTF-8 bytes."""
        return self.name.encode()

    def data(self) -> bytes:
        return leaf_data(self.name, self.seq, self.entry_hash)

    def hash(self) -> bytes:
        return merkle.leaf_hash(self.data())


def leaf_data(name: str, seq: int, entry_hash: bytes) -> bytes:
    """The bytes of a state leaf (see the module docstring)."""
    if not 0 < seq < 1 << 64:
        raise ValueError(f"seq {seq} does not fit in 8 bytes")
    if len(entry_hash) != merkle.HASH_SIZE:
        raise ValueError(f"entry hash is {len(entry_hash)} bytes, want {merkle.HASH_SIZE}")
    return LEAF_PREFIX + name.encode() + b"\x00" + seq.to_bytes(8, "big") + entry_hash


@dataclass(frozen=True)
class CurrentEntry:
    """The latest entry of one name, as storage knows it."""

    name: str
    seq: int
    entry_hash: bytes
    deleted: bool
    members_only: bool


@dataclass(frozen=True)
class StateRoots:
    """Roots and sizes of both state trees of a member, as a checkpoint signs them."""

    root: bytes
    size: int
    public_root: bytes
    public_size: int


def state_leaves(current: Iterable[CurrentEntry]) -> tuple[list[StateLeaf], list[StateLeaf]]:
    """(ALL leaves, PUBLIC leaves) of the state a member's latest entries make, sorted.

    ``current`` holds each name's latest entry once; deletions leave no leaf, and a name
    whose latest entry is members-only is left out of the public tree.
    """
    everything: list[StateLeaf] = []
    public: list[StateLeaf] = []
    for c in current:
        if c.deleted:
            continue
        leaf = StateLeaf(c.name, c.seq, c.entry_hash)
        everything.append(leaf)
        if not c.members_only:
            public.append(leaf)
    everything.sort(key=lambda leaf: leaf.key)
    public.sort(key=lambda leaf: leaf.key)
    return everything, public


def state_roots(current: Iterable[CurrentEntry]) -> StateRoots:
    """Both roots a checkpoint signs for this state."""
    everything, public = state_leaves(current)
    return StateRoots(
        merkle.root_hash([leaf.hash() for leaf in everything]), len(everything),
        merkle.root_hash([leaf.hash() for leaf in public]), len(public),
    )


class _PackedKeys(Sequence[bytes]):
    """The sorted keys of a tree read back from its bytes: one block of bytes and the end
    of each key in it, so that reading a snapshot makes no object per key. Bisecting and
    replacing a leaf in place use it as it is; an insertion or a removal first turns it
    into a list (``SortedLeafTree._mutable_keys``)."""

    __slots__ = ("_data", "_ends")

    def __init__(self, data: bytes, ends: array[int]) -> None:
        self._data, self._ends = data, ends

    def __len__(self) -> int:
        return len(self._ends) - 1

    @overload
    def __getitem__(self, i: int) -> bytes: ...
    @overload
    def __getitem__(self, i: slice) -> Sequence[bytes]: ...
    def __getitem__(self, i: int | slice) -> bytes | Sequence[bytes]:
        if isinstance(i, slice):
            return self.to_list()[i]
        if not 0 <= i < len(self._ends) - 1:
            raise IndexError("key index out of range")
        return self._data[self._ends[i] : self._ends[i + 1]]

    def to_list(self) -> list[bytes]:
        data = self._data
        return [data[a:b] for a, b in pairwise(self._ends)]

    def packed(self) -> tuple[bytes, bytes]:
        """(the ends as little-endian uint32, the keys' bytes): what ``to_bytes`` writes."""
        return _little(self._ends).tobytes(), self._data


def _little(a: array[int]) -> array[int]:
    """``a`` in little-endian byte order (a copy on a big-endian machine)."""
    if sys.byteorder == "little":
        return a
    swapped = array(a.typecode, a)
    swapped.byteswap()
    return swapped


_H = merkle.HASH_SIZE
_NODE = b"\x01"  # RFC 9162's interior node prefix, as merkle.node_hash


def _pairs(below: bytearray, start: int, stop: int) -> bytes:
    """The parents of the nodes ``2*start .. 2*stop`` of a level kept as one block of hashes."""
    sha = hashlib.sha256
    return b"".join(sha(_NODE + below[2 * j * _H : (2 * j + 2) * _H]).digest() for j in range(start, stop))


class SortedLeafTree:
    """One state tree kept up to date by changed names, for checking a new checkpoint's
    state root in O(change) instead of O(records).

    The leaves are sorted by key; the hash of every perfect subtree that starts at a
    multiple of its size (the nodes RFC 9162's tree shares with a bottom-up pairing) is
    kept by level, each level one block of 32-byte hashes. Replacing a leaf in place
    re-hashes its path (O(log n)); inserting or removing one shifts the leaves after it, so
    their subtrees are re-hashed (on average half the tree, about 1 µs a node: 50 ms at
    100,000 names, 2.5 ms at the 5,000 records of a typical member). The root folds the
    O(log n) perfect subtrees of the size, as ``merkle.CompactRange`` does, so it equals
    ``merkle.root_hash`` of the same leaves (tested against it).

    ``to_bytes`` writes the tree with every level and a SHA-256 of the rest; ``from_bytes``
    reads it back by copying blocks, without an object per leaf or node, so that a new
    process starts from a stored snapshot in milliseconds (bench/README.md, publish).
    """

    __slots__ = ("_dirty", "_keys", "_levels", "_touched")

    def __init__(self, leaves: Iterable[tuple[bytes, bytes]] = ()) -> None:
        ordered = sorted(leaves)
        if any(len(h) != _H for _, h in ordered):
            raise ValueError(f"a leaf hash is {_H} bytes")
        self._keys: list[bytes] | _PackedKeys = [k for k, _ in ordered]
        self._levels: list[bytearray] = [bytearray(b"".join(h for _, h in ordered))]
        self._dirty: int | None = 0  # leaves from this position on need their subtrees re-hashed
        self._touched: set[int] = set()  # positions replaced in place (before _dirty)

    @property
    def size(self) -> int:
        return len(self._keys)

    def to_bytes(self) -> bytes:
        """The tree, every level hashed, as bytes ``from_bytes`` reads back without hashing
        anything but a digest: the leaf count (8 bytes, big-endian), the end of each key in
        the keys' bytes (little-endian uint32, one more than the leaves), the keys, each
        level's hashes from the leaves up, then SHA-256 of everything before it."""
        self._rehash()
        keys = self._keys
        if isinstance(keys, _PackedKeys):
            ends, data = keys.packed()
        else:
            ends = _little(array("I", accumulate(map(len, keys), initial=0))).tobytes()
            data = b"".join(keys)
        body = b"".join((len(keys).to_bytes(8, "big"), ends, data, *self._levels))
        return body + hashlib.sha256(body).digest()

    @classmethod
    def from_bytes(cls, data: bytes) -> SortedLeafTree:
        """The tree ``to_bytes`` wrote; ``ValueError`` for bytes that are not one, or whose
        digest does not match (the caller also checks the root against one it trusts)."""
        data = bytes(data)
        if len(data) < 8 + _H:
            raise ValueError("a state tree needs at least its leaf count and digest")
        view = memoryview(data)
        if hashlib.sha256(view[:-_H]).digest() != data[-_H:]:
            raise ValueError("state tree bytes do not match their digest")
        n = int.from_bytes(data[:8], "big")
        ends = array("I")
        at = 8 + (n + 1) * ends.itemsize
        if len(data) < at + _H:
            raise ValueError("state tree bytes end inside the key ends")
        ends.frombytes(view[8:at])
        if sys.byteorder != "little":
            ends.byteswap()
        sizes = [n]
        while sizes[-1] > 1:
            sizes.append(sizes[-1] // 2)
        if ends[0] != 0 or len(data) - _H - at - ends[-1] != _H * sum(sizes):
            raise ValueError("state tree bytes do not hold one tree")
        keys = _PackedKeys(data[at : at + ends[-1]], ends)
        at += ends[-1]
        levels: list[bytearray] = []
        for size in sizes:
            levels.append(bytearray(view[at : at + size * _H]))
            at += size * _H
        tree = cls()
        tree._keys, tree._levels, tree._dirty = keys, levels, None
        return tree

    def copy(self) -> SortedLeafTree:
        other = SortedLeafTree()
        keys = self._keys
        other._keys = keys if isinstance(keys, _PackedKeys) else list(keys)  # packed keys are never changed
        other._levels = [bytearray(level) for level in self._levels]
        other._dirty, other._touched = self._dirty, set(self._touched)
        return other

    def _mutable_keys(self) -> list[bytes]:
        keys = self._keys
        if isinstance(keys, _PackedKeys):
            keys = self._keys = keys.to_list()
        return keys

    def put(self, key: bytes, leaf_hash: bytes) -> None:
        """The leaf of ``key`` is now ``leaf_hash`` (added if the key has none)."""
        if len(leaf_hash) != _H:
            raise ValueError(f"a leaf hash is {_H} bytes")
        i = bisect.bisect_left(self._keys, key)
        if i < len(self._keys) and self._keys[i] == key:
            self._levels[0][i * _H : (i + 1) * _H] = leaf_hash
            self._touched.add(i)
            return
        self._mutable_keys().insert(i, key)
        self._levels[0][i * _H : i * _H] = leaf_hash
        self._shifted(i)

    def remove(self, key: bytes) -> None:
        """``key`` has no leaf any more (nothing happens if it had none)."""
        i = bisect.bisect_left(self._keys, key)
        if i < len(self._keys) and self._keys[i] == key:
            del self._mutable_keys()[i]
            del self._levels[0][i * _H : (i + 1) * _H]
            self._shifted(i)

    def _shifted(self, i: int) -> None:
        self._dirty = i if self._dirty is None else min(self._dirty, i)

    def root(self) -> bytes:
        self._rehash()
        return self._fold(len(self._keys), {})

    def root_after(self, changes: Mapping[bytes, bytes | None]) -> tuple[int, bytes]:
        """(size, root) once each key of ``changes`` has that leaf hash (None: no leaf), the
        tree itself left as it is. When every change replaces a leaf the tree holds (or
        removes a key it does not hold) only the changed paths are hashed, O(change × log n);
        else a copy is changed."""
        self._rehash()
        keys, levels = self._keys, self._levels
        overlay: dict[tuple[int, int], bytes] = {}
        for key, leaf in changes.items():
            i = bisect.bisect_left(keys, key)
            held = i < len(keys) and keys[i] == key
            if leaf is None and not held:
                continue
            if leaf is None or not held or len(leaf) != _H:
                other = self.copy()
                for name, h in changes.items():
                    if h is None:
                        other.remove(name)
                    else:
                        other.put(name, h)
                return other.size, other.root()
            overlay[0, i] = leaf
        below = {i for _, i in overlay}
        for k in range(1, len(levels)):
            below = {j for j in {p >> 1 for p in below} if j < len(levels[k]) // _H}
            for j in below:
                overlay[k, j] = merkle.node_hash(self._node(k - 1, 2 * j, overlay), self._node(k - 1, 2 * j + 1, overlay))
        return len(keys), self._fold(len(keys), overlay)

    def _node(self, k: int, j: int, overlay: Mapping[tuple[int, int], bytes]) -> bytes:
        found = overlay.get((k, j))
        return found if found is not None else bytes(self._levels[k][j * _H : (j + 1) * _H])

    def _fold(self, n: int, overlay: Mapping[tuple[int, int], bytes]) -> bytes:
        """The root of the ``n`` leaves: the perfect subtrees of the size, folded from the right."""
        if n == 0:
            return merkle.root_hash([])
        subtrees: list[bytes] = []
        offset = 0
        for k in range(n.bit_length() - 1, -1, -1):
            if n >> k & 1:
                subtrees.append(self._node(k, offset >> k, overlay))
                offset += 1 << k
        root = subtrees[-1]
        for node in reversed(subtrees[:-1]):
            root = merkle.node_hash(node, root)
        return root

    def _rehash(self) -> None:
        levels = self._levels
        dirty = len(levels[0]) // _H if self._dirty is None else self._dirty
        for p in self._touched:
            if p >= dirty:
                continue  # re-hashed below
            for k in range(1, len(levels)):
                j = p >> k
                if j >= len(levels[k]) // _H:
                    break
                levels[k][j * _H : (j + 1) * _H] = _pairs(levels[k - 1], j, j + 1)
        self._touched.clear()
        if self._dirty is None:
            return
        k = 1
        while len(levels[k - 1]) > _H:
            below = levels[k - 1]
            if k == len(levels):
                levels.append(bytearray())
            level = levels[k]
            start = min(dirty >> k, len(level) // _H)
            del level[start * _H :]
            level += _pairs(below, start, len(below) // _H // 2)
            k += 1
        del levels[k:]
        self._dirty = None


def state_trees(current: Iterable[CurrentEntry]) -> tuple[SortedLeafTree, SortedLeafTree]:
    """(ALL, PUBLIC) trees of the state ``current`` makes, to be kept up to date by name."""
    everything, public = state_leaves(current)
    return (
        SortedLeafTree((leaf.key, leaf.hash()) for leaf in everything),
        SortedLeafTree((leaf.key, leaf.hash()) for leaf in public),
    )


@dataclass(frozen=True)
class ProvenLeaf:
    """A state leaf with its position and RFC 9162 inclusion path in a state tree."""

    leaf: StateLeaf
    index: int
    path: tuple[bytes, ...]


class StateTree:
    """One state tree (ALL or PUBLIC) of a member, for proofs by name."""

    def __init__(self, leaves: Sequence[StateLeaf]) -> None:
        ordered = sorted(leaves, key=lambda leaf: leaf.key)
        self._keys = [leaf.key for leaf in ordered]
        for a, b in zip(self._keys, self._keys[1:], strict=False):
            if a == b:
                raise ValueError(f"name {a.decode()!r} has two leaves in one state tree")
        self._leaves = ordered
        self._tree = ProofTree([leaf.hash() for leaf in ordered])

    @property
    def size(self) -> int:
        return self._tree.size

    @property
    def root(self) -> bytes:
        return self._tree.root

    def _proven(self, index: int) -> ProvenLeaf:
        return ProvenLeaf(self._leaves[index], index, tuple(self._tree.inclusion_path(index)))

    def find(self, name: str) -> StateLeaf | None:
        """The leaf of ``name``, if it is current in this tree."""
        key = name.encode()
        i = bisect.bisect_left(self._keys, key)
        return self._leaves[i] if i < len(self._keys) and self._keys[i] == key else None

    def prove(self, name: str) -> list[ProvenLeaf]:
        """The leaves that settle whether ``name`` is current: its own leaf (presence), or
        the neighbours that bracket it (absence: none for an empty tree, one at either end)."""
        key = name.encode()
        i = bisect.bisect_left(self._keys, key)
        if i < len(self._keys) and self._keys[i] == key:
            return [self._proven(i)]
        return [self._proven(j) for j in (i - 1, i) if 0 <= j < len(self._keys)]


# --------------------------------------------------------------------------- verifying


def _check_leaves(proven: Sequence[ProvenLeaf], size: int, root: bytes) -> None:
    """Each leaf given is in the tree of ``size`` with ``root``."""
    for p in proven:
        try:
            merkle.verify_inclusion(p.leaf.hash(), p.index, size, p.path, root)
        except ProofError as e:
            raise ProofError(f"state leaf {p.leaf.name!r}: {e.message}", reason=_INVALID) from e
        except ValueError as e:  # a seq or hash that cannot make a leaf at all
            raise ProofError(f"state leaf {p.leaf.name!r}: {e}", reason=_INVALID) from e


def verify_presence(name: str, proven: Sequence[ProvenLeaf], size: int, root: bytes) -> StateLeaf:
    """Check that ``name`` is current in the state tree of ``size`` with ``root``; returns
    its leaf (the seq and log leaf hash of its latest entry)."""
    if len(proven) != 1 or proven[0].leaf.name != name:
        raise ProofError(f"the state proof of {name!r} does not hold its leaf", reason=_INVALID)
    _check_leaves(proven, size, root)
    return proven[0].leaf


def verify_absence(name: str, proven: Sequence[ProvenLeaf], size: int, root: bytes) -> None:
    """Check that ``name`` has no leaf in the state tree of ``size`` with ``root``: the tree
    is empty, or its first leaf sorts after the name, or its last before, or two adjacent
    leaves bracket it."""
    key = name.encode()
    _check_leaves(proven, size, root)
    if size == 0:
        if proven or not hmac.compare_digest(root, merkle.root_hash([])):
            raise ProofError(f"absence of {name!r}: not the empty state tree", reason=_INVALID)
        return
    if len(proven) == 1:
        p = proven[0]
        if p.index == 0 and key < p.leaf.key:
            return
        if p.index == size - 1 and p.leaf.key < key:
            return
    elif len(proven) == 2:
        lo, hi = proven
        if hi.index == lo.index + 1 and lo.leaf.key < key < hi.leaf.key:
            return
    raise ProofError(f"the leaves given do not prove that {name!r} is absent from the state", reason=_INVALID)


def check_roots(
    member: str, signed: StateRoots, current: Iterable[CurrentEntry], *, whole_log: bool
) -> None:
    """Refuse a checkpoint whose state roots are not those of the state its log makes.

    ``current`` is each name's latest entry as this node recomputes it from the log the
    checkpoint covers. The public root can always be recomputed: only members-only entries
    are ever withheld from a node, and a public record becomes members-only only after a
    public deletion (``Node.publish``), so withheld entries never change the public state.
    The whole state's root is checked only when the node holds the log whole
    (``whole_log``): a withheld entry's name is not known here.

    Raises ``VerificationError`` (reason ``STATE_ROOT_MISMATCH``).
    """
    everything, public = state_trees(current)
    check_tree_roots(member, signed, everything, public, whole_log=whole_log)


def check_tree_roots(
    member: str, signed: StateRoots, everything: SortedLeafTree, public: SortedLeafTree, *, whole_log: bool
) -> None:
    """``check_roots`` over state trees kept up to date by name (``SortedLeafTree``)."""
    checks = [("public state", signed.public_root, signed.public_size, public)]
    if whole_log:
        checks.append(("state", signed.root, signed.size, everything))
    for what, root, size, tree in checks:
        if size != tree.size or not hmac.compare_digest(root, tree.root()):
            raise VerificationError(
                f"{member}: the checkpoint's {what} root is not that of the {tree.size} current records its log "
                f"makes (it claims {size})",
                reason="STATE_ROOT_MISMATCH",
            )
