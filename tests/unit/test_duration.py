"""``parse_duration``: the ages the command line takes (``30d``, ``12h``, ``90m``, ``45s``)."""

from __future__ import annotations

from datetime import timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from deploysm import ErrorCode, StateMachineError
from deploysm.core._duration import MAX_DURATION, describe_duration, parse_duration

UNITS = {"d": timedelta(days=1), "h": timedelta(hours=1), "m": timedelta(minutes=1)}
UNITS["s"] = timedelta(seconds=1)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("30d", timedelta(days=30)),
        ("12h", timedelta(hours=12)),
        ("90m", timedelta(minutes=90)),
        ("45s", timedelta(seconds=45)),
        (" 7D ", timedelta(days=7)),
    ],
)
def test_durations(text: str, expected: timedelta) -> None:
    assert parse_duration(text) == expected


@pytest.mark.parametrize(
    "text", ["", "30", "d", "0d", "-1d", "1.5h", "1w", "30 days", "1d2h", "1e3d", "٣d", "99999999d"]
)
def test_what_is_not_a_duration(text: str) -> None:
    with pytest.raises(StateMachineError) as info:
        parse_duration(text)
    assert info.value.code == ErrorCode.INVALID_DURATION
    assert "30d" in info.value.message  # says what is expected


@given(st.integers(1, 10**6), st.sampled_from(sorted(UNITS)))
def test_every_count_and_unit_reads_back(n: int, unit: str) -> None:
    expected = n * UNITS[unit]
    if expected > MAX_DURATION:
        with pytest.raises(StateMachineError):
            parse_duration(f"{n}{unit}")
    else:
        assert parse_duration(f"{n}{unit}") == expected


@given(st.text(max_size=30))
def test_any_text_is_a_duration_or_a_typed_error(text: str) -> None:
    try:
        value = parse_duration(text)
    except StateMachineError as e:
        assert e.code == ErrorCode.INVALID_DURATION
    else:
        assert timedelta(0) < value <= MAX_DURATION


@pytest.mark.parametrize(
    ("text", "said"),
    [
        ("30d", "30 days"),
        ("1d", "1 day"),
        ("90m", "90 minutes"),
        ("120m", "2 hours"),
        ("61s", "61 seconds"),
    ],
)
def test_described_in_its_largest_whole_unit(text: str, said: str) -> None:
    assert describe_duration(parse_duration(text)) == said
