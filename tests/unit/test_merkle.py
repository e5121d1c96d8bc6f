"""Tests of counterpart_core.merkle (RFC 9162 trees, proofs and verifiers).

Three layers:

- the transparency-dev/merkle vectors in tests/vectors/merkle, one test per file: the
  verifiers accept exactly the ``wantErr: false`` cases and raise ProofError for the rest;
- the builders reproduce the vectors' roots and proofs from the RFC 6962 reference
  leaves, and agree with a literal transcription of the RFC's recursive definitions;
- hypothesis properties on random trees: every proof verifies, and any alteration of
  a proof element, index, size or root is rejected.
"""

from __future__ import annotations

import base64
import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from counterpart_core.errors import ProofError
from counterpart_core.merkle import (
    HASH_SIZE,
    CompactRange,
    consistency_proof,
    consistency_proof_from,
    inclusion_proof,
    leaf_hash,
    node_hash,
    root_hash,
    verify_consistency,
    verify_inclusion,
)

VECTORS = Path(__file__).resolve().parents[1] / "vectors" / "merkle"
INCLUSION_FILES = sorted((VECTORS / "inclusion").rglob("*.json"))
CONSISTENCY_FILES = sorted((VECTORS / "consistency").rglob("*.json"))

EMPTY_ROOT = hashlib.sha256(b"").digest()

# The leaf inputs of the RFC 6962 reference tree (transparency-dev/merkle testonly).
REFERENCE_LEAVES = [
    bytes.fromhex(h)
    for h in (
        "",
        "00",
        "10",
        "2021",
        "3031",
        "40414243",
        "5051525354555657",
        "606162636465666768696a6b6c6d6e6f",
    )
]
REFERENCE_HASHES = [leaf_hash(data) for data in REFERENCE_LEAVES]
REFERENCE_ROOT_8 = bytes.fromhex("5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328")

INCLUSION_REASON = "INCLUSION_PROOF_INVALID"
CONSISTENCY_REASON = "CONSISTENCY_PROOF_INVALID"

FAST = settings(max_examples=200, deadline=None)


def _load(path: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return data


def _b64(value: str) -> bytes:
    return base64.b64decode(value, validate=True)


def _proof(value: list[str] | None) -> list[bytes]:
    return [_b64(p) for p in value or []]


def _id(path: Path) -> str:
    return path.relative_to(VECTORS).as_posix()


def _is_numbered_happy_path(path: Path) -> bool:
    return path.name == "happy-path.json" and path.parent.name.isdigit()


def _flip(value: bytes, bit: int) -> bytes:
    """``value`` with one bit inverted (``bit`` taken modulo its length in bits)."""
    bit %= len(value) * 8
    out = bytearray(value)
    out[bit // 8] ^= 1 << (bit % 8)
    return bytes(out)


def _leaves(salt: bytes, n: int) -> list[bytes]:
    """``n`` distinct leaf hashes derived from ``salt`` (cheaper than drawing 32n bytes)."""
    return [leaf_hash(salt + i.to_bytes(4, "big")) for i in range(n)]


# --------------------------------------------------------------------------- vectors


def test_vector_directories_are_not_empty() -> None:
    """The parametrized vector tests below must not pass vacuously."""
    assert len(INCLUSION_FILES) > 0, f"no inclusion vectors under {VECTORS}"
    assert len(CONSISTENCY_FILES) > 0, f"no consistency vectors under {VECTORS}"
    for files in (INCLUSION_FILES, CONSISTENCY_FILES):
        outcomes = {_load(path)["wantErr"] for path in files}
        assert outcomes == {True, False}
    assert any(_is_numbered_happy_path(p) for p in INCLUSION_FILES)
    assert any(_is_numbered_happy_path(p) for p in CONSISTENCY_FILES)


@pytest.mark.parametrize("path", INCLUSION_FILES, ids=_id)
def test_inclusion_vector(path: Path) -> None:
    case = _load(path)
    args = (
        _b64(case["leafHash"]),
        case["leafIdx"],
        case["treeSize"],
        _proof(case["proof"]),
        _b64(case["root"]),
    )
    if case["wantErr"]:
        with pytest.raises(ProofError) as raised:
            verify_inclusion(*args)
        assert raised.value.reason == INCLUSION_REASON
    else:
        verify_inclusion(*args)  # returns None; raising would fail the test


@pytest.mark.parametrize("path", CONSISTENCY_FILES, ids=_id)
def test_consistency_vector(path: Path) -> None:
    case = _load(path)
    args = (
        case["size1"],
        case["size2"],
        _b64(case["root1"]),
        _b64(case["root2"]),
        _proof(case["proof"]),
    )
    if case["wantErr"]:
        with pytest.raises(ProofError) as raised:
            verify_consistency(*args)
        assert raised.value.reason == CONSISTENCY_REASON
    else:
        verify_consistency(*args)  # returns None; raising would fail the test


# --------------------------------------------------------------------------- builders vs vectors


def test_reference_leaves_give_the_rfc_6962_root() -> None:
    assert root_hash(REFERENCE_HASHES) == REFERENCE_ROOT_8


@pytest.mark.parametrize(
    "path", [p for p in INCLUSION_FILES if _is_numbered_happy_path(p)], ids=_id
)
def test_inclusion_proof_reproduces_vector(path: Path) -> None:
    case = _load(path)
    tree = REFERENCE_HASHES[: case["treeSize"]]
    assert len(tree) == case["treeSize"]
    assert tree[case["leafIdx"]] == _b64(case["leafHash"])
    assert root_hash(tree) == _b64(case["root"])
    assert inclusion_proof(tree, case["leafIdx"]) == _proof(case["proof"])


@pytest.mark.parametrize(
    "path", [p for p in CONSISTENCY_FILES if _is_numbered_happy_path(p)], ids=_id
)
def test_consistency_proof_reproduces_vector(path: Path) -> None:
    case = _load(path)
    tree = REFERENCE_HASHES[: case["size2"]]
    assert len(tree) == case["size2"]
    assert root_hash(tree[: case["size1"]]) == _b64(case["root1"])
    assert root_hash(tree) == _b64(case["root2"])
    assert consistency_proof(tree, case["size1"]) == _proof(case["proof"])


@pytest.mark.parametrize(
    "path", [p for p in CONSISTENCY_FILES if _is_numbered_happy_path(p)], ids=_id
)
def test_consistency_proof_from_the_old_frontier_reproduces_vector(path: Path) -> None:
    case = _load(path)
    size1, tree = case["size1"], REFERENCE_HASHES[: case["size2"]]
    old = CompactRange.from_leaf_hashes(tree[:size1])
    assert consistency_proof_from(old, tree[size1:]) == _proof(case["proof"])


# --------------------------------------------------------------------------- RFC transcription


def _largest_power_of_two_below(n: int) -> int:
    k = 1
    while k * 2 < n:
        k *= 2
    return k


def _rfc_mth(d: list[bytes]) -> bytes:
    """MTH of RFC 9162 section 2.1.1, recursively, over leaf hashes."""
    if not d:
        return EMPTY_ROOT
    if len(d) == 1:
        return d[0]
    k = _largest_power_of_two_below(len(d))
    return node_hash(_rfc_mth(d[:k]), _rfc_mth(d[k:]))


def _rfc_path(m: int, d: list[bytes]) -> list[bytes]:
    """PATH(m, D[n]) of RFC 9162 section 2.1.3.1."""
    if len(d) == 1:
        return []
    k = _largest_power_of_two_below(len(d))
    if m < k:
        return _rfc_path(m, d[:k]) + [_rfc_mth(d[k:])]
    return _rfc_path(m - k, d[k:]) + [_rfc_mth(d[:k])]


def _rfc_subproof(m: int, d: list[bytes], b: bool) -> list[bytes]:
    """SUBPROOF(m, D[n], b) of RFC 9162 section 2.1.4.1."""
    if m == len(d):
        return [] if b else [_rfc_mth(d)]
    k = _largest_power_of_two_below(len(d))
    if m <= k:
        return _rfc_subproof(m, d[:k], b) + [_rfc_mth(d[k:])]
    return _rfc_subproof(m - k, d[k:], False) + [_rfc_mth(d[:k])]


def _rfc_directions(m: int, n: int) -> list[bool]:
    """Shape of PATH(m, D[n]), leaf first: True where the sibling is on the right."""
    if n == 1:
        return []
    k = _largest_power_of_two_below(n)
    if m < k:
        return [*_rfc_directions(m, k), True]
    return [*_rfc_directions(m - k, n - k), False]


def _rfc_subproof_len(m: int, n: int, b: bool) -> int:
    """Number of hashes in SUBPROOF(m, D[n], b)."""
    if m == n:
        return 0 if b else 1
    k = _largest_power_of_two_below(n)
    if m <= k:
        return _rfc_subproof_len(m, k, b) + 1
    return _rfc_subproof_len(m - k, n - k, False) + 1


def test_builders_match_the_rfc_definitions_exhaustively() -> None:
    leaves = _leaves(b"rfc", 40)
    for n in range(41):
        tree = leaves[:n]
        assert root_hash(tree) == _rfc_mth(tree)
        for m in range(n):
            assert inclusion_proof(tree, m) == _rfc_path(m, tree)
        for m in range(1, n):
            proof = consistency_proof(tree, m)
            assert proof == _rfc_subproof(m, tree, True)
            assert len(proof) == _rfc_subproof_len(m, n, True)


def test_every_small_tree_proof_verifies() -> None:
    leaves = _leaves(b"small", 33)
    roots = [root_hash(leaves[:n]) for n in range(34)]
    for n in range(1, 34):
        for m in range(n):
            verify_inclusion(leaves[m], m, n, inclusion_proof(leaves[:n], m), roots[n])
        for m in range(1, n + 1):
            verify_consistency(m, n, roots[m], roots[n], consistency_proof(leaves[:n], m))


# --------------------------------------------------------------------------- edge cases


def test_hash_functions() -> None:
    assert HASH_SIZE == 32
    assert leaf_hash(b"abc") == hashlib.sha256(b"\x00abc").digest()
    left, right = b"L" * 32, b"R" * 32
    assert node_hash(left, right) == hashlib.sha256(b"\x01" + left + right).digest()
    assert leaf_hash(b"") != EMPTY_ROOT


def test_root_of_empty_and_single_leaf_trees() -> None:
    assert root_hash([]) == EMPTY_ROOT
    assert root_hash([REFERENCE_HASHES[3]]) == REFERENCE_HASHES[3]
    assert root_hash(tuple(REFERENCE_HASHES)) == REFERENCE_ROOT_8


def test_builders_reject_bad_arguments() -> None:
    tree = REFERENCE_HASHES[:5]
    for index in (-1, 5, 6):
        with pytest.raises(ValueError):
            inclusion_proof(tree, index)
    with pytest.raises(ValueError):
        inclusion_proof([], 0)
    for old_size in (-1, 6):
        with pytest.raises(ValueError):
            consistency_proof(tree, old_size)
    short = [*tree[:2], b"short"]
    with pytest.raises(ValueError):
        root_hash(short)
    with pytest.raises(ValueError):
        inclusion_proof(short, 0)
    with pytest.raises(ValueError):
        consistency_proof(short, 1)


def test_consistency_proof_trivial_sizes_are_empty() -> None:
    tree = REFERENCE_HASHES[:5]
    assert consistency_proof(tree, 0) == []
    assert consistency_proof(tree, 5) == []
    assert consistency_proof([], 0) == []


def test_single_leaf_inclusion() -> None:
    h = REFERENCE_HASHES[2]
    assert inclusion_proof([h], 0) == []
    verify_inclusion(h, 0, 1, [], h)
    with pytest.raises(ProofError):
        verify_inclusion(h, 0, 1, [h], h)
    with pytest.raises(ProofError):
        verify_inclusion(h, 0, 1, [], REFERENCE_HASHES[3])


def test_verify_inclusion_rejects_bad_shapes() -> None:
    tree = REFERENCE_HASHES
    root = root_hash(tree)
    proof = inclusion_proof(tree, 3)
    verify_inclusion(tree[3], 3, 8, proof, root)
    bad_calls: list[tuple[bytes, int, int, list[bytes], bytes]] = [
        (tree[3], -1, 8, proof, root),
        (tree[3], 8, 8, proof, root),
        (tree[3], 0, 0, [], EMPTY_ROOT),
        (tree[3], 3, -8, proof, root),
        (tree[3][:31], 3, 8, proof, root),
        (tree[3] + b"\x00", 3, 8, proof, root),
        (tree[3], 3, 8, proof, root[:31]),
        (tree[3], 3, 8, [*proof[:2], proof[2][:31]], root),
        (tree[3], 3, 8, [*proof, b""], root),
    ]
    for args in bad_calls:
        with pytest.raises(ProofError) as raised:
            verify_inclusion(*args)
        assert raised.value.reason == INCLUSION_REASON


def test_verify_consistency_edge_cases() -> None:
    r1 = REFERENCE_HASHES[0]
    r5 = root_hash(REFERENCE_HASHES[:5])
    verify_consistency(0, 0, EMPTY_ROOT, EMPTY_ROOT, [])
    verify_consistency(1, 1, r1, r1, [])
    verify_consistency(5, 5, r5, r5, [])
    bad_calls: list[tuple[int, int, bytes, bytes, list[bytes]]] = [
        (0, 0, r1, r1, []),  # not the empty tree's root
        (0, 0, EMPTY_ROOT, EMPTY_ROOT, [EMPTY_ROOT]),
        (5, 5, r5, r1, []),
        (5, 5, r5, r5, [r1]),
        (0, 5, EMPTY_ROOT, r5, []),
        (0, 5, EMPTY_ROOT, r5, consistency_proof(REFERENCE_HASHES[:5], 0)),
        (5, 4, r5, r1, []),
        (-1, 5, r1, r5, []),
        (1, 5, r1, r5, []),
        (1, 5, r1[:31], r5, consistency_proof(REFERENCE_HASHES[:5], 1)),
        (1, 5, r1, r5[:31], consistency_proof(REFERENCE_HASHES[:5], 1)),
        (1, 5, r1, r5, [p[:31] for p in consistency_proof(REFERENCE_HASHES[:5], 1)]),
    ]
    for args in bad_calls:
        with pytest.raises(ProofError) as raised:
            verify_consistency(*args)
        assert raised.value.reason == CONSISTENCY_REASON


def test_compact_range_basics() -> None:
    compact = CompactRange()
    assert compact.size == 0
    assert compact.root() == EMPTY_ROOT
    for i, h in enumerate(REFERENCE_HASHES, start=1):
        compact.append(h)
        assert compact.size == i
        assert compact.root() == root_hash(REFERENCE_HASHES[:i])
    assert compact.root() == REFERENCE_ROOT_8
    again = CompactRange.from_leaf_hashes(iter(REFERENCE_HASHES))
    assert again.size == 8
    assert again.root() == REFERENCE_ROOT_8
    with pytest.raises(ValueError):
        compact.append(b"too short")
    assert compact.size == 8


# --------------------------------------------------------------------------- properties


@st.composite
def _tree_and_index(draw: st.DrawFn) -> tuple[list[bytes], int]:
    n = draw(st.integers(min_value=1, max_value=300))
    salt = draw(st.binary(max_size=8))
    index = draw(st.integers(min_value=0, max_value=n - 1))
    return _leaves(salt, n), index


@st.composite
def _tree_and_old_size(draw: st.DrawFn) -> tuple[list[bytes], int]:
    n = draw(st.integers(min_value=1, max_value=300))
    salt = draw(st.binary(max_size=8))
    m = draw(st.integers(min_value=1, max_value=n))
    return _leaves(salt, n), m


@FAST
@given(_tree_and_index(), st.integers(min_value=0, max_value=255))
def test_inclusion_proofs_verify_and_resist_tampering(
    tree_and_index: tuple[list[bytes], int], bit: int
) -> None:
    tree, index = tree_and_index
    n = len(tree)
    root = root_hash(tree)
    proof = inclusion_proof(tree, index)
    verify_inclusion(tree[index], index, n, proof, root)

    def rejected(leaf: bytes, idx: int, size: int, path: list[bytes], expected_root: bytes) -> None:
        with pytest.raises(ProofError):
            verify_inclusion(leaf, idx, size, path, expected_root)

    for i in range(len(proof)):
        altered = list(proof)
        altered[i] = _flip(altered[i], bit)
        rejected(tree[index], index, n, altered, root)
    for other in range(-1, n + 2):
        if other != index:
            rejected(tree[index], other, n, proof, root)
    rejected(_flip(tree[index], bit), index, n, proof, root)
    rejected(tree[index], index, n, proof, _flip(root, bit))
    # The proof binds the tree size only through the shape of the path (which side each
    # sibling is on); the checkpoint signature binds the size to the root. So another
    # size is accepted exactly when it gives the leaf the same path shape.
    for size in {0, n - 1, n + 1, n * 2, n // 2, n + 2 ** len(proof)}:
        if size == n:
            continue
        if index < size and _rfc_directions(index, size) == _rfc_directions(index, n):
            verify_inclusion(tree[index], index, size, proof, root)
        else:
            rejected(tree[index], index, size, proof, root)
    if proof:
        rejected(tree[index], index, n, proof[:-1], root)
        rejected(tree[index], index, n, proof[1:], root)
    if len(proof) > 1:
        rejected(tree[index], index, n, proof[::-1], root)
    rejected(tree[index], index, n, [*proof, root], root)
    rejected(tree[index], index, n, [root, *proof], root)


@FAST
@given(_tree_and_old_size(), st.integers(min_value=0, max_value=255))
def test_consistency_proofs_verify_and_resist_tampering(
    tree_and_old_size: tuple[list[bytes], int], bit: int
) -> None:
    tree, m = tree_and_old_size
    n = len(tree)
    old_root, new_root = root_hash(tree[:m]), root_hash(tree)
    proof = consistency_proof(tree, m)
    verify_consistency(m, n, old_root, new_root, proof)

    def rejected(size1: int, size2: int, root1: bytes, root2: bytes, path: list[bytes]) -> None:
        with pytest.raises(ProofError):
            verify_consistency(size1, size2, root1, root2, path)

    rejected(m, n, _flip(old_root, bit), new_root, proof)
    rejected(m, n, old_root, _flip(new_root, bit), proof)
    rejected(m, n, old_root, new_root, [*proof, old_root])
    rejected(m, n, old_root, new_root, [old_root, *proof])
    if m == n:
        assert proof == []
        return
    rejected(m, n, new_root, old_root, proof)
    for i in range(len(proof)):
        altered = list(proof)
        altered[i] = _flip(altered[i], bit)
        rejected(m, n, old_root, new_root, altered)
    rejected(m, n, old_root, new_root, proof[:-1])
    rejected(m, n, old_root, new_root, proof[1:])
    # The verifier must consume exactly the proof that RFC 9162 defines for the sizes it
    # is given, so sizes whose proof has another length are always rejected.
    for size1, size2 in {(0, n), (m - 1, n), (m + 1, n), (m ^ 2, n), (m, n * 2), (m, n // 2)}:
        if (size1, size2) == (m, n):
            continue
        if not 0 < size1 < size2 or _rfc_subproof_len(size1, size2, True) != len(proof):
            rejected(size1, size2, old_root, new_root, proof)


@settings(max_examples=60, deadline=None)
@given(st.integers(min_value=0, max_value=300), st.binary(max_size=8))
def test_compact_range_matches_root_hash_for_every_prefix(n: int, salt: bytes) -> None:
    tree = _leaves(salt, n)
    compact = CompactRange()
    assert compact.root() == root_hash([])
    for i, h in enumerate(tree, start=1):
        compact.append(h)
        assert compact.size == i
        assert compact.root() == root_hash(tree[:i])
    assert CompactRange.from_leaf_hashes(tree).root() == root_hash(tree)


def test_consistency_proof_from_the_old_frontier_equals_the_full_computation_exhaustively() -> None:
    leaves = _leaves(b"frontier", 140)
    for n in range(141):
        for m in range(n + 1):
            old = CompactRange.from_leaf_hashes(leaves[:m])
            assert consistency_proof_from(old, leaves[m:n]) == consistency_proof(leaves[:n], m), (m, n)


@FAST
@given(st.integers(min_value=1, max_value=5000), st.integers(min_value=0, max_value=600), st.binary(max_size=8))
def test_consistency_proof_from_the_old_frontier_equals_the_full_computation(m: int, change: int, salt: bytes) -> None:
    tree = _leaves(salt, m + change)
    proof = consistency_proof_from(CompactRange.from_leaf_hashes(tree[:m]), tree[m:])
    assert proof == consistency_proof(tree, m)
    verify_consistency(m, m + change, root_hash(tree[:m]), root_hash(tree), proof)


def test_consistency_proof_from_rejects_a_leaf_hash_of_the_wrong_length() -> None:
    with pytest.raises(ValueError):
        consistency_proof_from(CompactRange.from_leaf_hashes(_leaves(b"x", 3)), [b"short"])
