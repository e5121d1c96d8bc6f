"""Request parsing for lookups: AIP-160 filters (a small subset), page tokens, page sizes."""

from __future__ import annotations

import base64
import hashlib
import json
import re
from dataclasses import dataclass

from counterpart_core import merkle
from counterpart_core.bounds import (
    MAX_FILTER_CHARS,
    MAX_FILTER_TERMS,
    MAX_PAGE_TOKEN_CHARS,
    check_count,
    check_length,
    check_no_control,
)
from counterpart_core.errors import InvalidArgumentError, quote

# Fields each record kind can be filtered on.
FILTER_FIELDS = {
    "authority": {"kind", "parent", "member"},
    "contact": {"role", "authority", "member"},
    "rule": {"request_type", "member"},
    "treaty": {"instrument", "status", "member"},
    "place": {"kind", "subdivision", "member"},
}

_TERM_RE = re.compile(r'\s*([a-z_]+)\s*(!=|=)\s*("(?:[^"\\]|\\.)*"|[A-Za-z0-9_.\-/]+)\s*')
_AND_RE = re.compile(r"\s+AND\s+")


@dataclass(frozen=True)
class Condition:
    field: str
    op: str
    value: str


def parse_filter(text: str, kind: str) -> list[Condition]:
    """Parse `field = "value" AND field != value ...` (AIP-160 conjunctions of comparisons).

    Bounded before parsing: at most MAX_FILTER_CHARS characters and MAX_FILTER_TERMS
    terms (each term is a subquery: thousands of them overflow SQL expression limits),
    and no control characters in values.
    """
    check_length(text, "filter", MAX_FILTER_CHARS, reason="FILTER_TOO_LONG")
    text = text.strip()
    if not text:
        return []
    allowed = FILTER_FIELDS[kind]
    parts = _AND_RE.split(text)
    check_count(len(parts), "filter", MAX_FILTER_TERMS, reason="TOO_MANY_FILTER_TERMS")
    out: list[Condition] = []
    for part in parts:
        m = _TERM_RE.fullmatch(part)
        if not m:
            raise InvalidArgumentError(
                f"cannot parse filter term {quote(part.strip())}: expected field = \"value\" or "
                "field != \"value\", joined by AND",
                reason="INVALID_FILTER",
            )
        name, op, value = m.groups()
        if name not in allowed:
            raise InvalidArgumentError(
                f"cannot filter {kind} records on {quote(name)}; "
                f"fields: {', '.join(sorted(allowed))}",
                reason="INVALID_FILTER",
            )
        if value.startswith('"'):
            check_no_control(value, "filter")  # raw, before JSON refuses it as malformed
            try:
                value = json.loads(value)
            except json.JSONDecodeError as e:  # a raw control character or a bad escape
                raise InvalidArgumentError(
                    f"filter value {quote(value)} is not a valid quoted string ({e.msg})",
                    reason="INVALID_FILTER",
                ) from e
        check_no_control(value, "filter")
        out.append(Condition(name, op, value))
    return out


def page_size(requested: int, default: int, maximum: int) -> int:
    """AIP-158: 0 means the default; more than the maximum is cut to it; negative is an error."""
    if requested < 0:
        raise InvalidArgumentError(f"page_size must not be negative (got {requested})", reason="INVALID_PAGE_SIZE")
    return min(requested or default, maximum)


def _scope_digest(scope: str) -> str:
    """A short, fixed-length digest of the request a token belongs to: tokens stay small
    whatever the filter or query, and do not carry the caller's text around."""
    digest = hashlib.sha256(scope.encode("utf-8", "surrogatepass")).digest()[:12]
    return base64.urlsafe_b64encode(digest).decode()


def encode_page_token(scope: str, position: str) -> str:
    raw = json.dumps({"s": _scope_digest(scope), "p": position}, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_page_token(token: str, scope: str) -> str:
    """The position in a token made for the same request; '' for no token.

    Positions this service issues are record names, member codes and offsets: printable
    ASCII, so a forged token cannot carry anything else to the store.
    """
    if not token:
        return ""
    not_ours = InvalidArgumentError(
        "page_token is not one this service issued", reason="INVALID_PAGE_TOKEN"
    )
    if len(token) > MAX_PAGE_TOKEN_CHARS:
        raise not_ours
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        data = json.loads(raw)
        position, token_scope = data["p"], data["s"]
    except (ValueError, KeyError, TypeError, IndexError, RecursionError) as e:
        raise not_ours from e
    if not (isinstance(position, str) and isinstance(token_scope, str)):
        raise not_ours
    if not (position.isascii() and position.isprintable()):
        raise not_ours
    if token_scope != _scope_digest(scope):
        raise InvalidArgumentError(
            "page_token was issued for a different request (parent, filter or query changed)",
            reason="INVALID_PAGE_TOKEN",
        )
    return position


class ProofTree:
    """All levels of an RFC 6962 tree, for O(log n) inclusion paths (RFC 9162 2.1.3.1).

    In a left-balanced tree a node without a right sibling is carried up unchanged,
    so each level is the pairwise hash of the one below with an odd last node promoted.
    """

    def __init__(self, leaf_hashes: list[bytes]) -> None:
        self.size = len(leaf_hashes)
        self.levels: list[list[bytes]] = [leaf_hashes]
        level = leaf_hashes
        while len(level) > 1:
            nxt = [merkle.node_hash(level[i], level[i + 1]) for i in range(0, len(level) - 1, 2)]
            if len(level) % 2:
                nxt.append(level[-1])
            self.levels.append(nxt)
            level = nxt

    @property
    def root(self) -> bytes:
        return self.levels[-1][0] if self.size else merkle.root_hash([])

    def inclusion_path(self, index: int) -> list[bytes]:
        if not 0 <= index < self.size:
            raise ValueError(f"leaf {index} is outside a tree of size {self.size}")
        path: list[bytes] = []
        for level in self.levels[:-1]:
            sibling = index ^ 1
            if sibling < len(level):
                path.append(level[sibling])
            index //= 2
        return path
