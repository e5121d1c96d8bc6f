"""Bounds on request fields, the quoting of rejected input, and the size cap on statuses."""

from __future__ import annotations

import base64
import urllib.parse

import pytest
from google.rpc import code_pb2, error_details_pb2, status_pb2

from counterpart_core import bounds, names
from counterpart_core.errors import (
    CounterpartError,
    InvalidArgumentError,
    ValidationError,
    quote,
)
from counterpart_core.query import (
    decode_page_token,
    encode_page_token,
    page_size,
    parse_filter,
)
from directory_server.service.errors import MAX_MESSAGE_BYTES, to_status


def reason_of(error: pytest.ExceptionInfo[InvalidArgumentError]) -> str:
    return error.value.reason


def test_quote_keeps_short_values_and_cuts_long_ones() -> None:
    assert quote("members/GE") == "'members/GE'"
    long = "ა" * 10_000
    q = quote(long)
    assert q.startswith("'" + "ა" * 60 + "'…") and "10000 characters" in q and len(q) < 100
    assert quote("x" * 61).endswith("… (61 characters)")


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        (" AND ".join(["kind = x"] * 21), "TOO_MANY_FILTER_TERMS"),
        ("kind = " + '"' + "x" * 3000 + '"', "FILTER_TOO_LONG"),
        ('kind = "a\x00"', "CONTROL_CHARACTER"),
        ('kind = "\\u0000"', "CONTROL_CHARACTER"),
        ('kind = "\\udfff"', "CONTROL_CHARACTER"),
        ('kind = "\\q"', "INVALID_FILTER"),
        ("kind ~ x", "INVALID_FILTER"),
        ("colour = x", "INVALID_FILTER"),
    ],
)
def test_filter_bounds(text: str, reason: str) -> None:
    with pytest.raises(InvalidArgumentError) as e:
        parse_filter(text, "authority")
    assert reason_of(e) == reason
    assert len(e.value.message) < 200


def test_filter_at_the_bounds_parses() -> None:
    text = " AND ".join([f'kind != "k{i}"' for i in range(bounds.MAX_FILTER_TERMS)])
    assert len(parse_filter(text, "authority")) == bounds.MAX_FILTER_TERMS
    assert (
        parse_filter('kind = "tab\\tis text? no"'.replace("\\t", " "), "authority")[0].value
        == "tab is text? no"
    )


def test_page_size_negative_is_an_error_and_over_the_maximum_is_clamped() -> None:
    with pytest.raises(InvalidArgumentError) as e:
        page_size(-1, 50, 500)
    assert reason_of(e) == "INVALID_PAGE_SIZE"
    assert page_size(2**31 - 1, 50, 500) == 500
    assert page_size(0, 50, 500) == 50


def test_page_tokens_are_short_and_bound_to_their_request() -> None:
    scope = "authority|members/GE|" + 'kind = "' + "ქ" * 1500 + '"'
    token = encode_page_token(scope, "members/GE/authorities/pgo")
    assert len(token) < 120
    assert decode_page_token(token, scope) == "members/GE/authorities/pgo"
    with pytest.raises(InvalidArgumentError) as e:
        decode_page_token(token, scope + " ")
    assert reason_of(e) == "INVALID_PAGE_TOKEN"


@pytest.mark.parametrize(
    "token",
    [
        "A" * (bounds.MAX_PAGE_TOKEN_CHARS + 1),
        "ქართული",
        base64.urlsafe_b64encode(b"[" * 300 + b"]" * 300).decode(),
        base64.urlsafe_b64encode(b'"just a string"').decode(),
        base64.urlsafe_b64encode(b'{"s": 1, "p": 2}').decode(),
        encode_page_token("members", "²"),
        encode_page_token("members", "GE\x00"),
    ],
)
def test_page_tokens_not_issued_here(token: str) -> None:
    with pytest.raises(InvalidArgumentError) as e:
        decode_page_token(token, "members")
    assert reason_of(e) == "INVALID_PAGE_TOKEN"


@pytest.mark.parametrize(
    ("call", "reason"),
    [
        (lambda: names.parse_record_name("members/GE/authorities/" + "a" * 300), "NAME_TOO_LONG"),
        (lambda: names.parse_member_name("members/GE\n"), "CONTROL_CHARACTER"),
        (lambda: names.parse_parent("members/" + "G" * 1_000_000), "NAME_TOO_LONG"),
        (lambda: names.parse_record_name("members/GE/authorities/pgo\n"), "CONTROL_CHARACTER"),
        (lambda: names.check_member_code("GE\n"), "CONTROL_CHARACTER"),
        (lambda: names.check_member_code("G" * 1_000_000), "INVALID_MEMBER_CODE"),
        (lambda: names.parse_record_name("x" * 200), "INVALID_NAME"),
    ],
)
def test_name_bounds(call: object, reason: str) -> None:
    with pytest.raises(InvalidArgumentError) as e:
        call()  # type: ignore[operator]
    assert reason_of(e) == reason
    assert len(e.value.message) < 300


def test_valid_names_still_parse() -> None:
    assert str(names.parse_record_name("members/GE/rules/mla.hearing.witness", "rules")) == (
        "members/GE/rules/mla.hearing.witness"
    )
    assert names.parse_parent("members/-") is None
    assert names.parse_member_name("members/EUROJUST") == "EUROJUST"


def test_text_bounds_allow_whitespace_only_in_free_text() -> None:
    assert bounds.check_text("Batumi\n", "place", 200, text=True) == "Batumi\n"
    with pytest.raises(InvalidArgumentError) as e:
        bounds.check_text("Batumi\n", "request_type", 200)
    assert reason_of(e) == "CONTROL_CHARACTER" and e.value.metadata == {"field": "request_type"}
    with pytest.raises(InvalidArgumentError) as e:
        bounds.check_text("x" * 201, "place", 200, text=True)
    assert reason_of(e) == "FIELD_TOO_LONG" and e.value.metadata["max_length"] == "200"


def _trailer_bytes(status_trailers: tuple[tuple[str, str | bytes], ...], message: str) -> int:
    """What the status costs in trailers: grpc-message percent-encoded, the details in base64."""
    details = dict(status_trailers)["grpc-status-details-bin"]
    assert isinstance(details, bytes)
    return len(urllib.parse.quote(message.encode(), safe="")) + len(base64.b64encode(details))


def test_status_messages_and_metadata_are_capped_to_fit_trailers() -> None:
    error = ValidationError("ქ" * 1_000_000, file="f" * 5000, record="r" * 5000, field="ა" * 5000)
    error.metadata.update({f"key{i}": "v" * 1000 for i in range(100)})
    status = to_status(error)
    assert status.code.value[0] == code_pb2.INVALID_ARGUMENT
    assert len(status.details.encode()) <= MAX_MESSAGE_BYTES and status.details.endswith("…")
    assert _trailer_bytes(status.trailing_metadata, status.details) < 8192  # gRPC's soft limit
    details = dict(status.trailing_metadata)["grpc-status-details-bin"]
    assert isinstance(details, bytes)
    rich = status_pb2.Status.FromString(details)
    assert rich.message == status.details  # grpc_status.from_call insists on it
    info = error_details_pb2.ErrorInfo()
    assert rich.details[0].Unpack(info)
    assert info.reason == "INVALID_RECORD" and info.domain == "counterpart.v1"
    assert len(info.metadata) <= 8 and all(len(v.encode()) <= 128 for v in info.metadata.values())


def test_status_of_a_short_error_is_untouched() -> None:
    status = to_status(CounterpartError("internal error; see the node's log", reason="INTERNAL"))
    assert status.code.value[0] == code_pb2.INTERNAL
    assert status.details == "internal error; see the node's log"


def test_status_survives_lone_surrogates() -> None:
    status = to_status(InvalidArgumentError("bad \ud800 value", reason="INVALID_FILTER"))
    assert status.details == "bad \\ud800 value"
