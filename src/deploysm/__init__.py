"""deploysm: deployment workflows as typed, durable, asyncio-native state machines.

Implementation modules are private; this package's ``__all__`` is the public API.
"""

import logging as _logging
from contextlib import suppress as _suppress

from .core._clock import Clock, SystemClock, now, sleep
from .core._config import Guard, Hooks, StateMachineConfig, TimeoutConfig, Transition
from .core._diagram import to_dot, to_mermaid
from .core._effects import Effect, EffectBuilder, effect
from .core._errors import (
    EffectError,
    ErrorCode,
    RetryExhaustedError,
    StateMachineError,
    TimeoutError,
    TransitionError,
)
from .core._retry import RetryPolicy, default_retry_policy
from .core._types import (
    EffectResult,
    Event,
    State,
    StateMachineMetrics,
    StateMetrics,
    StateTotals,
    TransitionResult,
)
from .core._validation import ValidationReport, validate
from .durable._snapshot import CommittedEffect, InFlight, SerializableState
from .engine._engine import StateMachine, create_state_machine
from .engine._saga import CompensationResult
from .runtime._worker import Worker

__version__ = "0.1.0"

# A library logs, an application decides where logs go.
_logging.getLogger("deploysm").addHandler(_logging.NullHandler())

__all__ = [
    "Clock",
    "CommittedEffect",
    "CompensationResult",
    "Effect",
    "EffectBuilder",
    "EffectError",
    "EffectResult",
    "ErrorCode",
    "Event",
    "Guard",
    "Hooks",
    "InFlight",
    "RetryExhaustedError",
    "RetryPolicy",
    "SerializableState",
    "State",
    "StateMachine",
    "StateMachineConfig",
    "StateMachineError",
    "StateMachineMetrics",
    "StateMetrics",
    "StateTotals",
    "SystemClock",
    "TimeoutConfig",
    "TimeoutError",
    "Transition",
    "TransitionError",
    "TransitionResult",
    "ValidationReport",
    "Worker",
    "create_state_machine",
    "default_retry_policy",
    "effect",
    "now",
    "sleep",
    "to_dot",
    "to_mermaid",
    "validate",
]

for _name in __all__:
    _obj = globals()[_name]
    if "._" in getattr(_obj, "__module__", ""):  # defined in a private module
        with _suppress(AttributeError, TypeError):
            _obj.__module__ = "deploysm"
del _name, _obj, _suppress
