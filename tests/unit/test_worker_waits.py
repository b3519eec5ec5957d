"""A starting worker says which machines it waits for: those with work of its workflows
whose lease another worker holds (a worker that stopped without giving its leases
back: they expire by themselves). One store query at start, not one per poll."""

from __future__ import annotations

import asyncio
import logging
import re
from typing import Any

import pytest

from conftest import simple_config
from deploysm import ErrorCode, StateMachineError, Worker
from deploysm.stores import MemoryStore

WAITING = re.compile(
    r"waiting (\d+) s for the lease of worker gone \(a stopped worker's lease expires by itself\)"
)


def waits(caplog: pytest.LogCaptureFixture) -> list[tuple[str | None, str]]:
    return [
        (getattr(r, "machine_id", None), r.getMessage())
        for r in caplog.records
        if r.name == "deploysm.worker" and ("waiting" in r.getMessage() or "more" in r.getMessage())
    ]


async def held_by_gone(store: MemoryStore, *ids: str, workflow: str = "wf") -> None:
    for mid in ids:
        await store.start(workflow, mid, {})
    await store.claim("gone", limit=len(ids), lease_ms=60_000)


async def test_a_starting_worker_says_whose_lease_it_waits_for(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="deploysm")
    store = MemoryStore()
    await held_by_gone(store, *(f"m{i:02}" for i in range(12)))
    await held_by_gone(store, "x", workflow="other")  # not this worker's workflow
    assert await Worker(store, {"wf": simple_config}, worker_id="w").run_until_idle() == 0

    lines = waits(caplog)
    assert [mid for mid, _ in lines[:10]] == [f"m{i:02}" for i in range(10)]
    for _, text in lines[:10]:
        found = WAITING.fullmatch(text)
        assert found is not None, text
        assert 0 < int(found.group(1)) <= 60
    assert lines[10:] == [(None, "and 2 more machine(s) wait for the lease of another worker")]
    waited = [r for r in caplog.records if "waiting" in r.getMessage()]
    assert waited[0].fields["owner"] == "gone"  # type: ignore[attr-defined]
    assert "lease_expires_at" in waited[0].fields  # type: ignore[attr-defined]


async def test_run_says_it_at_start_too(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="deploysm")
    store = MemoryStore()
    await held_by_gone(store, "m1")
    worker = Worker(store, {"wf": simple_config}, worker_id="w", poll_ms=10)
    task = asyncio.get_running_loop().create_task(worker.run())
    for _ in range(100):
        if waits(caplog):
            break
        await asyncio.sleep(0)
    await worker.stop()
    await task
    assert [mid for mid, _ in waits(caplog)] == ["m1"]


async def test_nothing_to_wait_for_says_nothing(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="deploysm")
    store = MemoryStore()
    await store.start("wf", "m1", {})
    await store.claim("w", limit=1, lease_ms=60_000)  # the worker's own lease
    assert await Worker(store, {"wf": simple_config}, worker_id="w").run_until_idle() >= 0
    assert waits(caplog) == []


class NoLeaseReport(MemoryStore):
    async def leased_elsewhere(self, *args: Any, **kw: Any) -> Any:
        raise StateMachineError("store unreachable", ErrorCode.STORE_UNAVAILABLE)


async def test_a_store_that_cannot_say_does_not_stop_the_worker(
    caplog: pytest.LogCaptureFixture,
) -> None:
    store = NoLeaseReport()
    await store.start("wf", "m1", {})
    await store.send("m1", "START")
    assert await Worker(store, {"wf": simple_config}, worker_id="w").run_until_idle() == 1
    assert waits(caplog) == []
