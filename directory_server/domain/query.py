"""Request parsing for lookups: AIP-160 filters (a small subset), page tokens, page sizes."""

from __future__ import annotations

import base64
import json
import re
from dataclasses import dataclass

from directory_server.domain import merkle
from directory_server.domain.errors import InvalidArgumentError

# Fields each record kind can be filtered on.
FILTER_FIELDS = {
    "authority": {"kind", "parent", "member"},
    "contact": {"role", "authority", "member"},
    "rule": {"request_type", "member"},
    "treaty": {"instrument", "status", "member"},
}

_TERM_RE = re.compile(r'\s*([a-z_]+)\s*(!=|=)\s*("(?:[^"\\]|\\.)*"|[A-Za-z0-9_.\-/]+)\s*')


@dataclass(frozen=True)
class Condition:
    field: str
    op: str
    value: str


def parse_filter(text: str, kind: str) -> list[Condition]:
    """Parse `field = "value" AND field != value ...` (AIP-160 conjunctions of comparisons)."""
    text = text.strip()
    if not text:
        return []
    allowed = FILTER_FIELDS[kind]
    out: list[Condition] = []
    for part in re.split(r"\s+AND\s+", text):
        m = _TERM_RE.fullmatch(part)
        if not m:
            raise InvalidArgumentError(
                f"cannot parse filter term {part.strip()!r}: expected field = \"value\" or field != \"value\", "
                "joined by AND",
                reason="INVALID_FILTER",
            )
        name, op, value = m.groups()
        if name not in allowed:
            raise InvalidArgumentError(
                f"cannot filter {kind} records on {name!r}; fields: {', '.join(sorted(allowed))}",
                reason="INVALID_FILTER",
            )
        if value.startswith('"'):
            value = json.loads(value)
        out.append(Condition(name, op, value))
    return out


def page_size(requested: int, default: int, maximum: int) -> int:
    if requested < 0:
        raise InvalidArgumentError(f"page_size must not be negative (got {requested})", reason="INVALID_PAGE_SIZE")
    return min(requested or default, maximum)


def encode_page_token(scope: str, position: str) -> str:
    raw = json.dumps({"s": scope, "p": position}, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_page_token(token: str, scope: str) -> str:
    """The position in a token made for the same request; '' for no token."""
    if not token:
        return ""
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        data = json.loads(raw)
        position, token_scope = str(data["p"]), str(data["s"])
    except (ValueError, KeyError, TypeError) as e:
        raise InvalidArgumentError("page_token is not one this service issued", reason="INVALID_PAGE_TOKEN") from e
    if token_scope != scope:
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
