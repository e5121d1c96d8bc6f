"""Merkle trees of RFC 9162 (Certificate Transparency 2.0, same hashing as RFC 6962).

Every member's log is a Merkle tree over its entries. A checkpoint signs the tree's root
and size; an inclusion proof shows that one entry is in a signed tree, and a consistency
proof shows that a later tree only appended to an earlier one (nothing rewritten). This
module builds those roots and proofs and verifies them. It is pure: no I/O, no clock,
only ``hashlib``.

Hashing (RFC 9162 section 2.1.1) uses SHA-256 with domain separation so that a leaf can
never be passed off as an interior node (second-preimage protection):

- leaf hash: ``SHA-256(0x00 || data)``
- node hash: ``SHA-256(0x01 || left || right)``
- root of the empty tree: ``SHA-256("")``

The builders take *leaf hashes* (already ``leaf_hash``-ed entries), because callers store
those, and the tree structure only ever needs them.

Verifiers raise :class:`~counterpart_core.errors.ProofError` on every failure and
return ``None`` on success; they never return a boolean that a caller could forget to
check. Builders raise ``ValueError`` for arguments that are programming errors (an index
outside the tree, a hash of the wrong length).
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable, Sequence

from counterpart_core.errors import ProofError

__all__ = [
    "HASH_SIZE",
    "CompactRange",
    "consistency_proof",
    "consistency_proof_from",
    "inclusion_proof",
    "leaf_hash",
    "node_hash",
    "root_hash",
    "verify_consistency",
    "verify_inclusion",
]

HASH_SIZE = 32
"""Length in bytes of every hash in the tree (SHA-256)."""

_LEAF_PREFIX = b"\x00"
_NODE_PREFIX = b"\x01"
_EMPTY_ROOT = hashlib.sha256(b"").digest()
_INCLUSION_INVALID = "INCLUSION_PROOF_INVALID"
_CONSISTENCY_INVALID = "CONSISTENCY_PROOF_INVALID"

_sha256 = hashlib.sha256


# --------------------------------------------------------------------------- hashing


def leaf_hash(data: bytes) -> bytes:
    """Hash of a leaf holding ``data``: ``SHA-256(0x00 || data)`` (RFC 9162 section 2.1.1)."""
    return _sha256(_LEAF_PREFIX + data).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    """Hash of an interior node: ``SHA-256(0x01 || left || right)`` (RFC 9162 section 2.1.1)."""
    return _sha256(_NODE_PREFIX + left + right).digest()


# --------------------------------------------------------------------------- building


def _check_leaf_hashes(leaf_hashes: Sequence[bytes]) -> None:
    """Refuse leaf hashes that are not SHA-256 digests: they are a caller's bug."""
    for i, h in enumerate(leaf_hashes):
        if len(h) != HASH_SIZE:
            raise ValueError(f"leaf hash {i} is {len(h)} bytes, want {HASH_SIZE}")


def _largest_power_of_two_below(n: int) -> int:
    """The ``k`` of RFC 9162 section 2.1.1: the largest power of two smaller than ``n`` (n > 1)."""
    return 1 << ((n - 1).bit_length() - 1)


def _mth(leaf_hashes: Sequence[bytes]) -> bytes:
    """MTH over hashes already checked, computed level by level.

    Pairing neighbours on each level and promoting an unpaired last node unchanged builds
    exactly the tree of RFC 9162 section 2.1.1 (whose left subtree always holds the
    largest power of two of leaves), without recursion and with one C-level hash call
    per interior node, so a million leaves take about a second.
    """
    n = len(leaf_hashes)
    if n == 0:
        return _EMPTY_ROOT
    level: Sequence[bytes] = leaf_hashes
    prefix = _NODE_PREFIX
    sha = _sha256
    while n > 1:
        paired = [
            sha(prefix + left + right).digest()
            for left, right in zip(level[0 : n - 1 : 2], level[1:n:2], strict=True)
        ]
        if n & 1:
            paired.append(level[n - 1])
        level = paired
        n = len(level)
    return level[0]


def root_hash(leaf_hashes: Sequence[bytes]) -> bytes:
    """Merkle Tree Hash (MTH) of the tree whose leaves have these hashes (RFC 9162 2.1.1).

    The empty tree's root is ``SHA-256("")``; a one-leaf tree's root is its leaf hash.
    Raises ``ValueError`` if a leaf hash is not ``HASH_SIZE`` bytes.
    """
    _check_leaf_hashes(leaf_hashes)
    return _mth(leaf_hashes)


def inclusion_proof(leaf_hashes: Sequence[bytes], index: int) -> list[bytes]:
    """Audit path for leaf ``index`` in the tree of all ``leaf_hashes`` (RFC 9162 2.1.3.1).

    This is ``PATH(m, D[n])``: the sibling subtree roots from the leaf up to the root,
    nearest first. It lets a verifier holding only the leaf hash and the signed root
    check that the leaf is in the tree (see :func:`verify_inclusion`).

    The recursion of the RFC (split at the largest power of two ``k < n``, recurse into
    the side holding the leaf, append the other side's MTH) is unrolled into a loop; the
    sibling roots come out root-first and are reversed at the end.

    Raises ``ValueError`` unless ``0 <= index < len(leaf_hashes)`` or if a leaf hash is
    not ``HASH_SIZE`` bytes.
    """
    n = len(leaf_hashes)
    if not 0 <= index < n:
        raise ValueError(f"leaf index {index} is outside a tree of {n} leaves")
    _check_leaf_hashes(leaf_hashes)
    siblings: list[bytes] = []
    lo, hi, m = 0, n, index
    while hi - lo > 1:
        k = _largest_power_of_two_below(hi - lo)
        if m < k:
            siblings.append(_mth(leaf_hashes[lo + k : hi]))
            hi = lo + k
        else:
            siblings.append(_mth(leaf_hashes[lo : lo + k]))
            lo += k
            m -= k
    siblings.reverse()
    return siblings


def consistency_proof(leaf_hashes: Sequence[bytes], old_size: int) -> list[bytes]:
    """Proof that the first ``old_size`` leaves are a prefix of all of them (RFC 9162 2.1.4.1).

    This is ``PROOF(m, D[n]) = SUBPROOF(m, D[n], true)`` with ``m = old_size`` and
    ``n = len(leaf_hashes)``: the fewest subtree roots from which a verifier can compute
    both the old root and the new root (see :func:`verify_consistency`), which shows that
    the log only appended between the two checkpoints.

    The RFC defines the proof for ``0 < m < n``. For ``m == n`` and for ``m == 0`` there
    is nothing to prove and the result is the empty list (note that
    :func:`verify_consistency` rejects any claim from an empty tree to a non-empty one, as
    RFC 9162 gives such a claim no meaning; callers skip the check when the old tree is
    empty).

    Raises ``ValueError`` unless ``0 <= old_size <= len(leaf_hashes)`` or if a leaf hash
    is not ``HASH_SIZE`` bytes.
    """
    n = len(leaf_hashes)
    if not 0 <= old_size <= n:
        raise ValueError(f"old size {old_size} is outside 0..{n}")
    _check_leaf_hashes(leaf_hashes)
    if old_size in (0, n):
        return []
    # SUBPROOF(m, D[lo:hi], b), unrolled. Each step appends one subtree root after the
    # proof of the recursive call, so the roots are collected in reverse.
    tail: list[bytes] = []
    lo, hi, m = 0, n, old_size
    complete = True  # the "b" flag: the old tree is this very subtree so far
    while m != hi - lo:
        k = _largest_power_of_two_below(hi - lo)
        if m <= k:
            tail.append(_mth(leaf_hashes[lo + k : hi]))
            hi = lo + k
        else:
            tail.append(_mth(leaf_hashes[lo : lo + k]))
            lo += k
            m -= k
            complete = False
    proof = [] if complete else [_mth(leaf_hashes[lo:hi])]
    proof.extend(reversed(tail))
    return proof


def consistency_proof_from(old: CompactRange, new_leaf_hashes: Sequence[bytes]) -> list[bytes]:
    """``consistency_proof`` of the tree of ``old.size + len(new_leaf_hashes)`` leaves from
    ``old.size``, computed from the old tree's right frontier and the appended leaves only:
    O(log n + change) instead of O(n).

    Every node of ``PROOF(m, D[n])`` is either a perfect subtree wholly inside the first
    ``m`` leaves, and then it is one of the old tree's frontier nodes (the subtree of a set
    bit of ``m``: the RFC's split only ever hands the old side a subtree ``[lo, lo + k)``
    with ``k`` a set bit of ``m`` above those already taken), or a subtree wholly inside
    ``[m, n)``, hashed from the appended leaves. The result equals ``consistency_proof``
    (tested against it and against the RFC 6962 vectors).
    """
    _check_leaf_hashes(new_leaf_hashes)
    m = old.size
    n = m + len(new_leaf_hashes)
    if m in (0, n):
        return []
    nodes = old._nodes  # the frontier, largest subtree first
    tail: list[bytes] = []
    lo, hi, rel = 0, n, m
    complete = True
    while rel != hi - lo:
        k = _largest_power_of_two_below(hi - lo)
        if rel <= k:
            tail.append(_mth(new_leaf_hashes[lo + k - m : hi - m]))
            hi = lo + k
        else:
            # [lo, lo + k): the frontier node of bit k of m, after one node per higher set bit
            tail.append(nodes[(m >> k.bit_length()).bit_count()])
            lo += k
            rel -= k
            complete = False
    proof = [] if complete else [nodes[-1]]  # [lo, m): the subtree of m's lowest set bit
    proof.extend(reversed(tail))
    return proof


class CompactRange:
    """A Merkle tree over appended leaves that keeps only O(log n) hashes.

    The tree of ``n`` leaves is the roots of its perfect subtrees, one per set bit of
    ``n``, largest (leftmost) first: appending a leaf pushes its hash and merges equal
    sized neighbours like a binary counter carries. The root is those subtree roots folded
    right to left, which is the MTH of RFC 9162 section 2.1.1. It lets a node recompute a
    member's root while streaming millions of entries without holding their hashes.
    """

    __slots__ = ("_nodes", "_size")

    def __init__(self) -> None:
        self._size = 0
        self._nodes: list[bytes] = []

    @classmethod
    def from_leaf_hashes(cls, hashes: Iterable[bytes]) -> CompactRange:
        """A range holding ``hashes`` appended in order."""
        compact = cls()
        for h in hashes:
            compact.append(h)
        return compact

    @classmethod
    def from_frontier(cls, size: int, frontier: bytes) -> CompactRange:
        """The range of ``size`` leaves whose subtree roots, largest first, are the
        concatenated ``frontier`` (as ``frontier`` returns them): O(log n) hashes stand for
        the whole tree, so a stored log is extended without reading its leaves. Raises
        ``ValueError`` unless there is exactly one hash per set bit of ``size``."""
        if size < 0 or len(frontier) != HASH_SIZE * size.bit_count():
            raise ValueError(f"a frontier of {len(frontier)} bytes cannot stand for a tree of {size} leaves")
        compact = cls()
        compact._size = size
        compact._nodes = [frontier[i : i + HASH_SIZE] for i in range(0, len(frontier), HASH_SIZE)]
        return compact

    @property
    def frontier(self) -> bytes:
        """The roots of the perfect subtrees, largest (leftmost) first, concatenated: what
        ``from_frontier`` takes back."""
        return b"".join(self._nodes)

    def copy(self) -> CompactRange:
        return CompactRange.from_frontier(self._size, self.frontier)

    @property
    def size(self) -> int:
        """Number of leaves appended so far."""
        return self._size

    def append(self, leaf_hash: bytes) -> None:
        """Append one leaf hash; raises ``ValueError`` unless it is ``HASH_SIZE`` bytes."""
        if len(leaf_hash) != HASH_SIZE:
            raise ValueError(f"leaf hash is {len(leaf_hash)} bytes, want {HASH_SIZE}")
        node = bytes(leaf_hash)
        carry = self._size
        nodes = self._nodes
        while carry & 1:
            node = _sha256(_NODE_PREFIX + nodes.pop() + node).digest()
            carry >>= 1
        nodes.append(node)
        self._size += 1

    def root(self) -> bytes:
        """MTH of the leaves appended so far (``SHA-256("")`` when there are none)."""
        if not self._nodes:
            return _EMPTY_ROOT
        root = self._nodes[-1]
        for node in reversed(self._nodes[:-1]):
            root = node_hash(node, root)
        return root

    def __repr__(self) -> str:
        return f"CompactRange(size={self._size})"


# --------------------------------------------------------------------------- verifying


def _check_hash(value: bytes, what: str, reason: str) -> None:
    """Reject a hash that is not ``HASH_SIZE`` bytes before it is hashed or compared."""
    if len(value) != HASH_SIZE:
        raise ProofError(f"{what} is {len(value)} bytes, want {HASH_SIZE}", reason=reason)


def verify_inclusion(
    leaf_hash: bytes, index: int, tree_size: int, proof: Sequence[bytes], root: bytes
) -> None:
    """Check that ``leaf_hash`` is leaf ``index`` of the tree of ``tree_size`` with ``root``.

    Implements the verification of RFC 9162 section 2.1.3.2: walk up from the leaf,
    hashing each proof element on the side given by the bits of the index (``fn``) and of
    the last index (``sn``), and require that the proof is used up exactly when the walk
    reaches the root and that the result equals ``root``.

    Returns ``None`` on success. Raises ``ProofError`` (reason ``INCLUSION_PROOF_INVALID``)
    if the index is outside the tree, any hash is not ``HASH_SIZE`` bytes, the proof is
    too short or too long, or the computed root differs.
    """
    if tree_size < 0 or not 0 <= index < tree_size:
        raise ProofError(
            f"leaf index {index} is outside a tree of {tree_size} leaves",
            reason=_INCLUSION_INVALID,
        )
    _check_hash(leaf_hash, "leaf hash", _INCLUSION_INVALID)
    _check_hash(root, "root", _INCLUSION_INVALID)
    for i, p in enumerate(proof):
        _check_hash(p, f"inclusion proof element {i}", _INCLUSION_INVALID)

    fn, sn = index, tree_size - 1
    r = leaf_hash
    for p in proof:
        if sn == 0:
            raise ProofError(
                f"inclusion proof is longer than the path of leaf {index} in a tree of "
                f"{tree_size} leaves",
                reason=_INCLUSION_INVALID,
            )
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            if not fn & 1:
                # fn is the last node of its level and has no right sibling: it is
                # promoted unchanged, so skip the levels until it is a right child.
                while fn and not fn & 1:
                    fn >>= 1
                    sn >>= 1
        else:
            r = node_hash(r, p)
        fn >>= 1
        sn >>= 1
    if sn != 0:
        raise ProofError(
            f"inclusion proof is shorter than the path of leaf {index} in a tree of "
            f"{tree_size} leaves",
            reason=_INCLUSION_INVALID,
        )
    if not hmac.compare_digest(r, root):
        raise ProofError(
            f"inclusion proof of leaf {index} does not lead to the root of the tree of "
            f"{tree_size} leaves",
            reason=_INCLUSION_INVALID,
        )


def verify_consistency(
    old_size: int, new_size: int, old_root: bytes, new_root: bytes, proof: Sequence[bytes]
) -> None:
    """Check that the tree of ``new_size`` with ``new_root`` extends the one of ``old_size``.

    Implements the verification of RFC 9162 section 2.1.4.2 for ``0 < old_size <
    new_size``: rebuild both the old and the new root from the proof, walking up with the
    bits of ``old_size - 1`` (``fn``) and ``new_size - 1`` (``sn``), and require both to
    match and the proof to be used up exactly.

    The cases outside that range follow the transparency-dev/merkle test vectors:

    - ``old_size > new_size`` or a negative size: rejected (a log never shrinks);
    - ``old_size == new_size``: the proof must be empty and the roots equal. Their
      length is not checked: equal sizes make no claim beyond "same tree", and the
      roots themselves are validated by whoever signed them. For size 0 both roots
      must be the empty tree's root ``SHA-256("")``;
    - ``old_size == 0 < new_size``: rejected, as RFC 9162 defines no proof from an
      empty tree (every tree trivially extends it; callers skip this check instead).

    Returns ``None`` on success. Raises ``ProofError`` (reason
    ``CONSISTENCY_PROOF_INVALID``) otherwise, including for any root or proof element
    that is not ``HASH_SIZE`` bytes when a proof is checked.
    """

    def fail(message: str) -> ProofError:
        return ProofError(
            f"consistency proof from size {old_size} to {new_size}: {message}",
            reason=_CONSISTENCY_INVALID,
        )

    if old_size < 0 or new_size < 0:
        raise fail("tree sizes must not be negative")
    if old_size > new_size:
        raise fail("the new tree is smaller than the old one")
    if old_size == new_size:
        if len(proof) != 0:
            raise fail("the sizes are equal but the proof is not empty")
        if not hmac.compare_digest(old_root, new_root):
            raise fail("the sizes are equal but the roots differ")
        if old_size == 0 and not hmac.compare_digest(old_root, _EMPTY_ROOT):
            raise fail('the root of an empty tree must be SHA-256("")')
        return
    if old_size == 0:
        raise fail("there is no consistency proof from an empty tree")
    if len(proof) == 0:
        raise fail("the proof is empty")
    _check_hash(old_root, "old root", _CONSISTENCY_INVALID)
    _check_hash(new_root, "new root", _CONSISTENCY_INVALID)
    for i, p in enumerate(proof):
        _check_hash(p, f"consistency proof element {i}", _CONSISTENCY_INVALID)

    # Step 2: when the old tree is a perfect subtree, its root is the proof's first node
    # and the RFC leaves it out of the proof.
    path: list[bytes] = list(proof)
    if old_size & (old_size - 1) == 0:
        path.insert(0, old_root)
    fn, sn = old_size - 1, new_size - 1
    # Step 4: skip the levels where the old tree's last node is a right child already
    # combined inside the proof's first node.
    while fn & 1:
        fn >>= 1
        sn >>= 1
    fr = sr = path[0]
    for c in path[1:]:
        if sn == 0:
            raise fail("the proof is too long")
        if fn & 1 or fn == sn:
            fr = node_hash(c, fr)
            sr = node_hash(c, sr)
            if not fn & 1:
                while fn and not fn & 1:
                    fn >>= 1
                    sn >>= 1
        else:
            sr = node_hash(sr, c)
        fn >>= 1
        sn >>= 1
    if sn != 0:
        raise fail("the proof is too short")
    if not hmac.compare_digest(fr, old_root):
        raise fail("the proof does not lead to the old root")
    if not hmac.compare_digest(sr, new_root):
        raise fail("the proof does not lead to the new root")
