"""Ages as the command line takes them: ``30d``, ``12h``, ``90m``, ``45s``."""

from __future__ import annotations

import re
from datetime import timedelta

from ._errors import ErrorCode, StateMachineError

__all__ = ["MAX_DURATION", "describe_duration", "parse_duration"]

MAX_DURATION = timedelta(days=36_500)  # 100 years: older than that is "everything"
_FORM = re.compile(r"([0-9]{1,12})([dhms])", re.ASCII)
_UNIT_S = {"d": 86_400, "h": 3_600, "m": 60, "s": 1}


def parse_duration(text: str) -> timedelta:
    """``N`` followed by ``d`` (days), ``h`` (hours), ``m`` (minutes) or ``s``
    (seconds), N a whole number from 1, at most 100 years in all; anything else is
    ``INVALID_DURATION``."""
    m = _FORM.fullmatch(text.strip().lower()) if isinstance(text, str) else None
    seconds = int(m[1]) * _UNIT_S[m[2]] if m is not None else 0
    if not 0 < seconds <= MAX_DURATION.total_seconds():
        raise StateMachineError(
            f"{text!r} is not a duration: use a whole number from 1 and a unit, like 30d, "
            f"12h, 90m or 45s (at most {MAX_DURATION.days}d)",
            ErrorCode.INVALID_DURATION,
        )
    return timedelta(seconds=seconds)


def describe_duration(value: timedelta) -> str:
    """``value`` in its largest whole unit: ``30 days``, ``90 minutes``, ``1 hour``."""
    seconds = int(value.total_seconds())
    unit, name = next(
        (u, n)
        for u, n in ((86_400, "day"), (3_600, "hour"), (60, "minute"), (1, "second"))
        if seconds % u == 0
    )
    n = seconds // unit
    return f"{n} {name}{'' if n == 1 else 's'}"
