"""Interceptors keep the handler they wrap per method and inner handler (service.interceptors.Wrapped)."""

from __future__ import annotations

import pytest

from directory_server.service import interceptors
from directory_server.service.interceptors import Wrapped


def test_one_wrapped_handler_per_method_and_inner_handler() -> None:
    wrapped = Wrapped()
    made: list[str] = []

    def make(label: str) -> object:
        made.append(label)
        return object()

    first = wrapped.get("/s/A", "inner-a", lambda: make("a"))
    assert wrapped.get("/s/A", "inner-a", lambda: make("a")) is first  # the next call of A: kept
    other = wrapped.get("/s/B", "inner-a", lambda: make("b"))  # another method: its own
    new_inner = wrapped.get("/s/A", "inner-a2", lambda: make("a2"))  # another inner handler: its own
    assert len({id(first), id(other), id(new_inner)}) == 3
    assert made == ["a", "b", "a2"]


def test_wrapped_handlers_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(interceptors, "MAX_WRAPPED", 3)
    wrapped = Wrapped()
    for i in range(10):  # an inner interceptor that made a new handler per call
        wrapped.get("/s/A", f"inner-{i}", object)
    assert len(wrapped._made) <= 3
