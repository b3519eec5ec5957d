"""deploysm: deployment workflows as typed, durable, asyncio-native state machines.

Implementation modules are private; this package's ``__all__`` is the public API.
"""

import logging as _logging
from contextlib import suppress as _suppress

from ._clock import Clock, SystemClock, now, sleep
from ._config import Guard, Hooks, StateMachineConfig, TimeoutConfig, Transition
from ._diagram import to_dot, to_mermaid
from ._effects import Effect, EffectBuilder, effect
from ._engine import StateMachine, create_state_machine
from ._errors import (
    EffectError,
    ErrorCode,
    RetryExhaustedError,
    StateMachineError,
    TimeoutError,
    TransitionError,
)
from ._retry import RetryPolicy, default_retry_policy
from ._saga import CompensationResult
from ._snapshot import CommittedEffect, InFlight, SerializableState
from ._types import (
    EffectResult,
    Event,
    State,
    StateMachineMetrics,
    StateMetrics,
    StateTotals,
    TransitionResult,
)
from ._validation import ValidationReport, validate
from ._worker import Worker

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
    if getattr(_obj, "__module__", "").startswith("deploysm._"):
        with _suppress(AttributeError, TypeError):
            _obj.__module__ = "deploysm"
del _name, _obj, _suppress
