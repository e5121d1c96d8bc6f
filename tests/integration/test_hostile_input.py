"""Hostile input to the public API, sent as raw bytes over real gRPC on loopback.

Whatever a caller sends (oversized fields, thousands of filter terms, control characters,
numbers beyond what SQL stores, bytes that are no protobuf at all), the node answers with
a status that is neither INTERNAL nor UNKNOWN, carries a google.rpc.Status with one
ErrorInfo (domain "counterpart.v1", a stable reason), and stored state does not change.
"""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, cast

import grpc
import pytest
from google.protobuf import descriptor as pb_descriptor
from google.protobuf import message as pb_message
from google.protobuf import timestamp_pb2
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2
from grpc_status import rpc_status
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from counterpart.v1 import directory_service_pb2 as ds
from counterpart.v1 import replication_service_pb2 as rs
from counterpart_core.query import encode_page_token
from counterpart_core.vocab import default_vocabularies
from directory_server.service.server import NodeServer

Served = tuple[NodeServer, grpc.Channel]
DS = "/counterpart.v1.DirectoryService/"
RS = "/counterpart.v1.ReplicationService/"
REASON_RE = re.compile(r"^[A-Z][A-Z0-9_]*[A-Z0-9]$")
MEGABYTE = 1_000_000


@dataclass
class Outcome:
    code: grpc.StatusCode
    reason: str = ""
    message: str = ""
    response: bytes = b""


def _outcome(rpc_error: grpc.RpcError) -> Outcome:
    error = cast(grpc.Call, rpc_error)  # what the channel raises is both
    code = error.code()
    assert code not in (grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN), error
    status = rpc_status.from_call(error)
    assert status is not None, f"{code.name} without google.rpc.Status details: {error}"
    info = error_details_pb2.ErrorInfo()
    assert status.details and status.details[0].Unpack(info), status
    assert info.domain == "counterpart.v1"
    # beside the ErrorInfo only the proof that a name asked for does not exist, and small
    # enough for gRPC's trailers (8 KiB soft limit)
    extra = status.details[1:]
    assert not extra or (info.reason == "RECORD_NOT_FOUND" and len(extra) == 1), status
    assert all(d.Is(ds.AbsenceProof.DESCRIPTOR) for d in extra), status
    assert status.ByteSize() < 6000
    assert REASON_RE.match(info.reason), info.reason
    assert len(status.message.encode()) <= 1000
    return Outcome(code, info.reason, status.message)


def call(channel: grpc.Channel, path: str, payload: bytes) -> Outcome:
    """A unary call as an outside client makes it: bytes out, bytes back."""
    method: grpc.UnaryUnaryMultiCallable[bytes, bytes] = channel.unary_unary(
        path, request_serializer=None, response_deserializer=None
    )
    try:
        return Outcome(grpc.StatusCode.OK, response=method(payload, timeout=30))
    except grpc.RpcError as e:
        return _outcome(e)


def call_stream(channel: grpc.Channel, path: str, payload: bytes) -> Outcome:
    method: grpc.UnaryStreamMultiCallable[bytes, bytes] = channel.unary_stream(
        path, request_serializer=None, response_deserializer=None
    )
    try:
        return Outcome(grpc.StatusCode.OK, response=b"".join(method(payload, timeout=30)))
    except grpc.RpcError as e:
        return _outcome(e)


def rejected(channel: grpc.Channel, path: str, request: pb_message.Message | bytes) -> Outcome:
    payload = request if isinstance(request, bytes) else request.SerializeToString()
    outcome = call(channel, path, payload)
    assert outcome.code == grpc.StatusCode.INVALID_ARGUMENT, outcome
    return outcome


def state(server: NodeServer) -> tuple[object, ...]:
    store = server.node.store
    return (
        store.log_size("GE"),
        store.checkpoint("GE"),
        store.federation_chain(),
        store.checkpoints(),
    )


@pytest.fixture
def node(served: Served) -> Iterator[Served]:
    """The served GE node; checks afterwards that nothing it stores changed."""
    before = state(served[0])
    yield served
    assert state(served[0]) == before


# --- the cases that used to give INTERNAL or no ErrorInfo -----------------------------------


def test_two_thousand_filter_terms(node: Served) -> None:
    _, channel = node
    terms = " AND ".join(['kind = "prosecution-office"'] * 2000)
    out = rejected(
        channel,
        DS + "ListAuthorities",
        ds.ListAuthoritiesRequest(parent="members/GE", filter=terms),
    )
    assert out.reason == "FILTER_TOO_LONG"
    many = " AND ".join(["kind=x"] * 21)  # short terms: within the length, over the count
    out = rejected(
        channel, DS + "ListContacts", ds.ListContactsRequest(parent="members/GE", filter=many)
    )
    assert out.reason == "TOO_MANY_FILTER_TERMS"
    twenty = " AND ".join(["kind = prosecution-office"] * 20)
    ok = call(
        channel,
        DS + "ListAuthorities",
        ds.ListAuthoritiesRequest(parent="members/GE", filter=twenty).SerializeToString(),
    )
    assert ok.code == grpc.StatusCode.OK
    assert len(ds.ListAuthoritiesResponse.FromString(ok.response).authorities) > 0


@pytest.mark.parametrize(
    "value",
    ['"a\x00b"', '"a\\u0000b"', '"\x1b[31m"', '"\\u001f"', '"\\ud800"', '"x\\u0085"'],
    ids=[
        "raw-nul",
        "escaped-nul",
        "raw-escape",
        "escaped-unit-separator",
        "lone-surrogate",
        "c1-control",
    ],
)
def test_control_characters_in_filter_values(node: Served, value: str) -> None:
    _, channel = node
    request = ds.ListAuthoritiesRequest(parent="members/GE", filter=f"kind = {value}")
    assert rejected(channel, DS + "ListAuthorities", request).reason == "CONTROL_CHARACTER"


def test_filter_that_is_not_json_quoted(node: Served) -> None:
    _, channel = node
    request = ds.ListRulesRequest(parent="members/GE", filter='request_type = "\\x41"')
    assert rejected(channel, DS + "ListRules", request).reason == "INVALID_FILTER"


def test_megabyte_search_query(node: Served) -> None:
    _, channel = node
    out = rejected(
        channel, DS + "SearchAuthorities", ds.SearchAuthoritiesRequest(query="ab" * (MEGABYTE // 2))
    )
    assert out.reason == "QUERY_TOO_LONG" and "1000000" in out.message
    assert (
        rejected(
            channel, DS + "SearchAuthorities", ds.SearchAuthoritiesRequest(query="a" * 201)
        ).reason
        == "QUERY_TOO_LONG"
    )
    # what folding lengthens: 200 characters that each fold to 18 letters
    out = rejected(
        channel, DS + "SearchAuthorities", ds.SearchAuthoritiesRequest(query="\ufdfa" * 200)
    )
    assert out.reason == "QUERY_TOO_LONG"
    assert (
        call(
            channel,
            DS + "SearchAuthorities",
            ds.SearchAuthoritiesRequest(query="a" * 200).SerializeToString(),
        ).code
        == grpc.StatusCode.OK
    )
    out = rejected(
        channel, DS + "SearchAuthorities", ds.SearchAuthoritiesRequest(query="bat\x00umi")
    )
    assert out.reason == "CONTROL_CHARACTER"


@pytest.mark.parametrize("version", [2**64 - 1, 2**63, 2**63 - 1, 10**12])
def test_federation_from_a_version_beyond_what_is_stored(node: Served, version: int) -> None:
    _, channel = node
    out = call(
        channel,
        RS + "GetFederation",
        rs.GetFederationRequest(from_version=version).SerializeToString(),
    )
    assert out.code == grpc.StatusCode.OK
    assert list(rs.GetFederationResponse.FromString(out.response).signed_documents) == []
    everything = call(
        channel, RS + "GetFederation", rs.GetFederationRequest(from_version=0).SerializeToString()
    )
    assert len(rs.GetFederationResponse.FromString(everything.response).signed_documents) == 1


@pytest.mark.parametrize(
    ("path", "request_"),
    [
        (DS + "GetAuthority", ds.GetAuthorityRequest(name="x" * MEGABYTE)),
        (DS + "GetContact", ds.GetContactRequest(name="members/GE/contacts/" + "a" * MEGABYTE)),
        (DS + "GetMember", ds.GetMemberRequest(name="members/" + "ა" * (MEGABYTE // 3))),
        (DS + "ListTreaties", ds.ListTreatiesRequest(parent="members/" + "G" * MEGABYTE)),
    ],
    ids=["ascii-name", "record-id", "georgian-member", "parent"],
)
def test_megabyte_names_come_back_short(
    node: Served, path: str, request_: pb_message.Message
) -> None:
    _, channel = node
    out = rejected(channel, path, request_)
    assert out.reason == "NAME_TOO_LONG"
    assert len(out.message) < 200


@pytest.mark.parametrize(
    ("path", "request_", "reason"),
    [
        (
            DS + "SearchAuthorities",
            ds.SearchAuthoritiesRequest(query="batumi", member="G" * MEGABYTE),
            "INVALID_MEMBER_CODE",
        ),
        (
            DS + "FindCounterpart",
            ds.FindCounterpartRequest(requested_member="GE", request_type="m" * MEGABYTE),
            "FIELD_TOO_LONG",
        ),
        (
            DS + "FindCounterpart",
            ds.FindCounterpartRequest(
                requested_member="GE", request_type="mla.general", offence_category="c" * 101
            ),
            "FIELD_TOO_LONG",
        ),
        (
            DS + "FindCounterpart",
            ds.FindCounterpartRequest(
                requested_member="GE", request_type="mla.general", place="Batumi" * 100_000
            ),
            "FIELD_TOO_LONG",
        ),
        (
            DS + "FindCounterpart",
            ds.FindCounterpartRequest(
                requested_member="GE", request_type="mla.general", place="Bat\x00umi"
            ),
            "CONTROL_CHARACTER",
        ),
        (
            DS + "FindCounterpart",
            ds.FindCounterpartRequest(
                requested_member="GE", request_type="mla.general", preferred_languages=["en"] * 17
            ),
            "TOO_MANY_LANGUAGES",
        ),
        (
            DS + "FindCounterpart",
            ds.FindCounterpartRequest(
                requested_member="GE",
                request_type="mla.general",
                preferred_languages=["en-" + "x" * 40],
            ),
            "FIELD_TOO_LONG",
        ),
        (
            DS + "FindCounterpart",
            ds.FindCounterpartRequest(
                requested_member="GE", request_type="mla.general", requesting_member="UA" * 100
            ),
            "FIELD_TOO_LONG",
        ),
        (
            DS + "FindCounterpart",
            ds.FindCounterpartRequest(requested_member="GE\n", request_type="mla.general"),
            "CONTROL_CHARACTER",
        ),
        (
            DS + "GetAuthority",
            ds.GetAuthorityRequest(name="members/GE/authorities/ajara-po\n"),
            "CONTROL_CHARACTER",
        ),
        (DS + "GetMember", ds.GetMemberRequest(name="members/GE\x00"), "CONTROL_CHARACTER"),
        (
            DS + "ListAuthorities",
            ds.ListAuthoritiesRequest(parent="members/GE", page_size=-1),
            "INVALID_PAGE_SIZE",
        ),
        (DS + "ListMembers", ds.ListMembersRequest(page_size=-(2**31)), "INVALID_PAGE_SIZE"),
        (
            DS + "SearchAuthorities",
            ds.SearchAuthoritiesRequest(query="batumi", page_size=-5),
            "INVALID_PAGE_SIZE",
        ),
        (
            DS + "ListAuthorities",
            ds.ListAuthoritiesRequest(parent="members/GE", page_token="A" * MEGABYTE),
            "INVALID_PAGE_TOKEN",
        ),
        (DS + "ListMembers", ds.ListMembersRequest(page_token="e30"), "INVALID_PAGE_TOKEN"),
        (
            DS + "FindCounterpart",
            ds.FindCounterpartRequest(requested_member="GE", request_type="mla.general",
                                      as_of=ds.AsOf(time=timestamp_pb2.Timestamp(seconds=4_000_000_000))),
            "AS_OF_IN_FUTURE",
        ),
        (
            DS + "GetAuthority",
            ds.GetAuthorityRequest(name="members/GE/authorities/pgo",
                                   as_of=ds.AsOf(reading=ds.AS_OF_READING_PUBLISHED)),
            "AS_OF_TIME_MISSING",
        ),
        (
            DS + "ListAuthorities",
            ds.ListAuthoritiesRequest(parent="members/GE", as_of=ds.AsOf(
                time=timestamp_pb2.Timestamp(seconds=2**62), reading=ds.AS_OF_READING_IN_EFFECT)),
            "INVALID_AS_OF",
        ),
        (
            DS + "SearchAuthorities",
            ds.SearchAuthoritiesRequest(query="batumi", as_of=ds.AsOf(
                time=timestamp_pb2.Timestamp(seconds=1_700_000_000), reading=99)),  # type: ignore[arg-type]
            "INVALID_AS_OF",
        ),
        (
            DS + "GetRule",
            ds.GetRuleRequest(name="members/GE/rules/mla.general", as_of=ds.AsOf(
                time=timestamp_pb2.Timestamp(seconds=-2**62))),
            "INVALID_AS_OF",
        ),
        (
            RS + "GetConsistencyProof",
            rs.GetConsistencyProofRequest(member="G" * MEGABYTE, first_size=1, second_size=2),
            "INVALID_MEMBER_CODE",
        ),
        (
            RS + "GetConsistencyProof",
            rs.GetConsistencyProofRequest(member="GE", first_size=2**64 - 1, second_size=2**64 - 1),
            "INVALID_RANGE",
        ),
    ],
)
def test_bounds_on_every_field(
    node: Served, path: str, request_: pb_message.Message, reason: str
) -> None:
    _, channel = node
    out = rejected(channel, path, request_)
    assert out.reason == reason, out
    assert len(out.message) < 400


@pytest.mark.parametrize("position", ["²", "\x00", "1\n", "é"])
def test_forged_page_tokens(node: Served, position: str) -> None:
    """Tokens made as the service makes them (the format is no secret) but holding a position
    the service never issues: refused, not passed on to the store."""
    _, channel = node
    for path, request_, scope, fine in (
        (
            DS + "SearchAuthorities",
            ds.SearchAuthoritiesRequest(query="batumi", page_token="{}"),
            "search||batumi",
            "9" * 300,
        ),
        (DS + "ListMembers", ds.ListMembersRequest(page_token="{}"), "members", "A"),
        (
            DS + "ListRules",
            ds.ListRulesRequest(parent="members/-", page_token="{}"),
            "rule|members/-|",
            "members/GE",
        ),
    ):
        request_.page_token = encode_page_token(scope, fine)
        assert call(channel, path, request_.SerializeToString()).code == grpc.StatusCode.OK
        request_.page_token = encode_page_token(scope, position)
        assert rejected(channel, path, request_).reason == "INVALID_PAGE_TOKEN"


def test_page_size_over_the_maximum_is_clamped(node: Served) -> None:
    _, channel = node
    out = call(
        channel,
        DS + "ListAuthorities",
        ds.ListAuthoritiesRequest(parent="members/-", page_size=2**31 - 1).SerializeToString(),
    )
    assert out.code == grpc.StatusCode.OK
    resp = ds.ListAuthoritiesResponse.FromString(out.response)
    assert len(resp.authorities) == 12 and not resp.next_page_token


def test_page_tokens_still_page(node: Served) -> None:
    """Tokens no longer carry the filter: a long filter still pages, and a token is refused
    for another filter."""
    _, channel = node
    filt = " AND ".join(['kind != "no-such-kind-' + str(i) + '"' for i in range(20)])
    seen: list[str] = []
    token = ""
    for _ in range(10):
        req = ds.ListAuthoritiesRequest(
            parent="members/GE", page_size=4, page_token=token, filter=filt
        )
        out = call(channel, DS + "ListAuthorities", req.SerializeToString())
        assert out.code == grpc.StatusCode.OK
        resp = ds.ListAuthoritiesResponse.FromString(out.response)
        seen += [a.name for a in resp.authorities]
        token = resp.next_page_token
        assert len(token) < 200
        if not token:
            break
    assert len(seen) == 12 == len(set(seen))
    first = ds.ListAuthoritiesResponse.FromString(
        call(
            channel,
            DS + "ListAuthorities",
            ds.ListAuthoritiesRequest(parent="members/GE", page_size=4).SerializeToString(),
        ).response
    )
    other = ds.ListAuthoritiesRequest(
        parent="members/GE", page_size=4, page_token=first.next_page_token, filter='kind = "x"'
    )
    assert rejected(channel, DS + "ListAuthorities", other).reason == "INVALID_PAGE_TOKEN"


# --- bytes that are not the request message ------------------------------------------------

STREAM_METHODS = [RS + "GetEntries", RS + "WatchCheckpoints", "/grpc.health.v1.Health/Watch"]
# undecodable whatever the message: a truncated varint, a length beyond the end, an end-group
# tag that no group started, a tag with no value after it
MALFORMED = [b"\xff\xff\xff", b"\x0a\x7fabc", b"\x0c", b"\x08"]
INVALID_UTF8 = (
    b"\x0a\x02\xff\xfe"  # field 1 with invalid UTF-8: malformed where field 1 is a string
)


def _unary_methods() -> dict[str, type[pb_message.Message]]:
    out: dict[str, type[pb_message.Message]] = {
        "/grpc.health.v1.Health/Check": health_pb2.HealthCheckRequest
    }
    for module, service in ((ds, "DirectoryService"), (rs, "ReplicationService")):
        for m in module.DESCRIPTOR.services_by_name[service].methods:
            if not m.server_streaming:
                out[f"/{m.containing_service.full_name}/{m.name}"] = getattr(
                    module, m.input_type.name
                )
    return out


UNARY_METHODS = _unary_methods()


@pytest.mark.parametrize("path", sorted(UNARY_METHODS))
def test_malformed_bytes_unary(node: Served, path: str) -> None:
    _, channel = node
    first = UNARY_METHODS[path].DESCRIPTOR.fields_by_number.get(1)
    string_first = first is not None and first.type == pb_descriptor.FieldDescriptor.TYPE_STRING
    for payload in MALFORMED + ([INVALID_UTF8] if string_first else []):
        out = call(channel, path, payload)
        assert (out.code, out.reason) == (grpc.StatusCode.INVALID_ARGUMENT, "MALFORMED_REQUEST"), (
            payload,
            out,
        )
        assert path in out.message


@pytest.mark.parametrize("path", STREAM_METHODS)
def test_malformed_bytes_server_streaming(node: Served, path: str) -> None:
    _, channel = node
    out = call_stream(channel, path, b"\xff\xff\xff")
    assert (out.code, out.reason) == (grpc.StatusCode.INVALID_ARGUMENT, "MALFORMED_REQUEST"), out


def test_malformed_bytes_bidirectional_streaming(node: Served) -> None:
    """Reflection is a stream-stream method: the first undecodable message ends the call."""
    _, channel = node
    method: grpc.StreamStreamMultiCallable[bytes, bytes] = channel.stream_stream(
        "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
        request_serializer=None,
        response_deserializer=None,
    )
    with pytest.raises(grpc.RpcError) as e:
        list(method(iter([b"\xff\xff\xff"]), timeout=30))
    assert _outcome(e.value).reason == "MALFORMED_REQUEST"


# --- fuzzing: every request type, and random bytes -----------------------------------------
# Each call has a few fields drawn from hostile values and the others from plausible ones, so
# that calls get past the first check often enough to reach the store.

_VOCAB = default_vocabularies()
REQUEST_TYPES = sorted(t.code for t in _VOCAB.request_types)
OFFENCES = sorted(t.code for t in _VOCAB.offence_categories)
IDS = ["ajara-po", "pgo", "tbilisi-po", "mla-desk", "duty-24-7", "mla.general", "extradition", "x"]
COLLECTIONS = ["authorities", "contacts", "rules", "treaties"]
NAMES = st.one_of(
    st.sampled_from(
        ["members/GE", "members/-", "members/UA", "members/", "members/GE/authorities/"]
    ),
    st.builds("members/GE/{}/{}".format, st.sampled_from(COLLECTIONS), st.sampled_from(IDS)),
)
CODES = ["GE", "UA", "ge", "", "EUROJUST"]
PLACES = [
    "GE-AJ",
    "GE-TB",
    "Batumi",
    "ბათუმი",
    "Батуми",
    "6000",
    "0102",
    "GE-",
    "UA-30",
    "",
    "  batumi  ",
]
FILTERS = [
    'kind = "prosecution-office"',
    "kind != x",
    "member = GE",
    'parent = "members/GE/authorities/pgo"',
    "role = x",
    "request_type = mla.general",
    "status = TREATY_STATUS_IN_FORCE",
    "instrument = x",
    'authority = "members/GE/authorities/pgo"',
]
LANGUAGES = ["ka", "en", "ru", "en-GB", "fr"]

_fragment = st.one_of(
    st.sampled_from(CODES + PLACES + FILTERS + LANGUAGES + IDS),
    st.text(max_size=40),
    st.text(alphabet=st.characters(codec="ascii"), max_size=40),
)
_oversized = st.builds(lambda s, n: s * n, st.text(min_size=1, max_size=4), st.integers(50, 20_000))
_token = st.one_of(
    st.builds(
        lambda s, p: base64.urlsafe_b64encode(json.dumps({"s": s, "p": p}).encode()).decode(),
        st.text(max_size=20),
        st.one_of(st.text(max_size=30), st.integers(), st.none()),
    ),
    st.builds(
        encode_page_token,
        st.sampled_from(["members", "search||batumi", "authority|members/GE|"]),
        st.text(max_size=30),
    ),
)
HOSTILE_STRINGS = st.one_of(
    _fragment,
    _oversized,
    _token,
    st.lists(_fragment, min_size=1, max_size=40).map(" AND ".join),
    st.lists(_fragment, min_size=1, max_size=4).map("/".join),
)
PLAUSIBLE: dict[str, st.SearchStrategy[object]] = {
    "name": NAMES,
    "parent": NAMES,
    "member": st.sampled_from(CODES),
    "requested_member": st.sampled_from(CODES),
    "requesting_member": st.sampled_from(CODES),
    "request_type": st.sampled_from(REQUEST_TYPES + ["", "mla.nothing"]),
    "offence_category": st.sampled_from(OFFENCES + [""]),
    "place": st.sampled_from(PLACES),
    "preferred_languages": st.lists(st.sampled_from(LANGUAGES), max_size=4),
    "filter": st.lists(st.sampled_from(FILTERS), max_size=4).map(" AND ".join),
    "query": st.sampled_from(
        ["batumi", "prok", "ბათუმი", "Батуми", "po", "tbilisi prosecutor", "zz"]
    ),
    "page_token": st.one_of(st.just(""), _token),
    "page_size": st.integers(0, 600),
    "stage": st.integers(0, 6),
    "urgent": st.booleans(),
    "from_version": st.integers(0, 3),
    "first_size": st.integers(0, 60),
    "second_size": st.integers(0, 60),
    # unset (the current answer) or an instant in the past, either reading
    "as_of": st.one_of(st.none(), st.builds(
        lambda s, r: ds.AsOf(time=timestamp_pb2.Timestamp(seconds=s), reading=r),
        st.integers(0, 1_750_000_000), st.sampled_from([0, 1, 2]),
    )),
}

_INT_RANGES = {
    pb_descriptor.FieldDescriptor.TYPE_INT32: (-(2**31), 2**31 - 1),
    pb_descriptor.FieldDescriptor.TYPE_ENUM: (-(2**31), 2**31 - 1),
    pb_descriptor.FieldDescriptor.TYPE_UINT32: (0, 2**32 - 1),
    pb_descriptor.FieldDescriptor.TYPE_INT64: (-(2**63), 2**63 - 1),
    pb_descriptor.FieldDescriptor.TYPE_UINT64: (0, 2**64 - 1),
}


def _hostile(field: pb_descriptor.FieldDescriptor) -> st.SearchStrategy[object]:
    if field.type == pb_descriptor.FieldDescriptor.TYPE_STRING:
        single: st.SearchStrategy[object] = HOSTILE_STRINGS
    elif field.type == pb_descriptor.FieldDescriptor.TYPE_BOOL:
        single = st.booleans()
    elif field.message_type is not None and field.message_type.full_name == "counterpart.v1.AsOf":
        single = st.builds(
            lambda s, n, r, has_time: ds.AsOf(time=timestamp_pb2.Timestamp(seconds=s, nanos=n), reading=r)
            if has_time else ds.AsOf(reading=r),
            st.one_of(st.integers(-(2**63), 2**63 - 1), st.sampled_from([0, -1, 2**40, -(2**40), 253402300800])),
            st.integers(-(2**31), 2**31 - 1), st.integers(-(2**31), 2**31 - 1), st.booleans(),
        )
    elif field.type in _INT_RANGES:
        lo, hi = _INT_RANGES[field.type]
        edges = [v for v in (lo, hi, -1, 0, 1, 2**31 - 1, 2**63 - 1) if lo <= v <= hi]
        single = st.one_of(st.integers(lo, hi), st.sampled_from(edges))
    else:
        raise AssertionError(f"no strategy for {field.full_name}; add one")
    return st.lists(single, max_size=24) if field.is_repeated else single


def requests(cls: type[pb_message.Message]) -> st.SearchStrategy[bytes]:
    """Every field the request message has (new fields are covered as they are added): a
    few hostile, the others plausible, so that the call gets past the other fields' checks."""
    fields: list[Any] = list(cls.DESCRIPTOR.fields)
    if not fields:
        return st.just(b"")

    @st.composite
    def build(draw: st.DrawFn) -> bytes:
        hostile = draw(st.sets(st.sampled_from([f.name for f in fields])))
        values = {
            f.name: draw(
                _hostile(f) if f.name in hostile or f.name not in PLAUSIBLE else PLAUSIBLE[f.name]
            )
            for f in fields
        }
        return cls(**values).SerializeToString()

    return build()


GROUPS: dict[str, dict[str, type[pb_message.Message]]] = {
    "get": {
        DS + "GetAuthority": ds.GetAuthorityRequest,
        DS + "GetContact": ds.GetContactRequest,
        DS + "GetRule": ds.GetRuleRequest,
        DS + "GetTreaty": ds.GetTreatyRequest,
        DS + "GetPlace": ds.GetPlaceRequest,
        DS + "GetMember": ds.GetMemberRequest,
        DS + "ListRecordRevisions": ds.ListRecordRevisionsRequest,
    },
    "list": {
        DS + "ListAuthorities": ds.ListAuthoritiesRequest,
        DS + "ListContacts": ds.ListContactsRequest,
        DS + "ListRules": ds.ListRulesRequest,
        DS + "ListTreaties": ds.ListTreatiesRequest,
        DS + "ListPlaces": ds.ListPlacesRequest,
        DS + "ListMembers": ds.ListMembersRequest,
    },
    "search": {DS + "SearchAuthorities": ds.SearchAuthoritiesRequest},
    "find": {DS + "FindCounterpart": ds.FindCounterpartRequest},
    "replication": {
        RS + "GetFederation": rs.GetFederationRequest,
        RS + "GetConsistencyProof": rs.GetConsistencyProofRequest,
        RS + "GetCheckpoints": rs.GetCheckpointsRequest,
    },
}
ALL_METHODS = sorted(m for group in GROUPS.values() for m in group)
FUZZ = settings(
    max_examples=150,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)


def test_fuzz_covers_every_directory_method() -> None:
    served_methods = {m.name for m in ds.DESCRIPTOR.services_by_name["DirectoryService"].methods}
    assert {m.removeprefix(DS) for m in ALL_METHODS if m.startswith(DS)} == served_methods


def _check(outcome: Outcome) -> None:
    """_outcome already asserted: no INTERNAL/UNKNOWN, one ErrorInfo with a reason."""
    assert outcome.code in (
        grpc.StatusCode.OK,
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.NOT_FOUND,
        grpc.StatusCode.FAILED_PRECONDITION,
    ), outcome


@pytest.mark.parametrize("group", sorted(GROUPS))
def test_fuzz_request_fields(node: Served, group: str) -> None:
    _, channel = node
    methods = GROUPS[group]
    cases = st.sampled_from(sorted(methods)).flatmap(
        lambda m: st.tuples(st.just(m), requests(methods[m]))
    )

    @FUZZ
    @given(case=cases)
    def run(case: tuple[str, bytes]) -> None:
        path, payload = case
        _check(call(channel, path, payload))

    run()


def test_fuzz_random_bytes(node: Served) -> None:
    _, channel = node

    @FUZZ
    @given(path=st.sampled_from(ALL_METHODS), payload=st.binary(max_size=300))
    def run(path: str, payload: bytes) -> None:
        outcome = call(channel, path, payload)
        _check(outcome)

    run()
