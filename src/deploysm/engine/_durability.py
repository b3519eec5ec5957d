"""A machine's snapshots: building, persisting and restoring them."""

from __future__ import annotations

import asyncio
import dataclasses
from typing import TYPE_CHECKING, Any

from ..core import _step as step
from ..core._definition import Definition
from ..core._effects import call_maybe_async
from ..core._errors import ErrorCode, StateMachineError
from ..core._head import Head, initial_head
from ..core._history import window
from ..durable._codec import decode_context, jsonable
from ..durable._format import state_out
from ..durable._json import cache_for
from ..durable._snapshot import SerializableState
from . import _lease as lease
from ._timeouts import uninterrupted
from ._timers import arm, stop

if TYPE_CHECKING:
    from ._machine import Machine

__all__ = ["build_snapshot", "persist", "rehydrate"]

_STALE = (ErrorCode.CONFLICT, ErrorCode.LEASE_LOST, ErrorCode.LEASE_HELD)


def build_snapshot(m: Machine[Any, Any, Any], *, copy: bool = True) -> SerializableState:
    """The machine as a snapshot, its context encoded to JSON-safe data.

    ``copy=False`` shares the machine's lists and records instead of copying them:
    only for a consumer that encodes the snapshot before it next awaits (a store's
    ``save`` does), since the machine goes on changing them. Such a snapshot also
    carries the machine's JSON cache, so its ``to_json()`` reuses what earlier saves
    encoded of the history (``_snapshot_json``)."""
    d = m._def
    flight = m._in_flight
    if copy:
        metrics = m.get_metrics()
        history = list(m._history)
        committed = list(m._committed)
        flight = dataclasses.replace(flight) if flight is not None else None
    else:
        metrics = dataclasses.replace(m._metrics, states=m._metrics.states)
        metrics.total_duration_ms = m.duration_ms()
        history = m._history
        committed = m._committed
    snap = SerializableState(
        current_state=m._state,
        context=jsonable(m._ctx),
        history=history,
        metrics=metrics,
        version=m._version,
        machine_id=m.machine_id,
        definition_id=d.id,
        fingerprint=d.fingerprint,
        status=m._status,
        in_flight=flight,
        committed_effects=committed,
        last_error=dict(m._last_error) if m._last_error else None,
        state_deadline=m._state_deadline,
    )
    if not copy:
        snap._json = cache_for(m)
    return snap


async def persist(m: Machine[Any, Any, Any], bump: bool) -> StateMachineError | None:
    """Write the snapshot if persistence is configured; return the error if that failed.

    ``bump`` counts the write as a change of its own (intents, failures). A write,
    once started, is not cut short by cancellation."""
    d = m._def
    store = m._store
    write = d.persist_state
    if write is None and store is None:
        return None
    if bump:
        m._put(step.bumped(m._head))
    try:
        snap = build_snapshot(m, copy=store is None)
        if store is not None:
            pending = m._pending
            m._pending = []
            try:
                if d.leases and store is d.store:  # the machine leases itself (_lease)
                    await uninterrupted(lease.save(m, snap, pending, m._saved_version))
                else:
                    await uninterrupted(
                        store.save(
                            snap,
                            expected_version=m._saved_version,
                            journal=pending,
                            workflow=m._workflow,
                        )
                    )
            except BaseException:
                m._pending = pending + m._pending
                raise
            m._saved_version = snap.version
        elif write is not None:
            await uninterrupted(call_maybe_async(write, snap))
    except asyncio.CancelledError:
        raise
    except StateMachineError as e:
        if bump:
            m._put(step.bumped(m._head, -1))
        if e.code in _STALE:  # another writer has or runs the machine
            m._stale = True
        await _failed(m, e)
        return e
    except Exception as e:
        if bump:
            m._put(step.bumped(m._head, -1))
        obs = m._def.observer
        err = StateMachineError(
            f"could not persist machine {m.machine_id!r}: {obs.error_text(e)}",
            ErrorCode.PERSISTENCE_ERROR,
            state=m._state.name,
        )
        err.__cause__ = e
        if obs.enabled("error"):
            await obs.log("error", err.message, {"machine_id": m.machine_id})
        await _failed(m, err)
        return err
    return None


async def _failed(m: Machine[Any, Any, Any], error: StateMachineError) -> None:
    """After a failed write the machine becomes what its store holds (it may have been
    changed for the write: a new state, an intent, journal records), so that memory
    never claims what is not durable. A stale machine (another writer, a lost lease)
    is left as it is: it refuses everything until ``resume()``; so is one whose store
    cannot even be read now."""
    m._write_error = error
    if m._store is None or m._stale:
        return
    try:
        snap = await uninterrupted(m._store.load(m.machine_id))
        if snap is None:
            _as_new(m)
        else:
            rehydrate(m, snap, check_busy=False, validated=True)
    except asyncio.CancelledError:
        raise
    except Exception:
        m._stale = True


def _as_new(m: Machine[Any, Any, Any]) -> None:
    """A machine its store has never taken a snapshot of: back to its initial state."""
    d = m._def
    m._put(initial_head(d.initial, m._ctx, d.clock.now()))
    m._cancel_requested = False
    m._pending = []
    m._json = None
    if d.state_timeout_s is not None:
        arm(m)
    else:
        stop(m)


def rehydrate(
    m: Machine[Any, Any, Any],
    snapshot: Any,
    *,
    check_busy: bool = True,
    validated: bool = False,
) -> None:
    """Restore ``snapshot`` into ``m``; a bad one raises ``INVALID_SNAPSHOT`` and
    leaves ``m`` untouched (every check runs before the first assignment).
    ``validated``: a snapshot a store just decoded with ``from_dict``, not checked
    twice (its fit to this machine still is)."""
    if validated and isinstance(snapshot, SerializableState):
        snap = snapshot
    else:
        snap = SerializableState.coerce(snapshot)
    d = m._def
    bad = snapshot_problem(snap, d, m.machine_id if m._explicit_id else None)
    if bad:
        raise StateMachineError(f"snapshot does not fit this machine: {bad}", "INVALID_SNAPSHOT")
    try:
        ctx = decode_context(snap.context, m._ctx)
    except Exception as e:
        err = StateMachineError(f"snapshot context is invalid: {e}", ErrorCode.INVALID_SNAPSHOT)
        raise err from e
    lock = m._lock
    if check_busy and lock is not None and lock.locked():
        raise StateMachineError("cannot rehydrate while a transition runs", "BUSY")
    m._machine_id = snap.machine_id
    history, metrics, dropped = window(
        snap.history, snap.metrics, d.history_limit, snap.schema_version >= 2
    )
    m._put(
        Head(
            snap.current_state,
            ctx,
            snap.version,
            snap.status,
            snap.in_flight,
            list(snap.committed_effects),
            snap.last_error,
            m._state_deadline,
            history,
            metrics,
        )
    )
    m._cancel_requested = snap.status == "cancelled"
    m._saved_version = snap.version
    m._stale = False
    m._pending = []
    if dropped and m._store is not None:  # kept in the journal, written with the next save
        m.note("history", states=[state_out(s) for s in dropped])
    m.stop_state_timer()
    if snap.status == "active" and d.state_timeout_s is not None and not m.is_final():
        m.arm_state_timer(snap.state_deadline)


def snapshot_problem(snap: SerializableState, d: Definition, machine_id: str | None) -> str | None:
    """Why ``snap`` cannot belong to a machine of ``d`` (``None`` when it can)."""
    if snap.definition_id != d.id:
        return f"it belongs to definition {snap.definition_id!r}, not {d.id!r}"
    if snap.fingerprint != d.fingerprint:
        return "the definition's states, events or transitions changed since it was written"
    if machine_id is not None and snap.machine_id != machine_id:
        return f"it is machine {snap.machine_id!r}, not {machine_id!r}"
    names = [snap.current_state.name, *(s.name for s in snap.history)]
    names += [v.state for v in snap.metrics.states]
    names += list(snap.metrics.per_state)
    names += [c.state for c in snap.committed_effects]
    if snap.in_flight is not None:
        names += [snap.in_flight.from_state, snap.in_flight.to_state]
        idx = snap.in_flight.transition_index
        if idx >= len(d.effect_by_index) or d.effect_by_index[idx] is None:
            return f"in-flight transition #{idx} has no effect in this definition"
    for c in snap.committed_effects:
        if c.transition_index >= len(d.effect_by_index):
            return f"committed effect names unknown transition #{c.transition_index}"
    unknown = sorted({n for n in names if n not in d.state_set})
    if unknown:
        return f"it names unknown state(s) {unknown}"
    return None
