"""The error tree. Every error carries a stable ``code``.

StateMachineError            code given per raise (INVALID_CONFIG, INVALID_EVENT, ...)
+-- TransitionError          TRANSITION_ERROR (no transition, guard refused)
+-- EffectError              EFFECT_ERROR (an effect raised or reported failure)
+-- TimeoutError             TIMEOUT_ERROR (also a builtins.TimeoutError)
+-- RetryExhaustedError      RETRY_EXHAUSTED (carries ``attempts``)
"""

from __future__ import annotations

import builtins
from typing import Any

__all__ = [
    "ErrorCode",
    "EffectError",
    "RetryExhaustedError",
    "StateMachineError",
    "TimeoutError",
    "TransitionError",
]


class ErrorCode:
    """The stable error codes (plain strings, so they compare with ``==``)."""

    STATE_MACHINE_ERROR = "STATE_MACHINE_ERROR"
    INVALID_CONFIG = "INVALID_CONFIG"
    INVALID_EVENT = "INVALID_EVENT"
    INVALID_SNAPSHOT = "INVALID_SNAPSHOT"
    INVALID_CONTEXT = "INVALID_CONTEXT"
    CANCELLED = "CANCELLED"
    NOT_ACTIVE = "NOT_ACTIVE"
    NEEDS_ATTENTION = "NEEDS_ATTENTION"
    PERSISTENCE_ERROR = "PERSISTENCE_ERROR"
    ROLLBACK_FAILED = "ROLLBACK_FAILED"
    TRANSITION_ERROR = "TRANSITION_ERROR"
    EFFECT_ERROR = "EFFECT_ERROR"
    TIMEOUT_ERROR = "TIMEOUT_ERROR"
    RETRY_EXHAUSTED = "RETRY_EXHAUSTED"
    CONFLICT = "CONFLICT"
    STORE_BUSY = "STORE_BUSY"
    SCHEMA_TOO_NEW = "SCHEMA_TOO_NEW"
    INVALID_STORE_URL = "INVALID_STORE_URL"
    INVALID_ACTION = "INVALID_ACTION"
    NOT_PARKED = "NOT_PARKED"
    LEASE_LOST = "LEASE_LOST"
    LEASE_HELD = "LEASE_HELD"
    UNKNOWN_MACHINE = "UNKNOWN_MACHINE"
    STORE_UNAVAILABLE = "STORE_UNAVAILABLE"
    KEYS_REQUIRED = "KEYS_REQUIRED"
    INVALID_DURATION = "INVALID_DURATION"
    CORRUPT_ROW = "CORRUPT_ROW"
    INVALID_TEXT = "INVALID_TEXT"
    CANNOT_RUN = "CANNOT_RUN"
    NO_STORE = "NO_STORE"  # create=False and there is no store there yet
    UNKNOWN_WORKFLOW = "UNKNOWN_WORKFLOW"  # a workflow name the definitions do not have
    USAGE = "USAGE"  # the command line: bad arguments, a TARGET that cannot be loaded
    INTERNAL_ERROR = "INTERNAL_ERROR"  # the command line: a bug in deploysm


class StateMachineError(Exception):
    """Root of every deploysm error.

    ``code`` is stable and meant for programs; the message is for people.
    ``state`` names the state the machine was in, when one applies.
    ``problems`` lists every problem found (for ``INVALID_CONFIG``).
    """

    code: str = ErrorCode.STATE_MACHINE_ERROR

    def __init__(
        self,
        message: str = "",
        code: str | None = None,
        *,
        state: Any = None,
        problems: list[str] | None = None,
    ) -> None:
        super().__init__(message)
        if code is not None:
            self.code = code
        self.state = state
        self.problems: list[str] = list(problems) if problems else []

    @property
    def message(self) -> str:
        return str(self.args[0]) if self.args else ""

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.message!r}, code={self.code!r})"


class TransitionError(StateMachineError):
    """No transition matched the event, or every guard refused it.

    ``reason`` is ``"no_transition"`` or ``"guard"``.
    """

    code = ErrorCode.TRANSITION_ERROR

    def __init__(
        self,
        message: str = "",
        code: str | None = None,
        *,
        state: Any = None,
        reason: str = "no_transition",
        event: str | None = None,
    ) -> None:
        super().__init__(message, code, state=state)
        self.reason = reason
        self.event = event


class EffectError(StateMachineError):
    """An effect raised, or returned a result with ``success=False``."""

    code = ErrorCode.EFFECT_ERROR


class TimeoutError(StateMachineError, builtins.TimeoutError):
    """An effect, transition or state ran past its timeout."""

    code = ErrorCode.TIMEOUT_ERROR


class RetryExhaustedError(StateMachineError):
    """Every allowed attempt failed; ``__cause__`` is the last attempt's error."""

    code = ErrorCode.RETRY_EXHAUSTED

    def __init__(
        self,
        message: str = "",
        code: str | None = None,
        *,
        attempts: int = 0,
        state: Any = None,
    ) -> None:
        super().__init__(message, code, state=state)
        self.attempts = attempts
