"""What lookups keep in memory of each member, valid for one generation of its state.

A member's *generation* (``Store.generations``) is its checkpoint envelope, its size and the
number of its entries held withheld: every commit that changes what a lookup answers about the
member changes it, in this process or in another one over the same database. Each answer
reads it once (one small query) and uses only what was built for exactly that generation, so
a new checkpoint invalidates everything here without any message between processes.

Everything here is bounded, in (estimated) bytes, least recently used first out:
- per member (``MAX_LIGHT_BYTES`` together): its proof tree, records with their proofs,
  state proofs, resolved places;
- the heavy parts a miss needs (``MAX_HEAVY_BYTES``): a member's place names (``PlaceNames``)
  and its state trees, dropped first and rebuilt when needed again;
- whole answers (``MAX_ANSWER_BYTES``), each keyed by everything it depends on, evicted at
  random (``Kept``'s ``scattered``).
Pieces that depend on what the caller may see are kept per visibility (public /
members-only), so an anonymous answer never reuses a piece made for a signed-in caller.
"""

from __future__ import annotations

import itertools
import random
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from counterpart.v1 import log_pb2
from counterpart_core import merkle, places, signing
from directory_server.storage.store import Generation

MIB = 1 << 20
MAX_LIGHT_BYTES = 32 * MIB
MAX_HEAVY_BYTES = 32 * MIB
MAX_ANSWER_BYTES = 64 * MIB
MAX_KEPT_PER_MEMBER = 4096  # records with their proofs, and state proofs, per member
MAX_PIECES_PER_MEMBER = 1024  # resolved places and the like, per member
# what each thing costs in memory, measured on the benchmark datasets (bench/README.md)
ROW_BYTES = 400  # a place name in PlaceNames, grouped too (measured 110-420)
STATE_BYTES = 820  # a record in the two state trees
LEAF_BYTES = 70  # a leaf of a CompactTree (all levels)
PROOF_BYTES = 2000  # a kept record or state proof, besides its envelope (counted six times: parsed too)
ANSWER_BYTES = 1024  # a kept answer, besides its serialized bytes

_K = TypeVar("_K")
_V = TypeVar("_V")


class CompactTree:
    """Every level of an RFC 6962 tree, each as one bytes object (32 bytes a node): the same
    inclusion paths as ``counterpart_core.query.ProofTree`` in a fifth of the memory."""

    def __init__(self, leaf_hashes: Sequence[bytes]) -> None:
        self.size = len(leaf_hashes)
        level = list(leaf_hashes)
        levels = [b"".join(level)]
        while len(level) > 1:
            nxt = [merkle.node_hash(level[i], level[i + 1]) for i in range(0, len(level) - 1, 2)]
            if len(level) % 2:
                nxt.append(level[-1])
            levels.append(b"".join(nxt))
            level = nxt
        self._levels = levels

    @property
    def root(self) -> bytes:
        return self._levels[-1] if self.size else merkle.root_hash([])

    def inclusion_path(self, index: int) -> list[bytes]:
        if not 0 <= index < self.size:
            raise ValueError(f"leaf {index} is outside a tree of size {self.size}")
        path: list[bytes] = []
        for level in self._levels[:-1]:
            sibling = (index ^ 1) * 32
            if sibling < len(level):
                path.append(level[sibling : sibling + 32])
            index //= 2
        return path


class PlaceNames:
    """A member's place names (gazetteer and coverage), and grouped by place, for resolving
    place queries (``counterpart_core.places``)."""

    def __init__(self, rows: Sequence[tuple[str, str, str, str, int]]) -> None:
        same: dict[str, str] = {}  # one string object per record name and subdivision code
        self.names = [
            places.PlaceName(f, d, same.setdefault(n, n), same.setdefault(sub, sub), k) for f, d, n, sub, k in rows
        ]
        self.grouped = places.group(self.names)
        self.weight = ROW_BYTES * len(self.names)


class Kept(OrderedDict[_K, tuple[_V, int]]):
    """At most ``limit`` items and ``max_weight`` of weight, least recently used out first,
    or (``scattered``) any but the newest, drawn at random: questions asked over and over in
    a cycle longer than the cache would each be evicted just before being asked again under
    LRU, and under random eviction most of them stay. Not thread-safe: its owner locks."""

    def __init__(self, limit: int, max_weight: int | None = None, scattered: bool = False) -> None:
        super().__init__()
        self.limit = limit
        self.max_weight = max_weight
        self.weight = 0
        self._draw = random.Random(0).randrange if scattered else None

    def find(self, key: _K) -> tuple[bool, _V | None]:
        item = self.get(key)
        if item is None:
            return False, None
        self.move_to_end(key)
        return True, item[0]

    def keep(self, key: _K, value: _V, weight: int = 0) -> int:
        """Store; returns the change of the weight held (what was added, less what was dropped)."""
        before = self.weight
        old = self.pop(key, None)
        if old is not None:
            self.weight -= old[1]
        self[key] = (value, weight)
        self.weight += weight
        while len(self) > 1 and (len(self) > self.limit or (self.max_weight is not None and self.weight > self.max_weight)):
            if self._draw is None:
                self.weight -= self.popitem(last=False)[1][1]
            else:
                victim = next(itertools.islice(iter(self), self._draw(len(self) - 1), None))
                self.weight -= self.pop(victim)[1]
        return self.weight - before


class MemberIndex:
    """One member's lookup state at one generation; pieces are built when first needed."""

    def __init__(self, member: str, generation: Generation) -> None:
        self.member = member
        self.generation = generation
        self.checkpoint = log_pb2.Checkpoint.FromString(
            signing.parse_envelope(generation.checkpoint, signing.CHECKPOINT_TYPE).payload
        )
        self.lock = threading.Lock()  # one build of each piece at a time
        self.tree: CompactTree | None = None
        self.provenance: Any = None  # lookup.ProvenanceBase, made at the first answer
        # heavy parts (Indexes.charge_heavy may drop them; each is read and set as one attribute)
        self.places: PlaceNames | None = None
        self.state: tuple[Any] | None = None  # (lookup.MemberState or None: no state root,) once built
        self.heavy = 0
        # (name, seq, members-only visible) -> lookup.Loaded; (name, members-only visible) -> StateProof
        self.loaded: Kept[tuple[str, int, bool], Any] = Kept(MAX_KEPT_PER_MEMBER)
        self.state_proofs: Kept[tuple[str, bool], Any] = Kept(MAX_KEPT_PER_MEMBER)
        self.pieces: Kept[tuple[object, ...], object] = Kept(MAX_PIECES_PER_MEMBER)
        self.weight = 1024

    def piece(self, key: tuple[object, ...], make: Callable[[], _V], weigh: Callable[[_V], int]) -> tuple[_V, int]:
        """A per-question piece (a resolved place, ...), made once per generation; and the
        change of weight to charge (``Indexes.charge``)."""
        with self.lock:
            found, value = self.pieces.find(key)
        if found:
            return value, 0  # type: ignore[return-value]
        made = make()
        with self.lock:
            delta = self.pieces.keep(key, made, weigh(made))
        return made, delta

    def drop_heavy(self) -> int:
        with self.lock:
            self.places = None
            self.state = None
            dropped, self.heavy = self.heavy, 0
        return dropped


class Indexes:
    """The members' indexes of one Directory, and the answers it keeps (module docstring)."""

    def __init__(
        self, max_light: int = MAX_LIGHT_BYTES, max_heavy: int = MAX_HEAVY_BYTES, max_answers: int = MAX_ANSWER_BYTES,
    ) -> None:
        self.max_light = max_light
        self.max_heavy = max_heavy
        self._by_member: OrderedDict[str, MemberIndex] = OrderedDict()
        self._heavy: OrderedDict[str, MemberIndex] = OrderedDict()
        self._light_weight = 0
        self._heavy_weight = 0
        self._answers: Kept[tuple[object, ...], Any] = Kept(1 << 30, max_answers, scattered=True)
        self._lock = threading.Lock()

    def get(self, member: str, generation: Generation) -> MemberIndex:
        with self._lock:
            idx = self._by_member.get(member)
            if idx is not None and idx.generation == generation:
                self._by_member.move_to_end(member)
                return idx
        idx = MemberIndex(member, generation)
        with self._lock:
            old = self._by_member.pop(member, None)
            if old is not None:
                self._light_weight -= old.weight
            self._by_member[member] = idx
            self._light_weight += idx.weight
            self._evict(idx)
        return idx

    def charge(self, idx: MemberIndex, weight: int) -> None:
        """Count what was kept in (or dropped from) ``idx``; evict others until the total fits."""
        with self._lock:
            idx.weight += weight
            if self._by_member.get(idx.member) is idx:
                self._light_weight += weight
                self._evict(idx)

    def _evict(self, keep: MemberIndex) -> None:
        while self._light_weight > self.max_light and len(self._by_member) > 1:
            oldest = next(iter(self._by_member))
            if self._by_member[oldest] is keep:  # in use by this answer: evict the others
                self._by_member.move_to_end(oldest)
                continue
            self._light_weight -= self._by_member.pop(oldest).weight

    def charge_heavy(self, idx: MemberIndex, weight: int) -> None:
        """Count a heavy part built into ``idx``; drop other members' heavy parts past the limit."""
        dropped: list[MemberIndex] = []
        with self._lock:
            old = self._heavy.pop(idx.member, None)
            if old is not None and old is not idx:
                self._heavy_weight -= old.heavy
                dropped.append(old)
            self._heavy[idx.member] = idx
            self._heavy_weight += weight
            idx.heavy += weight
            while self._heavy_weight > self.max_heavy and len(self._heavy) > 1:
                _, evicted = self._heavy.popitem(last=False)
                self._heavy_weight -= evicted.heavy
                dropped.append(evicted)
        for d in dropped:
            d.drop_heavy()

    def kept(self, key: tuple[object, ...]) -> object:
        """The answer kept under ``key``, or None."""
        with self._lock:
            found, value = self._answers.find(key)
        return value if found else None

    def answer(self, key: tuple[object, ...], make: Callable[[], _V], weigh: Callable[[_V], int]) -> _V:
        """A whole answer, made once for everything its key names."""
        with self._lock:
            found, value = self._answers.find(key)
        if found:
            return value  # type: ignore[return-value]
        made = make()
        with self._lock:
            self._answers.keep(key, made, weigh(made))
        return made

    def stats(self) -> dict[str, int]:
        """How much is held (tests count entries; nothing here is timed)."""
        with self._lock:
            return {
                "members": len(self._by_member),
                "light_bytes": self._light_weight,
                "heavy_members": len(self._heavy),
                "heavy_bytes": self._heavy_weight,
                "answers": len(self._answers),
                "answer_bytes": self._answers.weight,
                "kept": sum(len(i.loaded) + len(i.state_proofs) for i in self._by_member.values()),
                "pieces": sum(len(i.pieces) for i in self._by_member.values()),
            }

    def clear(self) -> None:
        with self._lock:
            self._by_member.clear()
            self._heavy.clear()
            self._light_weight = self._heavy_weight = 0
            self._answers.clear()
            self._answers.weight = 0
