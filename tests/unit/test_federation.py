"""Federation documents: thresholds, versions, expiry (DESIGN §4)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from counterpart.v1 import federation_pb2
from counterpart_core import federation as fed
from counterpart_core import signing, tls
from counterpart_core.errors import FederationError, InvalidArgumentError
from counterpart_core.timeutil import from_timestamp

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


# --- the secretariat's edits and the diff it prints ---------------------------------------


def signed_document(roots: list[signing.SigningKey], members: dict[str, signing.SigningKey], threshold: int = 2,
                    valid_for: timedelta = timedelta(days=30)) -> bytes:
    doc = fed.new_document("casc", [k.public_bytes for k in roots], threshold, NOW, valid_for)
    for code, key in members.items():
        fed.add_member(doc, code, f"Member {code}", [key.public_bytes], [f"{code.lower()}.example:7700"])
    return signing.sign_envelope(doc.SerializeToString(deterministic=True), signing.FEDERATION_TYPE, roots)


def copy(doc: federation_pb2.FederationDocument) -> federation_pb2.FederationDocument:
    out = federation_pb2.FederationDocument()
    out.CopyFrom(doc)
    return out


def test_editing_keeps_the_validity_length_unless_told(roots: list[signing.SigningKey]) -> None:
    envelope = signed_document(roots, {}, valid_for=timedelta(days=30))
    later = NOW + timedelta(days=3)
    doc, bumped = fed.open_for_edit(envelope, later)
    assert bumped and doc.version == 2
    assert fed.validity(doc) == timedelta(days=30)
    assert from_timestamp(doc.expire_time) == later + timedelta(days=30)
    doc, _ = fed.open_for_edit(envelope, later, timedelta(days=7))
    assert fed.validity(doc) == timedelta(days=7)


def test_the_diff_names_every_change(roots: list[signing.SigningKey]) -> None:
    ge, az, ge2, root3 = (signing.SigningKey.generate() for _ in range(4))
    envelope = signed_document(roots[:2], {"GE": ge, "AZ": az})
    old = fed.parse_document(envelope)[1]
    now = NOW + timedelta(days=1)
    doc, _ = fed.open_for_edit(envelope, now)
    certificate = tls.self_signed_certificate(tls.generate_key(), "GE", ["127.0.0.1"], NOW)
    fed.add_member_key(doc, "GE", ge2.public_bytes, not_before=now)
    fed.retire_member_key(doc, "GE", ge.key_id, now + timedelta(hours=1), now)
    fed.set_member_endpoints(doc, "GE", ["node.ge.example:443"], ["node.ge.example:7701"])
    fpr = fed.add_tls_certificate(doc, "GE", certificate)
    fed.remove_member(doc, "AZ")
    fed.change_root_keys(doc, [root3.public_bytes], [roots[0].key_id[:16]], threshold=1)
    assert fed.describe_changes(old, doc) == [
        "version 1 -> 2",
        "expires 2026-12-22T12:00:00Z -> 2026-12-23T12:00:00Z (30 days after its issue)",
        f"root keys: + {root3.key_id}",
        f"root keys: - {roots[0].key_id}",
        "threshold 2 -> 1 (of 2 root keys)",
        "- member AZ (Member AZ): its keys, endpoints and certificates go",
        f"GE: ~ key {ge.key_id}: valid, no start or end -> valid until 2026-11-23T13:00:00Z",
        f"GE: + key {ge2.key_id} (valid from 2026-11-23T12:00:00Z, no end)",
        "GE: endpoints ge.example:7700 -> node.ge.example:443",
        "GE: peer endpoints (none) -> node.ge.example:7701",
        f"GE: + TLS certificate sha256:{fpr}",
    ]
    assert fed.content_changed(old, doc)
    renewed, _ = fed.open_for_edit(envelope, now)
    assert not fed.content_changed(old, renewed)
    assert fed.describe_changes(old, renewed)[0] == "version 1 -> 2"
    again = copy(doc)
    fed.add_member(again, "KZ", "Kazakhstan", [signing.SigningKey.generate().public_bytes], ["kz.example:7700"])
    assert fed.describe_changes(doc, again)[:2] == ["+ member KZ (Kazakhstan)", f"KZ: + key {again.members[-1].keys[0].key_id} (valid, no start or end)"]


def test_a_member_never_loses_its_last_valid_key(roots: list[signing.SigningKey]) -> None:
    ge = signing.SigningKey.generate()
    doc, _ = fed.open_for_edit(signed_document(roots, {"GE": ge}), NOW)
    for withdraw in (False, True):
        with pytest.raises(InvalidArgumentError) as e:
            if withdraw:
                fed.withdraw_member_key(doc, "GE", ge.key_id, NOW - timedelta(days=1), NOW)
            else:
                fed.retire_member_key(doc, "GE", ge.key_id, NOW, NOW)
        assert e.value.reason == "LAST_KEY" and "GE's last valid key" in e.value.message
    # a successor that is itself retired before the old key ends does not count
    new = fed.add_member_key(doc, "GE", signing.SigningKey.generate().public_bytes)
    fed.retire_member_key(doc, "GE", new.key_id, NOW + timedelta(hours=1), NOW)
    with pytest.raises(InvalidArgumentError, match="last valid key"):
        fed.retire_member_key(doc, "GE", ge.key_id, NOW + timedelta(hours=2), NOW)
    fed.retire_member_key(doc, "GE", ge.key_id, NOW + timedelta(minutes=30), NOW)


def test_retiring_and_withdrawing_take_the_right_instants(roots: list[signing.SigningKey]) -> None:
    ge, ge2 = signing.SigningKey.generate(), signing.SigningKey.generate()
    doc, _ = fed.open_for_edit(signed_document(roots, {"GE": ge}), NOW)
    fed.add_member_key(doc, "GE", ge2.public_bytes)
    with pytest.raises(InvalidArgumentError) as e:
        fed.withdraw_member_key(doc, "GE", ge.key_id, NOW + timedelta(minutes=1), NOW)
    assert e.value.reason == "INSTANT_IN_FUTURE" and "in the future" in e.value.message
    with pytest.raises(InvalidArgumentError) as e:
        fed.retire_member_key(doc, "GE", ge.key_id, NOW - timedelta(minutes=1), NOW)
    assert e.value.reason == "INSTANT_IN_PAST" and "withdraw-key" in e.value.message
    key = fed.retire_member_key(doc, "GE", ge.key_id, NOW + timedelta(days=1), NOW)
    with pytest.raises(InvalidArgumentError, match="never extended"):
        fed.retire_member_key(doc, "GE", ge.key_id, NOW + timedelta(days=2), NOW)
    # found compromised later: withdrawing moves the end back to the past instant
    fed.withdraw_member_key(doc, "GE", ge.key_id, NOW - timedelta(hours=1), NOW)
    assert fed.key_valid_at(key, NOW - timedelta(hours=2))
    assert not fed.key_valid_at(key, NOW - timedelta(minutes=59))
    with pytest.raises(InvalidArgumentError, match="already ends"):
        fed.withdraw_member_key(doc, "GE", ge.key_id, NOW - timedelta(minutes=30), NOW)


def test_keys_are_found_by_id_or_a_unique_prefix(roots: list[signing.SigningKey]) -> None:
    ge = signing.SigningKey.generate()
    doc, _ = fed.open_for_edit(signed_document(roots, {"GE": ge}), NOW)
    fed.add_member_key(doc, "GE", signing.SigningKey.generate().public_bytes)
    for wrong, reason in (("ed25519:0000", "KEY_NOT_FOUND"), (ge.key_id[8:12], "KEY_NOT_FOUND")):
        with pytest.raises(InvalidArgumentError) as e:
            fed.retire_member_key(doc, "GE", wrong, NOW, NOW)
        assert e.value.reason == reason and "its keys: ed25519:" in e.value.message
    with pytest.raises(InvalidArgumentError) as e:
        fed.retire_member_key(doc, "XX", ge.key_id, NOW, NOW)
    assert e.value.reason == "NOT_A_MEMBER"
    assert fed.retire_member_key(doc, "GE", ge.key_id[8:20], NOW, NOW).key_id == ge.key_id


def test_suspension_ends_every_key_and_resuming_restores_those_it_ended(roots: list[signing.SigningKey]) -> None:
    ge, ge2, ge3 = (signing.SigningKey.generate() for _ in range(3))
    doc, _ = fed.open_for_edit(signed_document(roots, {"GE": ge}), NOW)
    fed.add_member_key(doc, "GE", ge2.public_bytes)
    fed.add_member_key(doc, "GE", ge3.public_bytes)
    fed.withdraw_member_key(doc, "GE", ge.key_id, NOW - timedelta(days=1), NOW)
    before = copy(doc)
    assert fed.suspend_member(doc, "GE", NOW) == [ge2.key_id, ge3.key_id]
    member = doc.members[0]
    assert fed.suspended(member, NOW) and not fed.suspended(before.members[0], NOW)
    assert "GE: suspended (no key valid after 2026-11-22T12:00:00Z)" in fed.describe_changes(before, doc)
    with pytest.raises(InvalidArgumentError, match="already suspended"):
        fed.suspend_member(doc, "GE", NOW)
    later = NOW + timedelta(days=1)
    assert fed.resume_member(doc, "GE", later) == [ge2.key_id, ge3.key_id]
    assert not fed.suspended(member, later)
    assert from_timestamp(member.keys[0].not_after_time) == NOW - timedelta(days=1)  # the withdrawal stays
    with pytest.raises(InvalidArgumentError, match="not suspended"):
        fed.resume_member(doc, "GE", later)


@pytest.mark.parametrize("good", ["node.ge.example:7700", "127.0.0.1:1", "[::1]:65535", "localhost:7700", "a-b.c:80"])
def test_endpoints_that_are_host_and_port(good: str) -> None:
    assert fed.check_endpoint(good) == good


@pytest.mark.parametrize(
    "bad", ["node.ge.example", "node.ge.example:", ":7700", "host:0", "host:65536", "host:77a", "-host:1",
            "ho st:1", "[::1:7700", "[not-ipv6]:1", "::1:7700", "https://host:443", "host:+1", "a..b:1"],
)
def test_malformed_endpoints_are_refused(bad: str) -> None:
    with pytest.raises(InvalidArgumentError) as e:
        fed.check_endpoint(bad)
    assert e.value.reason == "INVALID_ENDPOINT" and "host:port" in e.value.message


def test_endpoints_are_replaced_and_checked(roots: list[signing.SigningKey]) -> None:
    doc, _ = fed.open_for_edit(signed_document(roots, {"GE": signing.SigningKey.generate()}), NOW)
    with pytest.raises(InvalidArgumentError) as e:
        fed.set_member_endpoints(doc, "GE", ["a.example:1", "a.example:1"], None)
    assert e.value.reason == "DUPLICATE_ENDPOINT"
    with pytest.raises(InvalidArgumentError):
        fed.add_member(doc, "AZ", "Azerbaijan", [signing.SigningKey.generate().public_bytes], ["az.example"])
    fed.set_member_endpoints(doc, "GE", None, ["p.example:7701"])
    assert list(doc.members[0].endpoints) == ["ge.example:7700"] and list(doc.members[0].peer_endpoints) == ["p.example:7701"]
    fed.set_member_endpoints(doc, "GE", [], None)
    assert not doc.members[0].endpoints


def test_root_key_and_threshold_changes_are_checked(roots: list[signing.SigningKey]) -> None:
    doc, _ = fed.open_for_edit(signed_document(roots[:2], {}), NOW)
    cases = [
        ({"threshold": 3}, "INVALID_THRESHOLD", "between 1 and the number of root keys (2)"),
        ({"threshold": 0}, "INVALID_THRESHOLD", "between 1"),
        ({"remove": [roots[0].key_id]}, "INVALID_THRESHOLD", "give --threshold"),
        ({"remove": [roots[0].key_id, roots[1].key_id], "threshold": 1}, "NO_ROOT_KEYS", "at least one root key"),
        ({"remove": [roots[2].key_id]}, "KEY_NOT_FOUND", "no key of the root matches"),
        ({"add": [roots[0].public_bytes]}, "DUPLICATE_KEY", "already a root key"),
    ]
    for kwargs, reason, text in cases:
        attempt = copy(doc)
        with pytest.raises(InvalidArgumentError) as e:
            fed.change_root_keys(attempt, **kwargs)  # type: ignore[arg-type]
        assert e.value.reason == reason and text in e.value.message, (kwargs, e.value.message)
    fed.change_root_keys(doc, [roots[2].public_bytes], [roots[0].key_id], threshold=2)
    assert [k.key_id for k in doc.root_keys] == [roots[1].key_id, roots[2].key_id] and doc.root_threshold == 2


def test_a_removed_member_takes_its_keys_along(roots: list[signing.SigningKey]) -> None:
    ge, az = signing.SigningKey.generate(), signing.SigningKey.generate()
    current = fed.verify_initial(signed_document(roots, {"GE": ge, "AZ": az}), NOW)
    doc, _ = fed.open_for_edit(current.envelope, NOW)
    assert fed.remove_member(doc, "AZ").code == "AZ"
    with pytest.raises(InvalidArgumentError, match="AZ is not a member"):
        fed.remove_member(doc, "AZ")
    envelope = signing.sign_envelope(doc.SerializeToString(deterministic=True), signing.FEDERATION_TYPE, roots)
    following = fed.verify_next(current, envelope, NOW)
    assert following.member("AZ") is None and following.member("GE") is not None


def test_the_document_file_is_replaced_whole(tmp_path: Path, roots: list[signing.SigningKey]) -> None:
    path = tmp_path / "federation.json"
    envelope = signed_document(roots, {})
    fed.write_file(path, envelope)
    assert fed.read_file(path) == signing.parse_envelope(envelope).SerializeToString(deterministic=True)
    fed.write_file(path, envelope)
    assert [p.name for p in tmp_path.iterdir()] == ["federation.json"]
