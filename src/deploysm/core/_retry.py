"""Retry policies: how many attempts, and how long to wait between them."""

from __future__ import annotations

import dataclasses
import math
import random as _random
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

__all__ = ["JitterMode", "RetryPolicy", "default_retry_policy"]

JitterMode = Literal["proportional", "full", "equal", "decorrelated"]
JITTER_MODES: tuple[str, ...] = ("proportional", "full", "equal", "decorrelated")
# The sane bounds a config is held to (see docs/semantics.md): attempts per
# transition, and any delay or timeout in milliseconds (one year of 365 days).
MAX_ATTEMPTS = 1000
MAX_DELAY_MS = 365 * 24 * 3600 * 1000


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Exponential backoff with jitter.

    The delay before attempt ``n + 1`` is
    ``min(initial_delay_ms * backoff_multiplier ** (n - 1), max_delay_ms)`` scaled by a
    uniform factor in ``[1 - jitter_factor, 1 + jitter_factor]`` and kept within
    ``[0, max_delay_ms]`` (``jitter="proportional"``, the default). ``"full"``,
    ``"equal"`` and ``"decorrelated"`` follow the AWS architecture-blog definitions.
    """

    max_attempts: int = 3
    initial_delay_ms: float = 1000.0
    max_delay_ms: float = 30000.0
    backoff_multiplier: float = 2.0
    jitter_factor: float = 0.2
    retryable_errors: tuple[type[BaseException], ...] | None = None
    should_retry: Callable[[BaseException, int], Any] | None = None
    jitter: JitterMode = "proportional"

    def replace(self, **changes: Any) -> RetryPolicy:
        """A copy with some fields changed: ``default_retry_policy.replace(max_attempts=5)``."""
        return dataclasses.replace(self, **changes)

    @classmethod
    def coerce(cls, value: RetryPolicy | Mapping[str, Any] | None) -> RetryPolicy | None:
        """Accept a policy, or a mapping of its fields (missing fields take the defaults)."""
        if value is None or isinstance(value, RetryPolicy):
            return value
        if isinstance(value, Mapping):
            names = {f.name for f in dataclasses.fields(cls)}
            unknown = sorted(str(k) for k in value if k not in names)
            if unknown:
                raise ValueError(f"unknown retry policy field(s): {', '.join(unknown)}")
            fields = dict(value)
            errors = fields.get("retryable_errors")
            if isinstance(errors, list | set | frozenset):
                fields["retryable_errors"] = tuple(errors)
            return cls(**fields)
        raise TypeError(
            f"retry_policy must be a RetryPolicy or a mapping, not {type(value).__name__}"
        )

    def problems(self) -> list[str]:
        """Everything wrong with this policy's numbers, as readable sentences."""
        out: list[str] = []
        if isinstance(self.max_attempts, bool) or not isinstance(self.max_attempts, int):
            out.append(f"retry_policy.max_attempts must be an int, got {self.max_attempts!r}")
        elif self.max_attempts < 1:
            out.append(f"retry_policy.max_attempts must be >= 1, got {self.max_attempts}")
        elif self.max_attempts > MAX_ATTEMPTS:
            out.append(
                f"retry_policy.max_attempts must be <= {MAX_ATTEMPTS}, got {self.max_attempts}"
            )
        for name in ("initial_delay_ms", "max_delay_ms"):
            v = getattr(self, name)
            if not is_finite_number(v) or not 0 <= v <= MAX_DELAY_MS:
                out.append(
                    f"retry_policy.{name} must be a finite number >= 0 and <= {MAX_DELAY_MS} "
                    f"(a year), got {v!r}"
                )
        m = self.backoff_multiplier
        if not is_finite_number(m) or m < 1:
            out.append(f"retry_policy.backoff_multiplier must be a finite number >= 1, got {m!r}")
        j = self.jitter_factor
        if not _is_number(j) or not 0 <= j <= 1:
            out.append(f"retry_policy.jitter_factor must be between 0 and 1, got {j!r}")
        if self.jitter not in JITTER_MODES:
            out.append(f"retry_policy.jitter must be one of {', '.join(JITTER_MODES)}")
        if (
            is_finite_number(self.initial_delay_ms)
            and is_finite_number(self.max_delay_ms)
            and self.max_delay_ms < self.initial_delay_ms
        ):
            out.append("retry_policy.max_delay_ms must be >= initial_delay_ms")
        errs = self.retryable_errors
        if errs is not None and not (
            _is_exception_class(errs)
            or (isinstance(errs, tuple) and all(_is_exception_class(t) for t in errs))
        ):
            out.append("retry_policy.retryable_errors must hold exception classes")
        if self.should_retry is not None and not callable(self.should_retry):
            out.append("retry_policy.should_retry must be callable")
        return out

    def base_delay_ms(self, attempt: int) -> float:
        """The delay before attempt ``attempt + 1`` without jitter, capped."""
        initial = float(self.initial_delay_ms)
        if initial == 0.0:
            return 0.0
        try:
            raw = initial * float(self.backoff_multiplier) ** (attempt - 1)
        except OverflowError:
            return float(self.max_delay_ms)
        return min(raw, float(self.max_delay_ms))

    def delay_ms(
        self, attempt: int, rng: _random.Random, previous_ms: float | None = None
    ) -> float:
        """The delay before attempt ``attempt + 1``; ``previous_ms`` feeds decorrelated jitter."""
        cap = float(self.max_delay_ms)
        mode = self.jitter
        if mode == "decorrelated":
            base = float(self.initial_delay_ms)
            prev = base if previous_ms is None else previous_ms
            upper = max(base, prev * 3.0)
            return min(cap, rng.uniform(base, upper))
        temp = self.base_delay_ms(attempt)
        if mode == "full":
            return rng.uniform(0.0, temp)
        if mode == "equal":
            return temp / 2.0 + rng.uniform(0.0, temp / 2.0)
        j = self.jitter_factor
        if j == 0:
            return temp
        d = temp * rng.uniform(1.0 - j, 1.0 + j)
        return min(max(d, 0.0), cap)


def _is_number(v: object) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def is_finite_number(v: object) -> bool:
    """An int or float (not a bool) that is finite; huge ints count as not finite."""
    if not _is_number(v):
        return False
    try:
        return math.isfinite(float(v))  # type: ignore[arg-type]
    except OverflowError:
        return False


def _is_exception_class(t: object) -> bool:
    return isinstance(t, type) and issubclass(t, BaseException)


default_retry_policy = RetryPolicy()
