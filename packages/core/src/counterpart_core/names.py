"""AIP-122 resource names: members/{member}/{collection}/{id}."""

from __future__ import annotations

import re
from dataclasses import dataclass

from counterpart_core.bounds import MAX_NAME_CHARS, check_no_control, check_text
from counterpart_core.errors import InvalidArgumentError, quote

# ISO 3166-1 alpha-2 for countries, or an upper-case code of an international body.
MEMBER_RE = re.compile(r"^[A-Z][A-Z0-9]{1,15}$")
# Record ids: lower-case words; rules and treaties use vocabulary codes, which may hold dots.
ID_RE = re.compile(r"^[a-z0-9](?:[a-z0-9.-]{0,61}[a-z0-9])?$")

# An ISO 3166-2 subdivision code (GE-AJ); group 1 is the country.
SUBDIVISION_RE = re.compile(r"^([A-Z]{2})-[A-Z0-9]{1,3}$")
# The shape of a BCP 47 language tag (ka, sr-Latn); records check tags against the registry too.
LANGUAGE_TAG_RE = re.compile(r"^[a-zA-Z]{2,3}(?:-[a-zA-Z0-9]{1,8})*$")

COLLECTIONS = {
    "authorities": "authority", "contacts": "contact", "rules": "rule", "treaties": "treaty", "places": "place",
}
KIND_TO_COLLECTION = {v: k for k, v in COLLECTIONS.items()}


@dataclass(frozen=True)
class RecordName:
    """A parsed record name."""

    member: str
    collection: str
    record_id: str

    @property
    def kind(self) -> str:
        return COLLECTIONS[self.collection]

    def __str__(self) -> str:
        return f"members/{self.member}/{self.collection}/{self.record_id}"


def check_member_code(code: str, what: str = "member code") -> str:
    check_no_control(code, what)  # MEMBER_RE's `$` would let a trailing line feed through
    if not MEMBER_RE.match(code):
        raise InvalidArgumentError(
            f"{what} {quote(code)} is malformed: expected an ISO 3166-1 alpha-2 code such as 'GE' "
            "or an upper-case code of an international body",
            reason="INVALID_MEMBER_CODE",
        )
    return code


def _check_name(name: str, field: str = "name") -> None:
    """Any resource name: at most MAX_NAME_CHARS characters, no control characters."""
    check_text(name, field, MAX_NAME_CHARS, reason="NAME_TOO_LONG")


def member_name(code: str) -> str:
    return f"members/{code}"


def parse_member_name(name: str) -> str:
    """members/{member} -> member code."""
    _check_name(name)
    parts = name.split("/")
    if len(parts) != 2 or parts[0] != "members":
        raise InvalidArgumentError(
            f"{quote(name)} is not a member name (expected members/{{member}}, e.g. members/GE)",
            reason="INVALID_NAME",
        )
    return check_member_code(parts[1])


def parse_parent(parent: str) -> str | None:
    """members/{member} -> code; members/- -> None (every member)."""
    _check_name(parent, "parent")
    if parent == "members/-":
        return None
    return parse_member_name(parent)


def parse_record_name(name: str, collection: str | None = None) -> RecordName:
    """Parse and validate a record name, optionally of one collection."""
    _check_name(name)
    parts = name.split("/")
    expected = f"members/{{member}}/{collection or '{collection}'}/{{id}}"
    if len(parts) != 4 or parts[0] != "members" or parts[2] not in COLLECTIONS:
        raise InvalidArgumentError(
            f"{quote(name)} is not a record name (expected {expected})", reason="INVALID_NAME"
        )
    if collection is not None and parts[2] != collection:
        raise InvalidArgumentError(
            f"{quote(name)} is not in {collection} (expected {expected})", reason="INVALID_NAME"
        )
    check_member_code(parts[1])
    if not ID_RE.match(parts[3]):
        raise InvalidArgumentError(
            f"record id {quote(parts[3])} in {quote(name)} is malformed: lower-case letters, "
            "digits, '-' and '.', at most 63 characters",
            reason="INVALID_NAME",
        )
    return RecordName(parts[1], parts[2], parts[3])
