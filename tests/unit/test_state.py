"""Tests of counterpart_core.state: the state trees a checkpoint signs (issue 10 item 3).

Presence and absence (at both ends, in the middle, in an empty tree) verify against the
root; an altered leaf, path, index, size or root is refused; a members-only name never
appears in the public tree, not even as the neighbour of an absent name.
"""

from __future__ import annotations

import hashlib
from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from counterpart_core import merkle, state
from counterpart_core.errors import ProofError, VerificationError
from counterpart_core.state import CurrentEntry, ProvenLeaf, StateLeaf, StateTree


def _entry(name: str, seq: int, *, deleted: bool = False, members_only: bool = False) -> CurrentEntry:
    return CurrentEntry(name, seq, hashlib.sha256(f"{name}@{seq}".encode()).digest(), deleted, members_only)


CURRENT = [
    _entry("members/GE/authorities/pgo", 1),
    _entry("members/GE/contacts/duty-officer", 2, members_only=True),
    _entry("members/GE/contacts/press", 3),
    _entry("members/GE/rules/extradition", 4, deleted=True),
    _entry("members/GE/rules/mla.general", 7),
    _entry("members/GE/treaties/untoc", 6),
]


def _trees() -> tuple[StateTree, StateTree]:
    everything, public = state.state_leaves(CURRENT)
    return StateTree(everything), StateTree(public)


def test_leaf_data_is_prefix_name_seq_and_entry_hash() -> None:
    h = b"\x07" * 32
    assert state.leaf_data("members/GE/rules/x", 258, h) == (
        b"counterpart.state.v1\x00members/GE/rules/x\x00" + b"\x00" * 6 + b"\x01\x02" + h
    )


def test_roots_match_the_trees_and_leave_out_deletions_and_members_only() -> None:
    roots = state.state_roots(CURRENT)
    everything, public = _trees()
    assert (roots.root, roots.size) == (everything.root, 5)
    assert (roots.public_root, roots.public_size) == (public.root, 4)
    assert everything.find("members/GE/rules/extradition") is None
    assert public.find("members/GE/contacts/duty-officer") is None
    assert everything.find("members/GE/contacts/duty-officer") is not None


def test_presence_returns_the_latest_seq_and_entry_hash() -> None:
    everything, _ = _trees()
    name = "members/GE/rules/mla.general"
    leaf = state.verify_presence(name, everything.prove(name), everything.size, everything.root)
    assert leaf.seq == 7
    assert leaf.entry_hash == hashlib.sha256(f"{name}@7".encode()).digest()


@pytest.mark.parametrize(
    "name",
    [
        "members/GE/authorities/aaa",  # before the first leaf
        "members/GE/zzz",  # after the last leaf
        "members/GE/rules/extradition",  # between two leaves (deleted)
        "members/GE/contacts/q",  # between two leaves
    ],
)
def test_absence_at_both_ends_and_in_the_middle(name: str) -> None:
    everything, public = _trees()
    for tree in (everything, public):
        proof = tree.prove(name)
        assert 1 <= len(proof) <= 2
        state.verify_absence(name, proof, tree.size, tree.root)
        with pytest.raises(ProofError):
            state.verify_presence(name, proof, tree.size, tree.root)


def test_absence_in_an_empty_tree() -> None:
    empty = StateTree([])
    assert empty.prove("members/GE/rules/x") == []
    state.verify_absence("members/GE/rules/x", [], 0, empty.root)
    with pytest.raises(ProofError):
        state.verify_absence("members/GE/rules/x", [], 0, b"\x01" * 32)


def test_absence_of_a_present_name_is_refused() -> None:
    everything, _ = _trees()
    name = "members/GE/contacts/press"
    with pytest.raises(ProofError):
        state.verify_absence(name, everything.prove(name), everything.size, everything.root)
    # nor can its neighbours, with their genuine paths, hide it: they are not adjacent
    proof = everything.prove("members/GE/contacts/duty-officer") + everything.prove("members/GE/rules/mla.general")
    with pytest.raises(ProofError):
        state.verify_absence(name, proof, everything.size, everything.root)


def test_tampered_leaf_path_index_size_or_root_is_refused() -> None:
    everything, _ = _trees()
    name = "members/GE/rules/mla.general"
    [good] = everything.prove(name)
    size, root = everything.size, everything.root
    tampered = [
        replace(good, leaf=replace(good.leaf, seq=4)),  # an older version claimed as the latest
        replace(good, leaf=replace(good.leaf, entry_hash=b"\x00" * 32)),
        replace(good, path=(b"\x00" * 32, *good.path[1:])),
        replace(good, path=good.path[:-1]),
        replace(good, index=good.index - 1),
    ]
    for proof in tampered:
        with pytest.raises(ProofError):
            state.verify_presence(name, [proof], size, root)
    with pytest.raises(ProofError):
        state.verify_presence(name, [good], good.index, root)  # a leaf outside the tree
    with pytest.raises(ProofError):
        state.verify_presence(name, [good], size, b"\x02" * 32)
    with pytest.raises(ProofError):
        state.verify_presence("members/GE/rules/other", [good], size, root)


def test_a_forged_absence_with_invented_neighbours_is_refused() -> None:
    everything, _ = _trees()
    name = "members/GE/contacts/press"
    fake = [
        ProvenLeaf(StateLeaf("members/GE/contacts/a", 1, b"\x01" * 32), 1, ()),
        ProvenLeaf(StateLeaf("members/GE/contacts/z", 1, b"\x01" * 32), 2, ()),
    ]
    with pytest.raises(ProofError):
        state.verify_absence(name, fake, everything.size, everything.root)


def test_public_proofs_never_show_a_members_only_name() -> None:
    _, public = _trees()
    for name in ("members/GE/contacts/duty-officer", "members/GE/contacts/e", "members/GE/contacts/d"):
        proof = public.prove(name)
        state.verify_absence(name, proof, public.size, public.root)
        assert all("duty-officer" not in p.leaf.name for p in proof)


def test_check_roots_refuses_a_wrong_root_and_checks_the_whole_state_only_with_the_whole_log() -> None:
    roots = state.state_roots(CURRENT)
    state.check_roots("GE", roots, CURRENT, whole_log=True)
    wrong_all = replace(roots, root=b"\x00" * 32)
    with pytest.raises(VerificationError) as e:
        state.check_roots("GE", wrong_all, CURRENT, whole_log=True)
    assert e.value.reason == "STATE_ROOT_MISMATCH"
    state.check_roots("GE", wrong_all, CURRENT, whole_log=False)  # not computable: not checked
    with pytest.raises(VerificationError):
        state.check_roots("GE", replace(roots, public_size=3), CURRENT, whole_log=False)


def test_two_leaves_of_one_name_are_a_bug() -> None:
    leaf = StateLeaf("members/GE/rules/x", 1, b"\x00" * 32)
    with pytest.raises(ValueError):
        StateTree([leaf, replace(leaf, seq=2)])


@settings(max_examples=60, deadline=None)
@given(
    present=st.sets(st.text(alphabet="abcdeéწ/", min_size=1, max_size=6), max_size=40),
    asked=st.text(alphabet="abcdeéწ/", min_size=1, max_size=6),
)
def test_any_name_is_proven_present_or_absent(present: set[str], asked: str) -> None:
    tree = StateTree([StateLeaf(n, i + 1, merkle.leaf_hash(n.encode())) for i, n in enumerate(sorted(present))])
    proof = tree.prove(asked)
    if asked in present:
        assert state.verify_presence(asked, proof, tree.size, tree.root).name == asked
        with pytest.raises(ProofError):
            state.verify_absence(asked, proof, tree.size, tree.root)
    else:
        state.verify_absence(asked, proof, tree.size, tree.root)


def test_a_sorted_leaf_tree_kept_by_name_has_the_root_of_its_leaves_recomputed() -> None:
    """``SortedLeafTree`` (the state trees an append keeps up to date by name) against
    ``merkle.root_hash`` over the same sorted leaves, through random puts, removals and copies."""
    import hashlib
    import random

    from counterpart_core import merkle
    from counterpart_core.state import SortedLeafTree

    rnd = random.Random(11)
    for _ in range(200):
        tree, leaves = SortedLeafTree(), {}
        for _ in range(rnd.randint(0, 70)):
            key = str(rnd.randint(0, 45)).encode()
            if rnd.random() < 0.3:
                tree.remove(key)
                leaves.pop(key, None)
            else:
                leaves[key] = hashlib.sha256(rnd.randbytes(8)).digest()
                tree.put(key, leaves[key])
            if rnd.random() < 0.3:
                assert tree.root() == merkle.root_hash([leaves[k] for k in sorted(leaves)])
            if rnd.random() < 0.1:
                tree = tree.copy()
        assert tree.size == len(leaves)
        assert tree.root() == merkle.root_hash([leaves[k] for k in sorted(leaves)])


@settings(max_examples=60, deadline=None)
@given(st.lists(st.binary(min_size=1, max_size=12), max_size=70, unique=True), st.binary(min_size=1, max_size=12))
def test_a_sorted_leaf_tree_read_back_from_its_bytes_is_the_same_tree(keys: list[bytes], extra: bytes) -> None:
    leaves = [(k, hashlib.sha256(k).digest()) for k in keys]
    tree = state.SortedLeafTree(leaves)
    back = state.SortedLeafTree.from_bytes(tree.to_bytes())
    assert back.size == tree.size and back.root() == tree.root() == merkle.root_hash([h for _, h in sorted(leaves)])
    for t in (tree, back):  # and it goes on changing as the original does
        t.put(extra, hashlib.sha256(b"new").digest())
        if keys:
            t.remove(keys[0])
    assert back.root() == tree.root() and back.to_bytes() == tree.to_bytes()


def test_bytes_that_are_no_sorted_leaf_tree_are_refused() -> None:
    data = state.SortedLeafTree([(b"a", b"\x01" * 32), (b"b", b"\x02" * 32)]).to_bytes()
    unsorted = state.SortedLeafTree([(b"b", b"\x01" * 32), (b"c", b"\x02" * 32)]).to_bytes().replace(b"bc", b"cb")
    for bad in (b"", data[:-1], data + b"\x00", unsorted, (10**9).to_bytes(8, "big")):
        with pytest.raises(ValueError):
            state.SortedLeafTree.from_bytes(bad)
    for at in range(len(data)):  # any one byte changed: the digest no longer matches
        with pytest.raises(ValueError):
            state.SortedLeafTree.from_bytes(data[:at] + bytes([data[at] ^ 0x40]) + data[at + 1 :])


def test_the_root_after_changes_is_that_of_the_changed_tree_and_leaves_the_tree_as_it_was() -> None:
    """``root_after`` (a publish's state roots, without copying the trees) against a copy
    changed by ``put`` and ``remove`` and against ``merkle.root_hash``: replacements (hashed
    along their paths), insertions and removals (a changed copy), on trees built and read
    back from bytes."""
    import random

    rnd = random.Random(7)
    for _ in range(150):
        leaves = {str(rnd.randint(0, 90)).encode(): hashlib.sha256(rnd.randbytes(8)).digest()
                  for _ in range(rnd.randint(0, 60))}
        built = state.SortedLeafTree(leaves.items())
        for tree in (built, state.SortedLeafTree.from_bytes(built.to_bytes())):
            before = tree.to_bytes()
            changes: dict[bytes, bytes | None] = {}
            for _ in range(rnd.randint(1, 4)):
                held = sorted(leaves)
                if held and rnd.random() < 0.6:  # mostly replacements, as a publish of edits
                    changes[rnd.choice(held)] = hashlib.sha256(rnd.randbytes(8)).digest()
                elif rnd.random() < 0.5:
                    changes[str(rnd.randint(0, 90)).encode()] = None
                else:
                    changes[str(rnd.randint(91, 99)).encode()] = hashlib.sha256(rnd.randbytes(8)).digest()
            after = dict(leaves)
            for k, h in changes.items():
                if h is None:
                    after.pop(k, None)
                else:
                    after[k] = h
            expected = merkle.root_hash([after[k] for k in sorted(after)])
            assert tree.root_after(changes) == (len(after), expected)
            assert tree.to_bytes() == before  # the tree itself is unchanged
