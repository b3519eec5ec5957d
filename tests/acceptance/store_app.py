"""The workflow of the store CLI tests (``--app tests.acceptance.store_app:REGISTRY``).

``release``: ``idle -START-> building -SHIP-> shipping -MIGRATE-> migrated -FINISH-> done``.

* ``building``: idempotent; its first attempt fails (a retry after 1,234 ms);
* ``shipping``: not idempotent, with a rollback; its first attempt fails (rolled back);
* ``migrated``: not idempotent and without a rollback. With ``STORE_APP_CRASH=1`` in the
  environment it kills its own process (SIGKILL) once its intent is durable: a crash
  that parks the machine in ``needs_attention`` when it is resumed. With
  ``STORE_APP_FAIL=1`` it fails instead.

Run as a script, ``python -m tests.acceptance.store_app DB MACHINE_ID`` resumes the
machine from the SQLite file DB and sends ``MIGRATE`` (crashing, with the variable set).
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import signal
import sys
from typing import Any

import deploysm
from deploysm.stores import SQLiteStore

Ctx = dict[str, Any]


def _build(ctx: Ctx, state: deploysm.State[str]) -> deploysm.EffectResult:
    if state.attempts == 1:
        return deploysm.EffectResult(False, "registry busy (simulated)")
    return deploysm.EffectResult(True, "built")


def _ship(ctx: Ctx, state: deploysm.State[str]) -> deploysm.EffectResult:
    ctx["shipped"] = ctx.get("shipped", 0) + 1
    if state.attempts == 1:
        return deploysm.EffectResult(False, "upload interrupted (simulated)")
    return deploysm.EffectResult(True, "shipped")


def _unship(ctx: Ctx, state: deploysm.State[str]) -> None:
    ctx["shipped"] -= 1


def _migrate(ctx: Ctx, state: deploysm.State[str]) -> None:
    if os.environ.get("STORE_APP_CRASH") == "1":
        os.kill(os.getpid(), signal.SIGKILL)
    if os.environ.get("STORE_APP_FAIL") == "1":
        raise RuntimeError("schema locked (simulated)")
    ctx["migrations"] = ctx.get("migrations", 0) + 1


def release() -> deploysm.StateMachineConfig[str, str, Ctx]:
    T = deploysm.Transition
    return deploysm.StateMachineConfig(
        id="release",
        initial_state="idle",
        states=["idle", "building", "shipping", "migrated", "done"],
        events=["START", "SHIP", "MIGRATE", "FINISH"],
        transitions=[
            T("idle", "building", "START"),
            T("building", "shipping", "SHIP"),
            T("shipping", "migrated", "MIGRATE"),
            T("migrated", "done", "FINISH"),
        ],
        effects={
            "building": deploysm.effect().execute(_build).set_idempotent(True).build(),
            "shipping": deploysm.effect().execute(_ship).rollback(_unship).build(),
            "migrated": deploysm.effect().execute(_migrate).build(),
        },
        retry_policy=deploysm.RetryPolicy(
            max_attempts=3, initial_delay_ms=1234, max_delay_ms=10_000, jitter_factor=0
        ),
    )


REGISTRY = {"release": release}


async def _crash(db: str, machine_id: str) -> None:
    async with SQLiteStore(db) as store:
        config = dataclasses.replace(release(), store=store)
        sm = deploysm.create_state_machine(config, {}, machine_id=machine_id)
        await sm.resume()
        await sm.dispatch("MIGRATE")


if __name__ == "__main__":
    asyncio.run(_crash(sys.argv[1], sys.argv[2]))
