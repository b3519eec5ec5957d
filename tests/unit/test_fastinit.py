"""The engine's cheap builders give ordinary, frozen instances of the public types."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime

import pytest

from deploysm import Event, State, TransitionResult
from deploysm.core._fastinit import maker
from deploysm.core._types import make_event, make_result, make_state

NOW = datetime(2026, 1, 1, tzinfo=UTC)


def test_built_state_equals_the_constructed_one_and_stays_frozen() -> None:
    built = make_state("b", {"event": "GO"}, NOW, 3, 1, "k")
    assert type(built) is State
    assert built == State("b", {"event": "GO"}, NOW, 3, 1, "k")
    with pytest.raises(dataclasses.FrozenInstanceError):
        built.name = "c"  # type: ignore[misc]
    assert dataclasses.replace(built, version=4).version == 4
    assert repr(built) == repr(State("b", {"event": "GO"}, NOW, 3, 1, "k"))


def test_built_event_and_result_are_the_public_types() -> None:
    ev = make_event("GO", None, NOW, None, False)
    assert type(ev) is Event
    assert ev == Event("GO", None, NOW)
    assert hash(ev) == hash(Event("GO", None, NOW))
    res = make_result(True, make_state("a", {}, NOW, 0, 0, None), None, None)
    assert type(res) is TransitionResult
    assert res.success and res.error is None
    with pytest.raises(dataclasses.FrozenInstanceError):
        res.success = False  # type: ignore[misc]


def test_maker_refuses_a_class_without_slots() -> None:
    @dataclasses.dataclass(frozen=True)
    class Plain:
        a: int

    with pytest.raises(TypeError, match="slotted"):
        maker(Plain)
