"""The configuration a user writes: transitions, timeouts, hooks and the config itself.

A config may be given as the dataclasses below or as plain mappings with the
same (snake_case) keys; :func:`coerce_config` turns either into dataclasses and
collects every problem instead of stopping at the first.
"""

from __future__ import annotations

import dataclasses
import random as _random
from collections.abc import Callable, Mapping, Sequence
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from ._clock import Clock
from ._effects import Effect
from ._errors import ErrorCode, StateMachineError
from ._history import DEFAULT_HISTORY_LIMIT
from ._retry import RetryPolicy
from ._types import Event

__all__ = ["Guard", "Hooks", "StateMachineConfig", "TimeoutConfig", "Transition", "invalid_config"]

S = TypeVar("S", bound=str)
E = TypeVar("E", bound=str)
C = TypeVar("C")

Guard = Callable[[Any, Event[Any]], Any]
"""A transition's guard: ``guard(context, event)``, sync or async. It receives the
machine's context and the ``Event`` being dispatched; a truthy result lets the
transition be taken, a falsy one or an exception refuses it."""


@dataclass(frozen=True, slots=True)
class Transition(Generic[S, E]):
    """``A --event--> B``; ``from_`` may name several states. The first transition
    (in declaration order) whose guard passes is taken."""

    from_: S | Sequence[S]
    to: S
    event: E
    guard: Guard | None = None
    effect: Effect[Any] | None = None

    @property
    def sources(self) -> tuple[S, ...]:
        f = self.from_
        if isinstance(f, str):
            return (f,)
        return tuple(f)


@dataclass(frozen=True, slots=True)
class TimeoutConfig:
    """Timeouts in milliseconds; ``None`` means no limit.

    ``timeout_event`` is dispatched when ``state_timeout_ms`` runs out.
    """

    state_timeout_ms: float | None = None
    transition_timeout_ms: float | None = None
    effect_timeout_ms: float | None = None
    timeout_event: str | None = None


HOOK_NAMES = (
    "on_state_enter",
    "on_state_exit",
    "on_transition",
    "on_error",
    "on_retry",
    "on_complete",
    "on_cancel",
    "on_metric",
    "on_log",
)


@dataclass(frozen=True, slots=True)
class Hooks:
    """Observability hooks; each may be sync or async. A hook that raises is logged
    and never changes the machine."""

    on_state_enter: Callable[..., Any] | None = None
    on_state_exit: Callable[..., Any] | None = None
    on_transition: Callable[..., Any] | None = None
    on_error: Callable[..., Any] | None = None
    on_retry: Callable[..., Any] | None = None
    on_complete: Callable[..., Any] | None = None
    on_cancel: Callable[..., Any] | None = None
    on_metric: Callable[..., Any] | None = None
    on_log: Callable[..., Any] | None = None


@dataclass(eq=False)
class StateMachineConfig(Generic[S, E, C]):
    """A workflow definition. Build one and share it between many machines.

    Building one checks it: a bad config raises ``StateMachineError`` with code
    ``INVALID_CONFIG`` listing every problem (as ``create_state_machine`` does).

    ``final_states``: the states that end the machine (default: the states with no
    outgoing transition). ``failure_states``: those of the final states that mean the
    workflow failed; entering one makes the machine's status ``failed`` (not
    ``completed``, and ``on_complete`` is not called). Default: ``["failed"]`` when
    ``"failed"`` is a final state (the example deployment workflow has one), else
    none; ``[]`` says that no final state is a failure. Each must be a final state.

    ``history_limit``: how many of the states it left a machine keeps (``get_history()``,
    the snapshot's ``history``, and as many finished visits in ``metrics.states``);
    older ones drop off the front, so a snapshot's size does not grow with the
    machine's age. Default 10: a deployment's whole run fits, a long-lived machine
    saves a few KB. The full history stays in the store's journal
    (``deploysm.stores.full_history``). An int from 0 to 1,000,000.
    """

    id: str
    initial_state: S
    states: Sequence[S]
    events: Sequence[E]
    transitions: Sequence[Transition[S, E] | Mapping[str, Any]]
    effects: Mapping[S, Effect[Any]] | None = None
    retry_policy: RetryPolicy | Mapping[str, Any] | None = None
    timeout: TimeoutConfig | Mapping[str, Any] | None = None
    hooks: Hooks | Mapping[str, Any] | None = None
    persist_state: Callable[..., Any] | None = None
    load_state: Callable[..., Any] | None = None
    final_states: Sequence[S] | None = None
    clock: Clock | None = None
    random: _random.Random | None = None
    validate_context: Callable[..., Any] | None = None
    compensated_state: S | None = None
    compensate_on_failure: bool = False
    store: Any = None
    redact_keys: Sequence[str] | None = None
    lease_ms: int = 30_000
    failure_states: Sequence[S] | None = None
    history_limit: int = DEFAULT_HISTORY_LIMIT
    # the compiled Definition, cached by ``compile_config``
    _definition: Any = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if _COERCING.get():
            return
        cfg, problems = coerce_config(self)
        if cfg is not None:
            for check in CHECKS:
                problems = problems + check(cfg)
        if problems:
            raise invalid_config(problems)


# The checks of a whole config (``_validation.check_errors``). They need this module's
# classes, so they plug in here when ``deploysm.core`` is imported (its ``__init__``)
# rather than this module importing them: no import cycle.
CHECKS: list[Callable[[StateMachineConfig[Any, Any, Any]], list[str]]] = []

# True while ``coerce_config`` builds the checked copy of a config it is checking.
_COERCING: ContextVar[bool] = ContextVar("deploysm_coercing", default=False)


def invalid_config(problems: list[str]) -> StateMachineError:
    """The one error a bad config raises, listing every problem."""
    listing = "\n".join(f"  - {p}" for p in problems)
    return StateMachineError(
        f"invalid state machine config ({len(problems)} problem(s)):\n{listing}",
        ErrorCode.INVALID_CONFIG,
        problems=problems,
    )


MISSING: Any = ()  # stands for a required list that was not given at all

_CONFIG_FIELDS = tuple(f.name for f in dataclasses.fields(StateMachineConfig) if f.init)
_REQUIRED = ("id", "initial_state", "states", "events", "transitions")


def coerce_config(raw: Any) -> tuple[StateMachineConfig[Any, Any, Any] | None, list[str]]:
    """Turn a config or mapping into a ``StateMachineConfig``; list every problem."""
    problems: list[str] = []
    if isinstance(raw, StateMachineConfig):
        values = {name: getattr(raw, name) for name in _CONFIG_FIELDS}
    elif isinstance(raw, Mapping):
        unknown = sorted(str(k) for k in raw if k not in _CONFIG_FIELDS)
        if unknown:
            problems.append(f"unknown config field(s): {', '.join(unknown)}")
        values = {k: raw.get(k) for k in _CONFIG_FIELDS if k in raw}
    else:
        return None, [f"config must be a StateMachineConfig or a mapping, not {type(raw).__name__}"]

    for name in _REQUIRED:
        if values.get(name) is None:
            problems.append(f"missing required field: {name}")
            values[name] = MISSING if name in ("states", "events", "transitions") else None

    transitions: list[Transition[Any, Any]] = []
    raw_transitions = values["transitions"]
    if isinstance(raw_transitions, str | bytes) or not isinstance(raw_transitions, Sequence):
        problems.append("transitions must be a list")
        raw_transitions = []
    for i, t in enumerate(raw_transitions):
        tr, errs = _coerce_transition(t, i)
        problems.extend(errs)
        if tr is not None:
            transitions.append(tr)
    values["transitions"] = transitions

    for name, kind in (("states", "state"), ("events", "event")):
        seq = values[name]
        if seq is MISSING:
            continue
        if isinstance(seq, str | bytes) or not isinstance(seq, Sequence | set | frozenset):
            problems.append(f"{name} must be a list of {kind} names")
            values[name] = []
        else:
            values[name] = list(seq)

    try:
        values["retry_policy"] = RetryPolicy.coerce(values.get("retry_policy"))
    except (TypeError, ValueError) as e:
        problems.append(f"retry_policy: {e}")
        values["retry_policy"] = None
    values["timeout"] = _coerce_dataclass(TimeoutConfig, values.get("timeout"), "timeout", problems)
    values["hooks"] = _coerce_dataclass(Hooks, values.get("hooks"), "hooks", problems)

    effects = values.get("effects")
    if effects is not None and not isinstance(effects, Mapping):
        problems.append(
            f"effects must be a mapping of state name to effect, not {type(effects).__name__}"
        )
        effects = None
    values["effects"] = effects
    token = _COERCING.set(True)
    try:
        return StateMachineConfig(**values), problems
    finally:
        _COERCING.reset(token)


def transitions_of(cfg: StateMachineConfig[Any, Any, Any]) -> list[Transition[Any, Any]]:
    """The transitions of a coerced config (mappings were turned into ``Transition``)."""
    return [t for t in cfg.transitions if isinstance(t, Transition)]


def _coerce_transition(t: Any, i: int) -> tuple[Transition[Any, Any] | None, list[str]]:
    if isinstance(t, Transition):
        return t, []
    if not isinstance(t, Mapping):
        return None, [f"transitions[{i}] must be a Transition or a mapping, not {type(t).__name__}"]
    allowed = {"from", "from_", "to", "event", "guard", "effect"}
    errs = [f"transitions[{i}] has unknown key {k!r}" for k in t if k not in allowed]
    src = t.get("from", t.get("from_"))
    for key, val in (("from", src), ("to", t.get("to")), ("event", t.get("event"))):
        if val is None:
            errs.append(f"transitions[{i}] is missing '{key}'")
    if errs:
        return None, errs
    return Transition(src, t["to"], t["event"], t.get("guard"), t.get("effect")), []


def _coerce_dataclass(cls: Any, value: Any, name: str, problems: list[str]) -> Any:
    if value is None or isinstance(value, cls):
        return value
    if isinstance(value, Mapping):
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(str(k) for k in value if k not in known)
        if unknown:
            problems.append(f"{name} has unknown field(s): {', '.join(unknown)}")
        return cls(**{k: v for k, v in value.items() if k in known})
    problems.append(f"{name} must be a {cls.__name__} or a mapping, not {type(value).__name__}")
    return None
