"""The public methods a runtime (the worker, or one of yours) drives a machine with."""

from __future__ import annotations

from typing import Any

import pytest
from test_failed_writes import MID, FlakyStore, config

from deploysm import ErrorCode, StateMachineError, create_state_machine
from deploysm.stores import MemoryStore


async def test_a_failed_commit_shows_in_write_error_and_in_flight() -> None:
    store = FlakyStore()
    sm = create_state_machine(config(store), {}, machine_id=MID)
    store.plan = [False, True]  # the intent is written, the commit is not

    result = await sm.dispatch("GO")

    assert not result.success
    assert sm.write_error is not None and sm.write_error.code == ErrorCode.PERSISTENCE_ERROR
    flight = sm.in_flight
    assert flight is not None and (flight.from_state, flight.to_state) == ("idle", "working")
    assert flight.phase == "running" and flight.attempt == 1
    assert not sm.stale and sm.state_deadline is None


async def test_use_store_and_resume_from_a_claimed_snapshot() -> None:
    store = FlakyStore()
    first = create_state_machine(config(None), {}, machine_id=MID)
    first.use_store(store, workflow="flow")
    store.plan = [False, True]
    await first.dispatch("GO")  # in flight in the store
    claimed = await store.load(MID)
    assert claimed is not None and claimed.in_flight is not None

    second = create_state_machine(config(None), {}, machine_id=MID)
    second.use_store(store, workflow="flow", stored_version=claimed.version)
    result = await second.resume_from(claimed)

    assert result is not None and result.success
    assert second.get_state().name == "working" and second.in_flight is None
    stored = await store.load(MID)
    assert stored is not None and stored.current_state.name == "working"
    assert second.write_error is None


async def test_an_abandoned_machine_refuses_everything() -> None:
    sm = create_state_machine(config(MemoryStore()), {}, machine_id=MID)
    await sm.dispatch("GO")
    sm.abandon()
    assert sm.stale
    with pytest.raises(StateMachineError) as e:
        await sm.dispatch("CHECK")
    assert e.value.code == ErrorCode.CONFLICT
    assert sm.get_state().name == "working"


async def test_last_error_is_the_recorded_failure() -> None:
    sm = create_state_machine(config(MemoryStore()), {}, machine_id=MID)
    await sm.dispatch("GO")
    await sm.fail("operator stopped it")
    error: dict[str, Any] | None = sm.last_error
    assert error is not None and error["message"] == "operator stopped it"
    assert sm.status == "failed"
