"""The worker process of the crash test (``test_crash_recovery.py``).

::

    python crash_worker.py DB LEDGER N_MACHINES SEED

Runs machines ``m0 .. m{N-1}`` of a 5-step pipeline on ``SQLiteStore(DB)``, all at
once on one event loop::

    idle -> step1 -> step2 -> step3 -> step4 -> step5 -> done      (event NEXT)

* ``step1``, ``step2``, ``step5``: idempotent effects;
* ``step3``: a non-idempotent effect with a rollback;
* ``step4``: a non-idempotent effect without a rollback (a crash in it parks the
  machine in ``needs_attention`` until the test, acting as the operator, resolves it).

Every effect writes ``start`` to a separate ledger database before its work (a real
``asyncio.sleep``, so a SIGKILL lands inside it often) and ``end`` after it, or
``fail`` when the attempt fails; a rollback writes ``undo``. The ledger is its own
SQLite file, written with ``synchronous=FULL`` and committed at once, so it survives
a SIGKILL just as the store does. Which attempts fail is a pure function of
``(SEED, machine, step, attempt)`` (see :func:`fails`), the same in every restart;
step4, which is never retried (a failure there is followed by a new ``NEXT``, attempt
1 again), fails at most once per machine, as the ledger tells.

Each machine is resumed (``resume()`` returns ``None`` for a machine never stored:
it then starts from ``idle``), then driven with ``NEXT`` to ``done``; a parked
machine is left alone. stdout gets ``ready`` once the store is open, then one line
per machine (``done m3 v17`` / ``parked m5 step3->step4 v21``); stderr stays empty.
Exit status 0 once every machine is done or parked.
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import os
import sqlite3
import sys
from contextlib import closing
from pathlib import Path
from typing import Any, Literal, TypedDict, get_args

from deploysm import (
    Effect,
    EffectResult,
    RetryPolicy,
    State,
    StateMachine,
    StateMachineConfig,
    Transition,
    create_state_machine,
    effect,
)
from deploysm.stores import SQLiteStore, Store

__all__ = [
    "MAX_ATTEMPTS",
    "NON_IDEMPOTENT",
    "STATES",
    "STEPS",
    "PipelineContext",
    "fails",
    "init_ledger",
    "ledger_rows",
    "new_context",
    "pipeline_config",
    "record",
]

PipelineState = Literal["idle", "step1", "step2", "step3", "step4", "step5", "done"]
PipelineEvent = Literal["NEXT"]
STATES: tuple[PipelineState, ...] = get_args(PipelineState)
STEPS: tuple[PipelineState, ...] = ("step1", "step2", "step3", "step4", "step5")
NON_IDEMPOTENT: tuple[PipelineState, ...] = ("step3", "step4")

MAX_ATTEMPTS = 5
WORK_S = 0.015  # an effect's "work": long enough for kills to land inside it
TAIL_S = 0.004  # after the work took effect, before the engine hears of it
UNDO_S = 0.003
FAIL_PERCENT = 60  # of attempts 1 .. MAX_ATTEMPTS - 1 (the last attempt never fails)
MAX_DISPATCHES = 60  # per machine and run: a livelock fails loudly instead of spinning

_LEDGER_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS ledger ("
    " seq INTEGER PRIMARY KEY AUTOINCREMENT, kind TEXT NOT NULL, machine_id TEXT NOT NULL,"
    " step TEXT NOT NULL, key TEXT, attempt INTEGER, pid INTEGER NOT NULL, detail TEXT)"
)


class PipelineContext(TypedDict):
    machine_id: str


def new_context(machine_id: str) -> PipelineContext:
    return {"machine_id": machine_id}


# --------------------------------------------------------------------------- ledger


def _connect(ledger: str | os.PathLike[str]) -> sqlite3.Connection:
    conn = sqlite3.connect(ledger, timeout=30, isolation_level=None)  # autocommit
    conn.execute("PRAGMA synchronous=FULL")
    return conn


def init_ledger(ledger: str | os.PathLike[str]) -> None:
    with closing(_connect(ledger)) as conn:
        conn.execute(_LEDGER_SCHEMA)


def record(
    ledger: str | os.PathLike[str],
    kind: str,
    machine_id: str,
    step: str,
    key: str | None,
    attempt: int | None,
    detail: str | None = None,
) -> None:
    """Append one ledger row, durable when this returns (plain sqlite3, on purpose
    on the calling thread: it is a test fixture)."""
    with closing(_connect(ledger)) as conn:
        conn.execute(
            "INSERT INTO ledger (kind, machine_id, step, key, attempt, pid, detail)"
            " VALUES (?, ?, ?, ?, ?, ?, ?)",
            (kind, machine_id, step, key, attempt, os.getpid(), detail),
        )


def ledger_rows(ledger: str | os.PathLike[str]) -> list[tuple[Any, ...]]:
    """``(seq, kind, machine_id, step, key, attempt, pid, detail)`` in write order."""
    with closing(_connect(ledger)) as conn:
        return conn.execute(
            "SELECT seq, kind, machine_id, step, key, attempt, pid, detail FROM ledger ORDER BY seq"
        ).fetchall()


def _count(ledger: str | os.PathLike[str], kind: str, machine_id: str, step: str) -> int:
    with closing(_connect(ledger)) as conn:
        row = conn.execute(
            "SELECT count(*) FROM ledger WHERE kind = ? AND machine_id = ? AND step = ?",
            (kind, machine_id, step),
        ).fetchone()
    return int(row[0])


# --------------------------------------------------------------------------- effects


def fails(seed: int, machine_id: str, step: str, attempt: int) -> bool:
    """Whether this attempt fails: deterministic, never on the last attempt, so a
    transition always gets through unless crashes used up its attempts."""
    if attempt >= MAX_ATTEMPTS:
        return False
    digest = hashlib.sha256(f"{seed}/{machine_id}/{step}/{attempt}".encode()).digest()
    return int.from_bytes(digest[:4], "big") % 100 < FAIL_PERCENT


def _step_effect(step: str, ledger: str, seed: int) -> Effect[PipelineContext]:
    no_rollback = step == "step4"  # step3 is the non-idempotent step with a rollback

    async def execute(ctx: PipelineContext, target: State[Any]) -> EffectResult:
        mid, key, attempt = ctx["machine_id"], target.idempotency_key, target.attempts
        record(ledger, "start", mid, step, key, attempt)
        await asyncio.sleep(WORK_S)
        failing = fails(seed, mid, step, attempt)
        if no_rollback:
            # Retried only by a new dispatch (attempt 1 again): fail the first time only.
            failing = fails(seed, mid, step, 1) and _count(ledger, "fail", mid, step) == 0
        if failing:
            record(ledger, "fail", mid, step, key, attempt)
            return EffectResult(False, message=f"{step} attempt {attempt} failed (scripted)")
        record(ledger, "end", mid, step, key, attempt)
        await asyncio.sleep(TAIL_S)  # a kill here: done, but not committed
        return EffectResult(True, message=f"{step} done")

    async def undo(ctx: PipelineContext, target: State[Any]) -> None:
        await asyncio.sleep(UNDO_S)
        record(ledger, "undo", ctx["machine_id"], step, target.idempotency_key, target.attempts)

    builder = effect().execute(execute).named(step).set_idempotent(step not in NON_IDEMPOTENT)
    if step == "step3":
        builder = builder.rollback(undo)
    built: Effect[PipelineContext] = builder.build()
    return built


def pipeline_config(
    store: Store, ledger: str | os.PathLike[str], seed: int
) -> StateMachineConfig[PipelineState, PipelineEvent, PipelineContext]:
    """The pipeline on ``store`` (system clock, the engine's own random keys)."""
    path = os.fspath(ledger)
    transitions: list[Transition[PipelineState, PipelineEvent]] = [
        Transition(a, b, "NEXT") for a, b in itertools.pairwise(STATES)
    ]
    return StateMachineConfig(
        id="crash-pipeline",
        initial_state="idle",
        states=STATES,
        events=get_args(PipelineEvent),
        transitions=transitions,
        effects={step: _step_effect(step, path, seed) for step in STEPS},
        retry_policy=RetryPolicy(
            max_attempts=MAX_ATTEMPTS,
            initial_delay_ms=4.0,
            max_delay_ms=20.0,
            backoff_multiplier=2.0,
            jitter_factor=0.2,
        ),
        final_states=["done"],
        store=store,
    )


# --------------------------------------------------------------------------- worker

Machine = StateMachine[PipelineState, PipelineEvent, PipelineContext]


async def run_machine(
    config: StateMachineConfig[PipelineState, PipelineEvent, PipelineContext], machine_id: str
) -> str:
    sm: Machine = create_state_machine(config, new_context(machine_id), machine_id=machine_id)
    await sm.resume()  # None for a machine never stored: it starts from idle
    for _ in range(MAX_DISPATCHES):
        if sm.status == "needs_attention":
            flight = sm.snapshot().in_flight
            where = f"{flight.from_state}->{flight.to_state}" if flight else "?"
            print(f"parked {machine_id} {where} v{sm.version}", flush=True)
            return sm.status
        if sm.status == "completed":
            print(f"done {machine_id} v{sm.version}", flush=True)
            return sm.status
        if sm.status != "active":
            raise RuntimeError(f"{machine_id} is {sm.status} at {sm.get_state().name}")
        await sm.dispatch("NEXT")  # a failed transition leaves the state: NEXT again
    raise RuntimeError(f"{machine_id} did not finish in {MAX_DISPATCHES} dispatches")


async def main(db: str, ledger: str, n_machines: int, seed: int) -> int:
    init_ledger(ledger)
    async with SQLiteStore(db) as store:
        config = pipeline_config(store, ledger, seed)
        print("ready", flush=True)
        ids = [f"m{i}" for i in range(n_machines)]
        await asyncio.gather(*(run_machine(config, mid) for mid in ids))
    return 0


if __name__ == "__main__":
    if len(sys.argv) != 5:
        sys.exit(f"usage: {Path(sys.argv[0]).name} DB LEDGER N_MACHINES SEED")
    _, db_arg, ledger_arg, n_arg, seed_arg = sys.argv
    sys.exit(asyncio.run(main(db_arg, ledger_arg, int(n_arg), int(seed_arg))))
