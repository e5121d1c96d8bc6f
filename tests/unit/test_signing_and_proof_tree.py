"""DSSE signing details and the cached proof tree used to answer lookups."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from counterpart_core import merkle, signing
from counterpart_core.errors import SignatureError
from counterpart_core.query import ProofTree


def test_pae_matches_the_dsse_specification() -> None:
    # DSSE v1 protocol document, "Pre-Authentication Encoding" example
    assert signing.pae("http://example.com/HelloWorld", b"hello world") == (
        b"DSSEv1 29 http://example.com/HelloWorld 11 hello world"
    )


def test_verify_one_names_the_failure() -> None:
    k, other = signing.SigningKey.generate(), signing.SigningKey.generate()
    env = signing.parse_envelope(signing.sign_envelope(b"payload", "t", [k]))
    lookup = {k.key_id: k.public_bytes}.get
    assert signing.verify_one(env, lookup) == k.key_id
    env.payload = b"payloaD"
    with pytest.raises(SignatureError) as bad:
        signing.verify_one(env, lookup)
    assert bad.value.reason == "BAD_SIGNATURE"
    with pytest.raises(SignatureError) as unknown:
        signing.verify_one(signing.parse_envelope(signing.sign_envelope(b"p", "t", [other])), lookup)
    assert unknown.value.reason == "UNKNOWN_KEY"


def test_wrong_payload_type_is_refused() -> None:
    data = signing.sign_envelope(b"p", signing.CHECKPOINT_TYPE, [signing.SigningKey.generate()])
    with pytest.raises(SignatureError) as e:
        signing.parse_envelope(data, signing.ENTRY_TYPE)
    assert e.value.reason == "WRONG_PAYLOAD_TYPE"


@settings(max_examples=60, deadline=None)
@given(st.integers(min_value=1, max_value=130))
def test_proof_tree_agrees_with_the_rfc_algorithm(size: int) -> None:
    leaves = [merkle.leaf_hash(i.to_bytes(4, "big")) for i in range(size)]
    tree = ProofTree(leaves)
    root = merkle.root_hash(leaves)
    assert tree.root == root
    for index in range(size):
        path = tree.inclusion_path(index)
        assert path == merkle.inclusion_proof(leaves, index)
        merkle.verify_inclusion(leaves[index], index, size, path, root)
    with pytest.raises(ValueError):
        tree.inclusion_path(size)
