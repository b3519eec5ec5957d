"""The demo's time: waits run ``factor`` times faster than real time while the machine
(and so the store) records wall-clock times; :class:`Timeline` shows them as simulated
times."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

from ..stores import JournalEntry

__all__ = ["ScaledClock", "Timeline", "mmss", "pauses"]


class ScaledClock:
    """Wall-clock time with waits ``factor`` times shorter: ``sleep(60)`` takes
    ``60 / factor`` real seconds. ``now()`` is the real time, so every time the machine
    records (and the store keeps) is a wall-clock time; :class:`Timeline` turns them
    into simulated times for display."""

    __slots__ = ("factor",)

    def __init__(self, factor: float) -> None:
        if not factor > 0:
            raise ValueError(f"speed factor must be > 0, got {factor!r}")
        self.factor = factor

    def now(self) -> datetime:
        return datetime.now(UTC)

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(max(0.0, seconds) / self.factor)


class Timeline:
    """Simulated seconds for a wall-clock time of the deployment: the real time it ran
    since ``first``, times ``speed``, leaving out ``pauses`` (the demo was stopped)."""

    __slots__ = ("first", "pauses", "speed")

    def __init__(
        self, speed: float, first: datetime, pauses: Sequence[tuple[datetime, datetime]] = ()
    ) -> None:
        self.speed = speed
        self.first = first
        self.pauses = list(pauses)

    def seconds(self, at: datetime) -> float:
        ran = at - self.first
        for start, end in self.pauses:
            ran -= max(timedelta(0), min(at, end) - start)
        return max(0.0, ran.total_seconds() * self.speed)


def pauses(
    entries: Sequence[JournalEntry], resumed_at: datetime
) -> list[tuple[datetime, datetime]]:
    """When earlier runs were stopped: up to a ``resumed`` entry, from an ``interrupted``
    one (Ctrl-C), and from the last entry to this run's start."""
    pauses = [
        (a.at, b.at)
        for a, b in itertools.pairwise(entries)
        if b.kind == "resumed" or a.kind == "interrupted"
    ]
    if entries:
        pauses.append((entries[-1].at, resumed_at))
    return pauses


def mmss(seconds: float) -> str:
    return f"{int(seconds // 60):02d}:{seconds % 60:04.1f}"
