"""A machine's value and bookkeeping (:class:`Machine`): the one slot holding its
:class:`~..core._head.Head`, the read-only views of it, and the small helpers every
driver module uses (journal notes, error records, the lock)."""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Mapping
from datetime import datetime
from typing import Any, Generic, TypeVar

from ..core._config import StateMachineConfig
from ..core._definition import CompiledTransition, Definition
from ..core._errors import ErrorCode, StateMachineError
from ..core._head import Head, initial_head
from ..core._history import copy_metrics
from ..core._records import CommittedEffect, InFlight, Status
from ..core._types import Event, State, StateMachineMetrics, TransitionResult
from ..stores._base import JournalRecord
from ._mutex import FifoLock

__all__ = ["Machine"]

S = TypeVar("S", bound=str)
E = TypeVar("E", bound=str)
C = TypeVar("C")


class Machine(Generic[S, E, C]):
    """A machine's value and its bookkeeping, and what the driver modules read and
    call. :class:`~._engine.StateMachine` adds the public operations; the four methods
    that carry out a driver's work (``dispatch``, ``persist`` and the state timer's)
    are its own, declared here so the driver modules, which take a ``Machine``, never
    import the engine above them."""

    __slots__ = (
        "__weakref__",
        "_abandoned",
        "_cancel_requested",
        "_cancellable",
        "_def",
        "_explicit_id",
        "_head",
        "_heartbeat",
        "_json",
        "_lease_owner",
        "_lease_token",
        "_lock",
        "_machine_id",
        "_owner",
        "_pending",
        "_saved_version",
        "_stale",
        "_state_timer",
        "_store",
        "_workflow",
        "_write_error",
    )

    def __init__(self, definition: Definition, context: C, machine_id: str | None = None) -> None:
        self._def = definition
        self._explicit_id = machine_id is not None
        self._machine_id: str = machine_id if machine_id is not None else definition.id
        self._head: Head = initial_head(definition.initial, context, definition.clock.now())
        self._lock: FifoLock | None = None
        self._owner: asyncio.Task[Any] | None = None
        self._cancellable = False
        self._cancel_requested = False
        self._json: Any = None  # the snapshot JSON cache of a stored machine
        self._pending: list[JournalRecord] = []
        self._saved_version: int | None = None
        self._stale = False
        self._abandoned = False  # its lease was lost: stop, touch nothing
        self._lease_owner: str | None = None  # this object's owner id in leases (_lease)
        self._lease_token: int | None = None  # the fencing token of the lease it holds
        self._heartbeat: asyncio.Task[None] | asyncio.TimerHandle | None = None
        self._store: Any = definition.store
        self._workflow: str | None = None
        self._write_error: StateMachineError | None = None  # the last durable write that failed
        self._state_timer: asyncio.Task[None] | None = None

    # ------------------------------------------------------------------ the value

    def _put(self, head: Head) -> Head:
        """Replace the machine's durable state: the one place that assigns it."""
        self._head = head
        return head

    # Read-only views of the value's parts, for the engine's own modules.
    @property
    def _state(self) -> State[S]:
        return self._head.state

    @property
    def _ctx(self) -> C:
        ctx: C = self._head.ctx
        return ctx

    @property
    def _version(self) -> int:
        return self._head.version

    @property
    def _status(self) -> Status:
        return self._head.status

    @property
    def _in_flight(self) -> InFlight | None:
        return self._head.in_flight

    @property
    def _committed(self) -> list[CommittedEffect]:
        return self._head.committed

    @property
    def _last_error(self) -> dict[str, Any] | None:
        return self._head.last_error

    @property
    def _state_deadline(self) -> datetime | None:
        return self._head.state_deadline

    @property
    def _history(self) -> list[State[S]]:
        return self._head.history

    @property
    def _metrics(self) -> StateMachineMetrics:
        return self._head.metrics

    # ------------------------------------------------------------------ reading

    @property
    def config(self) -> StateMachineConfig[S, E, C]:
        return self._def.config

    @property
    def machine_id(self) -> str:
        return self._machine_id

    @property
    def status(self) -> Status:
        return self._head.status

    @property
    def version(self) -> int:
        return self._head.version

    @property
    def in_flight(self) -> InFlight | None:
        """The transition whose effect has started or waits for its next attempt (its
        ``next_retry_at``), else ``None``. Read-only: the record is never changed."""
        return self._head.in_flight

    @property
    def last_error(self) -> dict[str, Any] | None:
        """The last recorded error (``type``, ``code``, ``message``, ``state``), if any."""
        return self._head.last_error

    @property
    def state_deadline(self) -> datetime | None:
        """When the current state's timeout fires (``state_timeout_ms``), if armed."""
        return self._head.state_deadline

    @property
    def write_error(self) -> StateMachineError | None:
        """The error of the last durable write that failed (``None`` if none did): what it
        was writing is not durable, and the machine is back to what its store holds."""
        return self._write_error

    @property
    def stale(self) -> bool:
        """Another writer changed the machine (or its lease was lost): it refuses every
        call until ``resume()`` loads the stored state."""
        return self._stale

    def get_state(self) -> State[S]:
        return self._head.state

    def get_context(self) -> C:
        ctx: C = self._head.ctx
        return ctx

    def update_context(self, fn: Any) -> C:
        """Apply ``fn(context)``; if it returns a value, that becomes the context."""
        result = fn(self._ctx)
        if inspect.isawaitable(result):
            if inspect.iscoroutine(result):
                result.close()
            raise TypeError("update_context takes a plain function, not a coroutine function")
        if result is not None:
            self._put(self._head._replace(ctx=result))
        return self._ctx

    def get_history(self) -> list[State[S]]:
        """The states this machine left, oldest first: the last ``history_limit`` of
        them (the full history is in its store's journal: ``stores.full_history``)."""
        return list(self._history)

    def get_metrics(self) -> StateMachineMetrics:
        """A copy of the metrics; ``states`` holds the recent visits (see
        :class:`StateMachineMetrics`)."""
        return copy_metrics(self._head.metrics, self.duration_ms())

    def duration_ms(self) -> float:
        """From entering the first state to now (to the last state once finished)."""
        metrics = self._metrics
        visits = metrics.states
        if not visits:
            return 0.0
        start = metrics.started_at or visits[0].entered_at
        end = visits[-1].entered_at if self._status != "active" else self._def.clock.now()
        return (end - start).total_seconds() * 1000.0

    def available_transitions(self) -> list[CompiledTransition]:
        """The transitions the current state accepts, in declaration order."""
        by_event = self._def.index.get(self._state.name, {})
        return sorted((t for ts in by_event.values() for t in ts), key=lambda t: t.index)

    def available_events(self) -> list[str]:
        """The events the current state has a transition for (guards not evaluated)."""
        by_event = self._def.index.get(self._state.name, {})
        return [e for e in self._def.events if e in by_event]

    def is_final(self) -> bool:
        return self._state.name in self._def.finals

    def check_active(self) -> None:
        if self._stale:
            raise StateMachineError(
                f"machine {self._machine_id!r} was changed by another writer (or its store "
                "could not be read after a failed write); resume() it to load the stored state",
                ErrorCode.CONFLICT,
                state=self._state.name,
            )
        if self._cancel_requested or self._status == "cancelled":
            raise StateMachineError(
                "the machine was cancelled", ErrorCode.CANCELLED, state=self._state.name
            )
        if self._status == "needs_attention":
            raise StateMachineError(
                f"machine {self._machine_id!r} needs an operator: resolve() it first",
                ErrorCode.NEEDS_ATTENTION,
                state=self._state.name,
            )
        if self._status != "active":
            raise StateMachineError(
                f"machine {self._machine_id!r} is {self._status}; it takes no more events",
                ErrorCode.NOT_ACTIVE,
                state=self._state.name,
            )
        if self._in_flight is not None:
            raise StateMachineError(
                f"machine {self._machine_id!r} has an unfinished transition "
                f"({self._in_flight.from_state} -> {self._in_flight.to_state}): resume() it first",
                ErrorCode.NEEDS_ATTENTION,
                state=self._state.name,
            )

    @property
    def durable(self) -> bool:
        d = self._def
        return d.persist_state is not None or self._store is not None

    def note(self, kind: str, **data: Any) -> None:
        """Queue a journal record; it is written with the next snapshot (store only)."""
        if self._store is not None:
            self._pending.append(JournalRecord(kind, self._def.clock.now(), data))

    def lock(self) -> FifoLock:
        """The lock that keeps this machine's transitions one at a time."""
        if self._lock is None:
            self._lock = FifoLock()
        return self._lock

    # ------------------------------------------------------------------ errors & timers

    def error_record(self, error: BaseException) -> dict[str, Any]:
        return {
            "type": type(error).__name__,
            "code": getattr(error, "code", None),
            "message": self._def.observer.error_text(error),
            "state": self._state.name,
        }

    async def report_error(self, error: BaseException) -> None:
        d = self._def
        if d.hooks.on_error is not None:
            await d.observer.call("on_error", d.hooks.on_error, error, self._state, self._ctx)
        obs = d.observer
        if obs.enabled("error"):
            await obs.log(
                "error",
                f"{type(error).__name__} in {self._state.name}: {obs.error_text(error)}",
                {"machine_id": self._machine_id, "code": getattr(error, "code", None)},
            )

    # ------------------------------------------------------------------ StateMachine's

    async def dispatch(self, event: Event[E] | E | Mapping[str, Any]) -> TransitionResult[S]:
        raise NotImplementedError

    async def persist(self, *, bump: bool = False) -> StateMachineError | None:
        raise NotImplementedError

    def arm_state_timer(self, deadline: datetime | None = None) -> None:
        raise NotImplementedError

    def stop_state_timer(self) -> None:
        raise NotImplementedError
