"""What changed between two versions of a record, field by field (for publish --dry-run).

Pure: compares two protobuf messages of the same type and names each changed field by its
path (``coverage.subdivisions``, ``display_names[1].text``), with the old and new value of a
scalar and the items added to and removed from a list.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from typing import Any

from google.protobuf import json_format
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message

from counterpart.v1 import records_pb2

NOT_SET = "(not set)"


@dataclass(frozen=True)
class FieldChange:
    """One changed field: a scalar's old and new value, or a list's added and removed items."""

    path: str
    old: str | None = None  # rendered value (scalars, a sub-message set or cleared, a list only reordered)
    new: str | None = None
    added: tuple[str, ...] = ()
    removed: tuple[str, ...] = ()

    def as_dict(self) -> dict[str, object]:
        out: dict[str, object] = {"path": self.path}
        if self.old is not None or self.new is not None:
            out.update(old=self.old, new=self.new)
        if self.added:
            out["added"] = list(self.added)
        if self.removed:
            out["removed"] = list(self.removed)
        return out


def diff_records(old: Message | None, new: Message) -> list[FieldChange]:
    """Every field whose value differs between old and new (old None: compared with an empty record)."""
    out: list[FieldChange] = []
    _diff(old if old is not None else type(new)(), new, "", out)
    return out


def render(fd: Any, value: object) -> str:
    """A value of field fd as one line of text: strings quoted, enums by name, messages compact."""
    if fd.type == FieldDescriptor.TYPE_MESSAGE:
        assert isinstance(value, Message)
        return render_message(value)
    if fd.type == FieldDescriptor.TYPE_ENUM:
        assert isinstance(value, int)
        enum_value = fd.enum_type.values_by_number.get(value)
        return enum_value.name if enum_value is not None else str(value)
    if fd.type == FieldDescriptor.TYPE_BOOL:
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    return str(value)


def render_message(msg: Message) -> str:
    if isinstance(msg, records_pb2.LocalizedText):
        return f"{msg.language}: {json.dumps(msg.text, ensure_ascii=False)}"
    body = json_format.MessageToDict(msg, preserving_proto_field_name=True)
    return json.dumps(body, ensure_ascii=False, separators=(", ", ": "))


def _default_rendered(fd: Any, value: object) -> str:
    if fd.type == FieldDescriptor.TYPE_MESSAGE:
        return render(fd, value)
    default = fd.default_value
    return NOT_SET if value == default else render(fd, value)


def _diff(old: Message, new: Message, prefix: str, out: list[FieldChange]) -> None:
    for fd in new.DESCRIPTOR.fields:
        path = f"{prefix}{fd.name}"
        a, b = getattr(old, fd.name), getattr(new, fd.name)
        if fd.is_repeated:
            _diff_list(fd, list(a), list(b), path, out)
        elif fd.type == FieldDescriptor.TYPE_MESSAGE:
            had, has = old.HasField(fd.name), new.HasField(fd.name)
            if not had and not has:
                continue
            if fd.message_type is not None and fd.message_type.full_name == "google.protobuf.Timestamp":  # effective dates: one value
                if a != b or had != has:
                    out.append(FieldChange(path, a.ToJsonString() if had else NOT_SET,
                                           b.ToJsonString() if has else NOT_SET))
                continue
            if had != has and a == b:  # set or cleared without content: only its presence changed
                out.append(FieldChange(path, render(fd, a) if had else NOT_SET, render(fd, b) if has else NOT_SET))
            elif a != b:
                _diff(a, b, f"{path}.", out)
        elif a != b:
            out.append(FieldChange(path, _default_rendered(fd, a), _default_rendered(fd, b)))


def _key(fd: Any, item: object) -> object:
    if isinstance(item, Message):
        return item.SerializeToString(deterministic=True)
    return item


def _diff_list(fd: Any, a: list[object], b: list[object], path: str, out: list[FieldChange]) -> None:
    ka, kb = [_key(fd, x) for x in a], [_key(fd, x) for x in b]
    if ka == kb:
        return
    before, after = Counter(ka), Counter(kb)
    removed_keys, added_keys = before - after, after - before
    if not removed_keys and not added_keys:  # the same items in another order
        out.append(FieldChange(path, "[" + ", ".join(render(fd, x) for x in a) + "]",
                               "[" + ", ".join(render(fd, x) for x in b) + "]"))
        return
    differing = [i for i in range(len(a)) if len(a) == len(b) and ka[i] != kb[i]]
    if fd.type == FieldDescriptor.TYPE_MESSAGE and differing and len(differing) == sum(removed_keys.values()):
        # the same number of items, changed in place: name the fields that changed in each
        for i in differing:
            old_item, new_item = a[i], b[i]
            assert isinstance(old_item, Message) and isinstance(new_item, Message)
            _diff(old_item, new_item, f"{path}[{i}].", out)
        return
    added: list[str] = []
    for x, k in zip(b, kb, strict=True):
        if added_keys[k] > 0:
            added_keys[k] -= 1
            added.append(render(fd, x))
    removed: list[str] = []
    for x, k in zip(a, ka, strict=True):
        if removed_keys[k] > 0:
            removed_keys[k] -= 1
            removed.append(render(fd, x))
    out.append(FieldChange(path, added=tuple(added), removed=tuple(removed)))
