"""Federation documents: thresholds, versions, expiry (DESIGN §4)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from counterpart.v1 import federation_pb2
from directory_server.domain import federation as fed
from directory_server.domain import signing
from directory_server.domain.errors import FederationError, InvalidArgumentError

NOW = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)


def make(version: int, roots: list[signing.SigningKey], threshold: int, signers: list[signing.SigningKey],
         valid_for: timedelta = timedelta(days=30), federation_id: str = "casc", members: tuple[str, ...] = ()) -> bytes:
    doc = fed.new_document(federation_id, [k.public_bytes for k in roots], threshold, NOW, valid_for)
    doc.version = version
    for m in members:
        fed.add_member(doc, m, m, [signing.SigningKey.generate().public_bytes], [f"127.0.0.1:{7700 + len(m)}"])
    return signing.sign_envelope(doc.SerializeToString(deterministic=True), signing.FEDERATION_TYPE, signers)


@pytest.fixture
def roots() -> list[signing.SigningKey]:
    return [signing.SigningKey.generate() for _ in range(3)]


def test_initial_document_needs_its_threshold(roots: list[signing.SigningKey]) -> None:
    assert fed.verify_initial(make(1, roots, 2, roots[:2]), NOW).version == 1
    with pytest.raises(FederationError) as e:
        fed.verify_initial(make(1, roots, 2, roots[:1]), NOW)
    assert e.value.reason == "THRESHOLD_NOT_MET"
    assert "signed by 1 of its own root keys; 2 are required" in e.value.message


def test_signatures_by_strangers_do_not_count(roots: list[signing.SigningKey]) -> None:
    strangers = [signing.SigningKey.generate(), signing.SigningKey.generate()]
    with pytest.raises(FederationError, match="THRESHOLD|signed by 0"):
        fed.verify_initial(make(1, roots, 2, strangers), NOW)


def test_expired_document_is_refused(roots: list[signing.SigningKey]) -> None:
    envelope = make(1, roots, 1, roots[:1], valid_for=timedelta(days=1))
    with pytest.raises(FederationError) as e:
        fed.verify_initial(envelope, NOW + timedelta(days=2))
    assert e.value.reason == "DOCUMENT_EXPIRED"


def test_altered_payload_fails_signature(roots: list[signing.SigningKey]) -> None:
    env = signing.parse_envelope(make(1, roots, 1, roots[:1], members=("GE",)))
    env.payload = env.payload.replace(b"GE", b"AZ")
    with pytest.raises(FederationError) as e:
        fed.verify_initial(env.SerializeToString(), NOW)
    assert e.value.reason == "THRESHOLD_NOT_MET"
    assert "1 other signature(s) did not verify" in e.value.message


def test_next_version_needs_old_and_new_thresholds(roots: list[signing.SigningKey]) -> None:
    current = fed.verify_initial(make(1, roots, 2, roots[:2]), NOW)
    assert fed.verify_next(current, make(2, roots, 2, roots[1:]), NOW).version == 2
    # rotate every root key: new keys alone are not enough, the old threshold must sign too
    new_roots = [signing.SigningKey.generate() for _ in range(2)]
    with pytest.raises(FederationError) as e:
        fed.verify_next(current, make(2, new_roots, 2, new_roots), NOW)
    assert e.value.reason == "THRESHOLD_NOT_MET" and "version 1's" in e.value.message
    assert fed.verify_next(current, make(2, new_roots, 2, new_roots + roots[:2]), NOW).version == 2


@pytest.mark.parametrize("version", [1, 3, 0])
def test_versions_that_do_not_follow_by_one_are_refused(roots: list[signing.SigningKey], version: int) -> None:
    current = fed.verify_initial(make(1, roots, 1, roots[:1]), NOW)
    with pytest.raises(FederationError) as e:
        fed.verify_next(current, make(version, roots, 1, roots), NOW)
    assert e.value.reason == "VERSION_NOT_NEXT"


def test_other_federation_is_refused(roots: list[signing.SigningKey]) -> None:
    current = fed.verify_initial(make(1, roots, 1, roots[:1]), NOW)
    with pytest.raises(FederationError) as e:
        fed.verify_next(current, make(2, roots, 1, roots, federation_id="other"), NOW)
    assert e.value.reason == "WRONG_FEDERATION"


def test_bad_thresholds_and_duplicate_members_are_refused(roots: list[signing.SigningKey]) -> None:
    with pytest.raises(InvalidArgumentError):
        fed.new_document("x", [k.public_bytes for k in roots], 4, NOW, timedelta(days=1))
    with pytest.raises(InvalidArgumentError):
        fed.new_document("x", [k.public_bytes for k in roots], 0, NOW, timedelta(days=1))
    doc = fed.new_document("x", [roots[0].public_bytes], 1, NOW, timedelta(days=1))
    fed.add_member(doc, "GE", "Georgia", [roots[1].public_bytes], [])
    with pytest.raises(InvalidArgumentError, match="already a member"):
        fed.add_member(doc, "GE", "Georgia", [roots[1].public_bytes], [])
    with pytest.raises(InvalidArgumentError, match="malformed"):
        fed.add_member(doc, "ge", "Georgia", [roots[1].public_bytes], [])


def test_member_key_validity_window() -> None:
    k = fed.public_key(signing.SigningKey.generate().public_bytes, NOW, NOW + timedelta(days=1))
    assert fed.key_valid_at(k, NOW + timedelta(hours=1))
    assert not fed.key_valid_at(k, NOW - timedelta(seconds=1))
    assert not fed.key_valid_at(k, NOW + timedelta(days=2))


def test_one_key_listed_twice_cannot_meet_a_threshold_of_two(roots: list[signing.SigningKey]) -> None:
    doc = fed.new_document("casc", [roots[0].public_bytes], 1, NOW, timedelta(days=1))
    twin = federation_pb2.PublicKey()
    twin.CopyFrom(doc.root_keys[0])
    twin.key_id = "ed25519:" + "0" * 32  # same raw key under another id
    doc.root_keys.append(twin)
    doc.root_threshold = 2
    env = signing.parse_envelope(signing.sign_envelope(doc.SerializeToString(), signing.FEDERATION_TYPE, []))
    message = signing.pae(env.payload_type, env.payload)
    env.signatures.add(key_id=doc.root_keys[0].key_id, sig=roots[0].sign(message))
    env.signatures.add(key_id=twin.key_id, sig=roots[0].sign(message))
    with pytest.raises(FederationError) as e:
        fed.verify_initial(env.SerializeToString(), NOW)
    assert e.value.reason == "MALFORMED_KEY"


def test_the_same_raw_key_twice_is_refused(roots: list[signing.SigningKey]) -> None:
    doc = fed.new_document("casc", [roots[0].public_bytes], 1, NOW, timedelta(days=1))
    doc.root_keys.append(doc.root_keys[0])
    doc.root_threshold = 2
    envelope = signing.sign_envelope(doc.SerializeToString(), signing.FEDERATION_TYPE, roots[:1])
    with pytest.raises(FederationError) as e:
        fed.verify_initial(envelope, NOW)
    assert e.value.reason == "DUPLICATE_KEY"


def test_a_bogus_extra_signature_does_not_cancel_valid_ones(roots: list[signing.SigningKey]) -> None:
    env = signing.parse_envelope(make(1, roots, 2, roots[:2]))
    env.signatures.add(key_id=roots[2].key_id, sig=b"\x00" * 64)  # added by someone relaying it
    assert fed.verify_initial(env.SerializeToString(), NOW).version == 1
    only_bogus = signing.parse_envelope(make(1, roots, 1, []))
    only_bogus.signatures.add(key_id=roots[0].key_id, sig=b"\x00" * 64)
    with pytest.raises(FederationError) as e:
        fed.verify_initial(only_bogus.SerializeToString(), NOW)
    assert e.value.reason == "THRESHOLD_NOT_MET"
