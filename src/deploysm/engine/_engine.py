"""The state machine: choice of transition, commit, lifecycle, snapshots.

Effects with retries, timeouts and rollback run in :mod:`._runner`;
compensation lives in :mod:`._saga`.
"""

from __future__ import annotations

import asyncio
import contextlib
from asyncio import current_task
from collections.abc import Mapping
from datetime import datetime
from typing import Any, TypeVar

from ..core._clock import SYSTEM_CLOCK, reset_clock, use_clock
from ..core._config import StateMachineConfig
from ..core._definition import Definition, compile_config
from ..core._errors import ErrorCode, StateMachineError
from ..core._events import coerce_event
from ..core._types import Event, TransitionResult
from ..durable._snapshot import SerializableState
from . import _durability as durability
from . import _lease as lease
from . import _lifecycle as lifecycle
from . import _recovery as recovery
from . import _timers as timers
from ._choice import choose_and_run
from ._machine import Machine
from ._mutex import FifoLock
from ._recovery import ResolveAction
from ._saga import CompensationResult, compensate_locked

__all__ = ["StateMachine", "create_state_machine"]

S = TypeVar("S", bound=str)
E = TypeVar("E", bound=str)
C = TypeVar("C")


class StateMachine(Machine[S, E, C]):
    """One running workflow. Build it with :func:`create_state_machine`."""

    __slots__ = ()

    def __init__(self, definition: Definition, context: C, machine_id: str | None = None) -> None:
        super().__init__(definition, context, machine_id)
        if definition.state_timeout_s is not None:
            timers.arm(self)

    # ------------------------------------------------------------------ dispatch

    async def dispatch(self, event: Event[E] | E | Mapping[str, Any]) -> TransitionResult[S]:
        """Send one event. Concurrent calls run one after another, in arrival order.

        Failed effects, refused transitions and cancellation come back as a result
        with ``success=False``; bad input and a finished machine raise."""
        clock = self._def.clock
        ev = coerce_event(event, clock)
        if self._head.state_deadline is not None and self._state_timer is None:
            timers.arm(self, self._state_deadline)
        task = current_task()
        if task is not None and task is self._owner:
            raise StateMachineError(
                "dispatch() called from inside this machine's own transition would deadlock; "
                "name the next event as the transition's outcome or dispatch from another task",
                ErrorCode.STATE_MACHINE_ERROR,
            )
        lock = self._lock
        if lock is None:
            lock = self._lock = FifoLock()
        if not lock.try_acquire():
            await lock.acquire()
        token = use_clock(clock) if clock is not SYSTEM_CLOCK else None
        self._owner = task
        try:
            result = await choose_and_run(self, ev)
            if self._cancel_requested and self._status != "cancelled":
                await lifecycle.finish_cancel(self)  # cancel() came from a hook
            return result
        finally:
            self._owner = None
            if self._heartbeat is not None:  # a write that should have freed it failed
                lease.stop_heartbeat(self)
            lock.release()
            if token is not None:
                reset_clock(token)

    async def _exclusive(self, fn: Any, *args: Any) -> Any:
        """Run ``fn(self, *args)`` holding the machine's lock, as its own transition."""
        task = asyncio.current_task()
        if task is not None and task is self._owner:
            raise StateMachineError(
                "called from inside this machine's own transition", ErrorCode.STATE_MACHINE_ERROR
            )
        clock = self._def.clock
        token = use_clock(clock)
        try:
            async with self.lock():
                self._owner = task
                try:
                    return await fn(self, *args)
                finally:
                    self._owner = None
                    if self._heartbeat is not None:
                        lease.stop_heartbeat(self)
        finally:
            reset_clock(token)

    async def resume(self) -> TransitionResult[S] | None:
        """Load this machine from its store (or ``load_state``) and finish any transition a
        crash interrupted: an idempotent effect runs again with the same idempotency key; a
        non-idempotent one is rolled back, then retried if attempts remain; one without a
        rollback parks the machine in ``needs_attention``. ``None`` when nothing was in
        flight (or nothing was stored)."""
        result: TransitionResult[S] | None = await self._exclusive(recovery.resume)
        return result

    async def resolve(
        self, action: ResolveAction, by: str | None = None, reason: str | None = None
    ) -> TransitionResult[S] | None:
        """Take a machine out of ``needs_attention``: ``"retry"`` runs the effect again at
        once (same idempotency key), ``"mark_succeeded"`` commits without running it,
        ``"mark_failed"`` records the failure after running its rollback, if any."""
        result: TransitionResult[S] | None = await self._exclusive(
            recovery.resolve, action, by, reason
        )
        return result

    # ------------------------------------------------------------------ runtimes

    def use_store(
        self, store: Any, *, workflow: str | None = None, stored_version: int | None = None
    ) -> None:
        """Write through ``store`` (for a runtime: the store view of its claim) under the
        workflow name ``workflow``; ``stored_version``: the version the store holds
        already (``0`` for a machine whose row the runtime created, empty)."""
        self._store = store
        self._workflow = workflow
        self._saved_version = stored_version

    async def resume_from(self, snapshot: SerializableState) -> TransitionResult[S] | None:
        """``resume()`` from ``snapshot``, just read (and decoded) from this machine's
        store, rather than reading the store again."""
        result: TransitionResult[S] | None = await self._exclusive(recovery.resume, snapshot)
        return result

    def abandon(self) -> None:
        """Its runtime lost the machine (another owner took it over): from now on it
        writes nothing and stops at the next step."""
        self._abandoned = True
        self._stale = True

    async def settle_state_timer(self, now: datetime) -> None:
        """Let a state timeout that is due by ``now`` fire (and its ``timeout_event``
        run) before the caller lets go of the machine; errors are the timer's own."""
        timer = self._state_timer
        deadline = self._head.state_deadline
        if timer is not None and deadline is not None and deadline <= now:
            with contextlib.suppress(Exception):
                await timer

    # ------------------------------------------------------------------ durability

    def snapshot(self) -> SerializableState:
        """The machine as a snapshot, its context encoded to JSON-safe data."""
        return durability.build_snapshot(self)

    async def persist(self, *, bump: bool = False) -> StateMachineError | None:
        """Write the snapshot if persistence is configured; the error if that failed."""
        return await durability.persist(self, bump)

    async def serialize(self) -> SerializableState:
        return durability.build_snapshot(self)

    async def rehydrate(self, snapshot: SerializableState | Mapping[str, Any] | str) -> None:
        """Restore a snapshot; a bad one raises ``INVALID_SNAPSHOT`` and changes nothing."""
        durability.rehydrate(self, snapshot)

    def arm_state_timer(self, deadline: datetime | None = None) -> None:
        timers.arm(self, deadline)

    def stop_state_timer(self) -> None:
        timers.stop(self)

    # ------------------------------------------------------------------ lifecycle

    async def complete(self) -> None:
        """Mark the workflow complete (reaching a final state does this by itself)."""
        await lifecycle.complete(self)

    async def fail(self, error: BaseException | str | None = None) -> None:
        """Mark the workflow failed; with ``compensate_on_failure`` undo committed effects."""
        await lifecycle.fail(self, error)

    async def cancel(self) -> None:
        """Stop a running effect (rolled back if not idempotent), then refuse all events."""
        await lifecycle.cancel(self)

    async def compensate(self) -> CompensationResult:
        """Run the rollbacks of all committed non-idempotent effects, newest first."""
        async with self.lock():
            return await compensate_locked(self)


def create_state_machine(
    config: StateMachineConfig[S, E, C] | Mapping[str, Any],
    context: C,
    machine_id: str | None = None,
) -> StateMachine[S, E, C]:
    """Build a machine; a bad config raises ``INVALID_CONFIG`` listing every problem."""
    definition = compile_config(config)
    if machine_id is not None and (not isinstance(machine_id, str) or not machine_id):
        raise StateMachineError("machine_id must be a non-empty string", ErrorCode.INVALID_CONFIG)
    return StateMachine(definition, context, machine_id)
