"""Bounds on what a caller may send, checked before any work is done.

Every public request field has a limit here; a request beyond one is refused with an
``InvalidArgumentError`` whose reason says which bound it broke, before a single row is
read. The limits are far above anything a valid request needs (a record name is at most
~100 characters, a vocabulary code ~40).
"""

from __future__ import annotations

import re

from counterpart_core.errors import InvalidArgumentError, quote

MAX_NAME_CHARS = 200  # resource names and parents (members/GE/authorities/...)
MAX_CODE_CHARS = 100  # member codes, request types, offence categories
MAX_PLACE_CHARS = 200  # FindCounterpart.place: subdivision, municipality or postal code
MAX_LANGUAGE_TAG_CHARS = 35  # RFC 5646 section 4.4.1: tags of up to 35 characters must work
MAX_LANGUAGES = 16  # FindCounterpart.preferred_languages
MAX_QUERY_CHARS = 200  # SearchAuthorities.query as sent
MAX_FOLDED_QUERY_CHARS = 1000  # ... and once folded (transliteration can lengthen it)
MAX_FILTER_CHARS = 2000  # AIP-160 filter text
MAX_FILTER_TERMS = 20  # comparisons joined by AND
MAX_PAGE_TOKEN_CHARS = 512  # tokens this service issues are far shorter
INT64_MAX = 2**63 - 1  # the largest integer any SQL backend stores

# C0 and C1 control characters and lone surrogates (only a JSON escape can make those).
_CONTROL_RE = re.compile("[\x00-\x1f\x7f-\x9f\ud800-\udfff]")
# The same, except tab, line feed and carriage return, for free text that is folded anyway.
_CONTROL_IN_TEXT_RE = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\ud800-\udfff]")


def check_length(value: str, field: str, maximum: int, reason: str = "FIELD_TOO_LONG") -> str:
    """The value, or INVALID_ARGUMENT when it is longer than ``maximum`` characters."""
    if len(value) > maximum:
        raise InvalidArgumentError(
            f"{field} is {len(value)} characters long; at most {maximum} are allowed",
            reason=reason,
            metadata={"field": field, "max_length": str(maximum)},
        )
    return value


def check_no_control(value: str, field: str, *, text: bool = False) -> str:
    """The value, or INVALID_ARGUMENT (CONTROL_CHARACTER) when it holds a control character.

    ``text``: free text, where tab and line breaks are allowed.
    """
    m = (_CONTROL_IN_TEXT_RE if text else _CONTROL_RE).search(value)
    if m is not None:
        raise InvalidArgumentError(
            f"{field} {quote(value)} holds the control character {m.group()!r} "
            f"at position {m.start()}",
            reason="CONTROL_CHARACTER",
            metadata={"field": field},
        )
    return value


def check_text(
    value: str, field: str, maximum: int, *, reason: str = "FIELD_TOO_LONG", text: bool = False
) -> str:
    """Length first (cheap, and bounds the rest), then control characters."""
    return check_no_control(check_length(value, field, maximum, reason), field, text=text)


def check_count(count: int, field: str, maximum: int, reason: str) -> None:
    if count > maximum:
        raise InvalidArgumentError(
            f"{field} has {count} items; at most {maximum} are allowed",
            reason=reason,
            metadata={"field": field, "max_items": str(maximum)},
        )
