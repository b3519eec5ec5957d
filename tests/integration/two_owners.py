"""A process of the two-owners test (``test_two_owners.py``)::

    python two_owners.py ROLE STORE LEDGER N [SCHEMA]

``STORE`` is a SQLite file or a ``postgresql://`` DSN (then in ``SCHEMA``). Machines
``m0 .. m{N-1}`` of a one-step workflow, no worker::

    idle -> shipped   (event SHIP; a non-idempotent effect with a rollback, 2 attempts)

The effect writes ``start`` to the ledger (crash_worker's durable SQLite ledger), works
``EFFECT_S`` (longer than the lease: only the heartbeat keeps it), and writes ``end``;
the rollback writes ``undo``.

* ``a``: dispatches SHIP on every machine at once; prints ``started`` once every effect
  runs, then ``a MID ok`` or ``a MID CODE`` per machine.
* ``b``: for every machine, calls ``resume()`` until it finds nothing in flight
  (``b MID done``), counting the refusals (``b MID refused CODE`` once per code seen).
  A machine B takes over (``b MID took``) is finished by B.

Any other exception is a traceback on stderr and a non-zero exit.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from typing import Any

from crash_worker import record

from deploysm import (
    RetryPolicy,
    StateMachineConfig,
    StateMachineError,
    Transition,
    create_state_machine,
    effect,
)
from deploysm.stores import PostgresStore, SQLiteStore

EFFECT_S = 2.0
LEASE_MS = 1_200  # shorter than the effect: the heartbeat must renew it
POLL_S = 0.1
N_MACHINES = [0]  # set by main()
began: set[str] = set()  # machines whose effect runs in this process
all_began = asyncio.Event()


def config(store: Any, ledger: str) -> StateMachineConfig[Any, Any, Any]:
    async def ship(ctx: Any, state: Any) -> None:
        record(ledger, "start", ctx["id"], "ship", state.idempotency_key, state.attempts)
        began.add(ctx["id"])
        if len(began) == N_MACHINES[0]:
            all_began.set()
        await asyncio.sleep(EFFECT_S)
        record(ledger, "end", ctx["id"], "ship", state.idempotency_key, state.attempts)

    def unship(ctx: Any, state: Any) -> None:
        record(ledger, "undo", ctx["id"], "ship", state.idempotency_key, state.attempts)

    return StateMachineConfig(
        id="shipping",
        initial_state="idle",
        states=["idle", "shipped"],
        events=["SHIP"],
        transitions=[Transition(from_="idle", to="shipped", event="SHIP")],
        effects={"shipped": effect().execute(ship).rollback(unship).build()},
        retry_policy=RetryPolicy(max_attempts=2, initial_delay_ms=1),
        final_states=["shipped"],
        store=store,
        lease_ms=LEASE_MS,
    )


async def run_a(cfg: Any, ids: list[str]) -> None:
    machines = [create_state_machine(cfg, {"id": mid}, machine_id=mid) for mid in ids]
    tasks = [asyncio.create_task(m.dispatch("SHIP")) for m in machines]  # each: its intent,
    # then its effect
    await all_began.wait()
    print("started", flush=True)
    for mid, result in zip(ids, await asyncio.gather(*tasks), strict=True):
        code = "ok" if result.success else getattr(result.error, "code", "?")
        print("a", mid, code, flush=True)


async def run_b(cfg: Any, ids: list[str]) -> None:
    async def one(mid: str) -> None:
        seen: set[str] = set()
        while True:
            sm = create_state_machine(cfg, {"id": mid}, machine_id=mid)
            try:
                result = await sm.resume()
            except StateMachineError as e:
                if e.code not in seen:
                    seen.add(e.code)
                    print("b", mid, "refused", e.code, flush=True)
                await asyncio.sleep(POLL_S)
                continue
            if result is not None:
                print("b", mid, "took", flush=True)
                continue
            print("b", mid, "done", flush=True)
            return

    await asyncio.gather(*(one(mid) for mid in ids))


async def main(role: str, target: str, ledger: str, n: int, schema: str | None) -> None:
    store: Any
    if target.startswith("postgresql://"):
        store = PostgresStore(target, schema=schema or "public")
    else:
        store = SQLiteStore(Path(target))
    async with store:
        cfg = config(store, ledger)
        ids = [f"m{i}" for i in range(n)]
        N_MACHINES[0] = n
        await (run_a if role == "a" else run_b)(cfg, ids)


if __name__ == "__main__":
    role, target, ledger, count = sys.argv[1:5]
    asyncio.run(main(role, target, ledger, int(count), sys.argv[5] if len(sys.argv) > 5 else None))
