"""The demo's display time: real time the deployment ran, times the speed, with the
time the demo was stopped left out."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from deploysm.cli._demo_time import ScaledClock, Timeline, mmss, pauses
from deploysm.stores import JournalEntry

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def entry(seq: int, kind: str, seconds: float) -> JournalEntry:
    return JournalEntry(seq, "m", seq, kind, at(seconds), {})


def test_simulated_seconds_are_real_seconds_times_the_speed() -> None:
    line = Timeline(50.0, at(0))
    assert line.seconds(at(0)) == 0.0
    assert line.seconds(at(2)) == pytest.approx(100.0)
    assert line.seconds(at(-1)) == 0.0  # nothing before the first state


def test_pauses_are_left_out_and_a_time_inside_one_stands_still() -> None:
    line = Timeline(10.0, at(0), [(at(1), at(31)), (at(32), at(40))])
    assert line.seconds(at(1)) == pytest.approx(10.0)
    assert line.seconds(at(20)) == pytest.approx(10.0)  # stopped: no simulated time passes
    assert line.seconds(at(31.5)) == pytest.approx(15.0)
    assert line.seconds(at(41)) == pytest.approx(30.0)


def test_pauses_come_from_kills_ctrl_c_and_this_runs_start() -> None:
    journal = [
        entry(1, "intent", 0),
        entry(2, "attempt", 1),  # killed here: the next run begins with `resumed`
        entry(3, "resumed", 60),
        entry(4, "rollback", 60.5),
        entry(5, "interrupted", 61),  # Ctrl-C: the next run begins after it
        entry(6, "intent", 90),
        entry(7, "attempt", 91),
    ]
    assert pauses(journal, at(200)) == [(at(1), at(60)), (at(61), at(90)), (at(91), at(200))]
    assert pauses([], at(5)) == []


def test_mmss() -> None:
    assert mmss(0.0) == "00:00.0"
    assert mmss(212.34) == "03:32.3"


def test_the_scaled_clock_tells_wall_clock_time() -> None:
    before = datetime.now(UTC)
    now = ScaledClock(1000.0).now()
    assert before <= now <= datetime.now(UTC)
    with pytest.raises(ValueError, match="must be > 0"):
        ScaledClock(0.0)
