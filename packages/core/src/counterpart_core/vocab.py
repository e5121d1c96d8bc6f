"""The shared vocabularies of a federation document (DESIGN §2)."""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

import yaml
from google.protobuf import json_format

from counterpart.v1 import federation_pb2


def default_vocabularies() -> federation_pb2.Vocabularies:
    """The vocabularies shipped with the node, used by `federation init`."""
    text = (resources.files("counterpart_core") / "data" / "vocabularies.yaml").read_text(
        encoding="utf-8"
    )
    raw: dict[str, Any] = yaml.safe_load(text)
    return json_format.ParseDict(raw, federation_pb2.Vocabularies())


@dataclass(frozen=True)
class Vocabulary:
    """Fast membership checks over a Vocabularies message."""

    message: federation_pb2.Vocabularies
    request_types: frozenset[str] = field(init=False)
    offence_categories: frozenset[str] = field(init=False)
    authority_kinds: frozenset[str] = field(init=False)
    channels: frozenset[str] = field(init=False)
    contact_roles: frozenset[str] = field(init=False)
    instruments: dict[str, federation_pb2.Instrument] = field(init=False)

    def __post_init__(self) -> None:
        m = self.message
        set_ = object.__setattr__
        set_(self, "request_types", frozenset(t.code for t in m.request_types))
        set_(self, "offence_categories", frozenset(t.code for t in m.offence_categories))
        set_(self, "authority_kinds", frozenset(t.code for t in m.authority_kinds))
        set_(self, "channels", frozenset(t.code for t in m.channels))
        set_(self, "contact_roles", frozenset(t.code for t in m.contact_roles))
        set_(self, "instruments", {i.code: i for i in m.instruments})

    def hint(self, vocabulary: str, code: str) -> str:
        """' (did you mean 'x'?)' for the closest code of a vocabulary, or ''."""
        codes: frozenset[str] | dict[str, federation_pb2.Instrument] = getattr(self, vocabulary)
        close = difflib.get_close_matches(code, list(codes), n=1, cutoff=0.75)
        return f" (did you mean {close[0]!r}?)" if close else ""

    def title(self, vocabulary: str, code: str) -> str:
        for term in getattr(self.message, vocabulary):
            if term.code == code:
                return str(term.title)
        return code
