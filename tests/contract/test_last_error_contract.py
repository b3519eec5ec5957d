"""``list()`` tells each machine's last error (``MachineInfo.last_error``), on every
store, without decoding snapshots: written by ``save`` beside the snapshot."""

from __future__ import annotations

import dataclasses
import random
from typing import Any

from deploysm import RetryPolicy, StateMachineConfig, Transition, create_state_machine, effect
from deploysm.stores import MachineInfo, Store
from deploysm.testing import VirtualClock


def _config(store: Store, fail: list[bool]) -> StateMachineConfig[Any, Any, Any]:
    def deploy(ctx: Any, state: Any) -> None:
        if fail[0]:
            raise RuntimeError("registry down\nfor maintenance")

    return StateMachineConfig(
        id="deploy",
        initial_state="idle",
        states=["idle", "deploying", "done", "failed"],
        events=["GO", "DONE", "FAIL"],
        transitions=[
            Transition("idle", "deploying", "GO"),
            Transition("deploying", "done", "DONE"),
            Transition(["idle", "deploying"], "failed", "FAIL"),
        ],
        effects={"deploying": effect().execute(deploy).set_idempotent(True).build()},
        retry_policy=RetryPolicy(max_attempts=2, initial_delay_ms=10, jitter_factor=0),
        store=store,
        clock=VirtualClock(),
        random=random.Random(1),
    )


async def _info(store: Store, machine_id: str) -> MachineInfo:
    (info,) = [i for i in await store.list() if i.machine_id == machine_id]
    return info


async def test_retries_ran_out_active_with_its_error_listed(store: Store) -> None:
    fail = [True]
    sm = create_state_machine(_config(store, fail), {}, "m1")
    assert not (await sm.dispatch("GO")).success
    info = await _info(store, "m1")
    assert (info.status, info.state) == ("active", "idle")  # the state stays, waiting
    assert info.last_error is not None
    assert info.last_error.startswith("RETRY_EXHAUSTED: ")
    assert "registry down" in info.last_error
    fail[0] = False
    assert (await sm.dispatch("GO")).success  # a commit clears it
    assert (await _info(store, "m1")).last_error is None


async def test_a_machine_in_a_failure_state_is_listed_failed_with_why(store: Store) -> None:
    sm = create_state_machine(_config(store, [True]), {}, "m2")
    await sm.dispatch("GO")
    assert (await sm.dispatch("FAIL")).success
    (info,) = await store.list(status="failed")
    assert (info.machine_id, info.state) == ("m2", "failed")
    assert info.last_error is not None and "registry down" in info.last_error
    ok = create_state_machine(_config(store, [False]), {}, "m3")
    await ok.dispatch("GO")
    await ok.dispatch("DONE")
    assert (await _info(store, "m3")).last_error is None
    assert [i.machine_id for i in await store.list("completed")] == ["m3"]


async def test_a_failure_without_an_error_says_how_it_failed(store: Store) -> None:
    sm = create_state_machine(_config(store, [False]), {}, "m4")
    await sm.dispatch("FAIL")
    info = await _info(store, "m4")
    assert info.status == "failed"
    assert info.last_error == "entered failure state 'failed' from 'idle' on FAIL"


async def test_fail_records_its_error(store: Store) -> None:
    sm = create_state_machine(_config(store, [False]), {}, "m5")
    await sm.dispatch("GO")
    await sm.fail("operator gave up")
    info = await _info(store, "m5")
    assert (info.status, info.last_error) == ("failed", "STATE_MACHINE_ERROR: operator gave up")


def test_machine_info_last_error_defaults_to_none() -> None:
    fields = {f.name: f for f in dataclasses.fields(MachineInfo)}
    assert fields["last_error"].default is None
