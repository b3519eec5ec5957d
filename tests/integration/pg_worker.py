"""The worker process of the PostgreSQL kill and zombie tests (``test_pg_kill.py``,
``test_pg_zombie.py``).

::

    python pg_worker.py DSN SCHEMA LEDGER WORKER_ID [--concurrency N] [--lease-ms MS]
                        [--poll-ms MS] [--fail-percent P] [--hold] [--audit]

Runs ``Worker(PostgresStore(DSN, schema=SCHEMA), {"pipeline": factory}, ...).run()``
until SIGTERM (graceful stop: exit status 0). ``LEDGER`` is the schema holding the
test's own tables (see :data:`LEDGER_DDL`; the tests use the store's schema). The
workflow::

    idle -START-> build -NEXT-> deploy -NEXT-> verify -NEXT-> done

* ``build`` and ``verify``: idempotent effects;
* ``deploy``: a non-idempotent effect with a rollback.

Every effect writes ``start`` to the ledger table before its work (a real
``asyncio.sleep``, so a SIGKILL lands inside it often) and ``end`` after it, or
``fail`` when the attempt fails; a rollback writes ``undo``. Each row carries the
machine id, step, idempotency key, attempt, worker id and pid. The ledger is written
with autocommit, one statement per row, so it survives a SIGKILL of the worker just
as the store does. Attempt 1 of a step fails for a deterministic share
(``--fail-percent``) of (machine, step) pairs (:func:`fails`), so retries and
rollbacks happen; later attempts never fail.

Every committed transition appends its event's payload number (``payload["n"]``)
to ``context["seen"]`` (an ``on_transition`` hook, run before the commit is
written), so the test can tell each event was applied exactly once, in order.

``--hold``: attempt 1 of ``deploy`` does not finish until the test inserts the row
``go/MACHINE`` into the control table; the waiting and the ``end`` row it then writes
are shielded from cancellation (a deployment that cannot be aborted halfway), so a
worker that lost its lease meanwhile still completes the effect late, visibly.

``--audit``: every store write this worker attempts (``save``, ``renew``,
``release``) and every claim is recorded in the ``writes`` table with its fencing
token, wall-clock start time and outcome (``ok``, error code).

stdout gets ``ready WORKER_ID`` once the store and the ledger are open, and
``stopped WORKER_ID`` after a graceful stop; warnings and errors are logged to stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import logging
import os
import sys
import time
from collections.abc import Collection, Mapping, Sequence
from datetime import datetime
from typing import Any, Literal, TypedDict, get_args

from psycopg import sql
from psycopg_pool import AsyncConnectionPool

from deploysm import (
    Effect,
    EffectResult,
    Event,
    Hooks,
    RetryPolicy,
    State,
    StateMachineConfig,
    StateMachineError,
    Transition,
    Worker,
    effect,
)
from deploysm.stores._postgres import PostgresStore
from deploysm.stores._runtime import Claim

__all__ = [
    "EVENTS_PER_MACHINE",
    "LEDGER_DDL",
    "MAX_ATTEMPTS",
    "NON_IDEMPOTENT",
    "STATES",
    "STEPS",
    "WORKFLOW",
    "fails",
    "ledger_ddl",
    "new_context",
    "pipeline_config",
]

PipelineState = Literal["idle", "build", "deploy", "verify", "done"]
PipelineEvent = Literal["START", "NEXT"]
STATES: tuple[PipelineState, ...] = get_args(PipelineState)
STEPS: tuple[PipelineState, ...] = ("build", "deploy", "verify")
NON_IDEMPOTENT: tuple[PipelineState, ...] = ("deploy",)
EVENTS_PER_MACHINE: tuple[PipelineEvent, ...] = ("START", "NEXT", "NEXT", "NEXT")
WORKFLOW = "pipeline"

SEED = 20250301
MAX_ATTEMPTS = 5  # a scripted failure, a kill and a lost lease still leave attempts over
WORK_S = 0.025  # an effect's "work": long enough for the kill to land inside it
TAIL_S = 0.003  # after the work took effect, before the engine hears of it
UNDO_S = 0.003
HOLD_POLL_S = 0.02
DEFAULT_FAIL_PERCENT = 25

# The test's own tables, in the LEDGER schema ({schema} is filled in).
LEDGER_DDL: tuple[str, ...] = (
    "CREATE SCHEMA IF NOT EXISTS {schema}",
    # what the effects did (start / end / fail / undo)
    "CREATE TABLE IF NOT EXISTS {schema}.ledger (seq bigserial PRIMARY KEY,"
    " at timestamptz NOT NULL DEFAULT clock_timestamp(), kind text NOT NULL,"
    " machine_id text NOT NULL, step text NOT NULL, key text, attempt integer,"
    " worker text NOT NULL, pid integer NOT NULL)",
    # what the sender sent (pg_sender.py)
    "CREATE TABLE IF NOT EXISTS {schema}.sent (seq bigserial PRIMARY KEY,"
    " machine_id text NOT NULL, event_id text NOT NULL, type text NOT NULL, n integer NOT NULL,"
    " duplicate boolean NOT NULL, accepted boolean NOT NULL)",
    # rows the test inserts to let a held effect go on
    "CREATE TABLE IF NOT EXISTS {schema}.control (name text PRIMARY KEY)",
    # --audit: every store write a worker attempted, and its outcome
    "CREATE TABLE IF NOT EXISTS {schema}.writes (seq bigserial PRIMARY KEY,"
    " worker text NOT NULL, op text NOT NULL, machine_id text NOT NULL, token bigint,"
    " started double precision NOT NULL, ok boolean NOT NULL, code text,"
    " detail text)",
)


def ledger_ddl(schema: str) -> list[sql.Composed]:
    ident = sql.Identifier(schema)
    return [sql.SQL(stmt).format(schema=ident) for stmt in LEDGER_DDL]  # type: ignore[arg-type]


class PipelineContext(TypedDict):
    machine_id: str
    seen: list[int]


def new_context(machine_id: str) -> PipelineContext:
    return {"machine_id": machine_id, "seen": []}


def fails(machine_id: str, step: str, attempt: int, percent: int) -> bool:
    """Whether this attempt fails: only attempt 1, for a deterministic share of
    (machine, step) pairs."""
    if attempt != 1 or percent <= 0:
        return False
    digest = hashlib.sha256(f"{SEED}/{machine_id}/{step}".encode()).digest()
    return int.from_bytes(digest[:4], "big") % 100 < percent


# --------------------------------------------------------------------------- ledger


class Ledger:
    """The test's tables, written with autocommit (durable when a call returns)."""

    def __init__(self, dsn: str, schema: str, worker_id: str) -> None:
        self.worker_id = worker_id
        self.pid = os.getpid()
        self.pool: AsyncConnectionPool[Any] = AsyncConnectionPool(
            dsn, min_size=1, max_size=3, kwargs={"autocommit": True}, open=False
        )
        ident = sql.Identifier(schema)
        self._insert = sql.SQL(
            "INSERT INTO {}.ledger (kind, machine_id, step, key, attempt, worker, pid)"
            " VALUES (%s, %s, %s, %s, %s, %s, %s)"
        ).format(ident)
        self._control = sql.SQL("SELECT 1 FROM {}.control WHERE name = %s").format(ident)
        self._write = sql.SQL(
            "INSERT INTO {}.writes (worker, op, machine_id, token, started, ok, code, detail)"
            " VALUES (%s, %s, %s, %s, %s, %s, %s, %s)"
        ).format(ident)

    async def open(self) -> None:
        await self.pool.open(wait=True, timeout=30)

    async def close(self) -> None:
        await self.pool.close()

    async def record(
        self, kind: str, machine_id: str, step: str, key: str | None, attempt: int
    ) -> None:
        row = (kind, machine_id, step, key, attempt, self.worker_id, self.pid)
        async with self.pool.connection() as conn:
            await conn.execute(self._insert, row)

    async def control(self, name: str) -> bool:
        async with self.pool.connection() as conn:
            cur = await conn.execute(self._control, (name,))
            return await cur.fetchone() is not None

    async def write(
        self,
        op: str,
        machine_id: str,
        token: int | None,
        started: float,
        ok: bool,
        code: str | None = None,
        detail: str | None = None,
    ) -> None:
        row = (self.worker_id, op, machine_id, token, started, ok, code, detail)
        async with self.pool.connection() as conn:
            await conn.execute(self._write, row)


# --------------------------------------------------------------------------- effects


def _step_effect(
    step: PipelineState, ledger: Ledger, fail_percent: int, hold: bool
) -> Effect[PipelineContext]:
    async def execute(ctx: PipelineContext, target: State[Any]) -> EffectResult:
        mid, key, attempt = ctx["machine_id"], target.idempotency_key, target.attempts
        await ledger.record("start", mid, step, key, attempt)
        if hold and step == "deploy" and attempt == 1:
            return await _held(ledger, mid, step, key, attempt)
        await asyncio.sleep(WORK_S)
        if fails(mid, step, attempt, fail_percent):
            await ledger.record("fail", mid, step, key, attempt)
            return EffectResult(False, message=f"{step} attempt {attempt} failed (scripted)")
        await ledger.record("end", mid, step, key, attempt)
        await asyncio.sleep(TAIL_S)  # a kill here: done, but not committed
        return EffectResult(True, message=f"{step} done")

    async def undo(ctx: PipelineContext, target: State[Any]) -> None:
        await asyncio.sleep(UNDO_S)
        mid, key, attempt = ctx["machine_id"], target.idempotency_key, target.attempts
        await ledger.record("undo", mid, step, key, attempt)

    builder = effect().execute(execute).named(step).set_idempotent(step not in NON_IDEMPOTENT)
    if step in NON_IDEMPOTENT:
        builder = builder.rollback(undo)
    built: Effect[PipelineContext] = builder.build()
    return built


async def _held(ledger: Ledger, mid: str, step: str, key: str | None, attempt: int) -> EffectResult:
    """Wait for ``go/MID`` in the control table, then write ``end``: all of it runs to
    its end even if the machine's task is cancelled meanwhile (the cancellation is
    delivered afterwards)."""

    async def work() -> None:
        # The go row comes from another process: polling the database is the point.
        while not await ledger.control(f"go/{mid}"):  # noqa: ASYNC110
            await asyncio.sleep(HOLD_POLL_S)
        await ledger.record("end", mid, step, key, attempt)

    task = asyncio.ensure_future(work())
    try:
        await asyncio.shield(task)
    except asyncio.CancelledError:
        await task
        raise
    return EffectResult(True, message=f"{step} done (held)")


def _on_transition(a: State[Any], b: State[Any], ev: Event[Any], ctx: PipelineContext) -> None:
    ctx["seen"].append(int(ev.payload["n"]))


def pipeline_config(
    ledger: Ledger, *, fail_percent: int = DEFAULT_FAIL_PERCENT, hold: bool = False
) -> StateMachineConfig[PipelineState, PipelineEvent, PipelineContext]:
    transitions: list[Transition[PipelineState, PipelineEvent]] = [
        Transition("idle", "build", "START"),
        Transition("build", "deploy", "NEXT"),
        Transition("deploy", "verify", "NEXT"),
        Transition("verify", "done", "NEXT"),
    ]
    return StateMachineConfig(
        id="pg-kill-pipeline",
        initial_state="idle",
        states=STATES,
        events=get_args(PipelineEvent),
        transitions=transitions,
        effects={step: _step_effect(step, ledger, fail_percent, hold) for step in STEPS},
        retry_policy=RetryPolicy(
            max_attempts=MAX_ATTEMPTS,
            initial_delay_ms=5.0,
            max_delay_ms=20.0,
            backoff_multiplier=2.0,
            jitter_factor=0.2,
        ),
        hooks=Hooks(on_transition=_on_transition),
        final_states=["done"],
    )


# --------------------------------------------------------------------------- audit


class AuditedStore(PostgresStore):
    """A ``PostgresStore`` that records every write it is asked to make, and claims."""

    def __init__(self, dsn: str, *, schema: str, ledger: Ledger) -> None:
        super().__init__(dsn, schema=schema, max_size=4)
        self.ledger = ledger

    async def save(self, snapshot: Any, **kwargs: Any) -> None:
        started = time.time()
        token = kwargs.get("token")
        what = f"v{snapshot.version} {snapshot.current_state.name} {snapshot.status}"
        try:
            await super().save(snapshot, **kwargs)
        except StateMachineError as e:
            await self.ledger.write(
                "save", snapshot.machine_id, token, started, False, e.code, what
            )
            raise
        await self.ledger.write("save", snapshot.machine_id, token, started, True, None, what)

    async def renew(self, worker_id: str, leases: Mapping[str, int], lease_ms: int) -> set[str]:
        started = time.time()
        lost = await super().renew(worker_id, leases, lease_ms)
        for mid, token in leases.items():
            await self.ledger.write("renew", mid, token, started, mid not in lost)
        return lost

    async def release(self, machine_id: str, token: int, *, wake_at: datetime | None) -> bool:
        started = time.time()
        ok = await super().release(machine_id, token, wake_at=wake_at)
        await self.ledger.write("release", machine_id, token, started, ok)
        return ok

    async def claim(
        self,
        worker_id: str,
        *,
        limit: int,
        lease_ms: int,
        workflows: Collection[str] | None = None,
    ) -> list[Claim]:
        started = time.time()
        claims = await super().claim(worker_id, limit=limit, lease_ms=lease_ms, workflows=workflows)
        for c in claims:
            await self.ledger.write("claim", c.machine_id, c.token, started, True)
        return claims


# --------------------------------------------------------------------------- main


async def main(argv: Sequence[str]) -> int:
    p = argparse.ArgumentParser(prog="pg_worker.py")
    p.add_argument("dsn")
    p.add_argument("schema")
    p.add_argument("ledger")
    p.add_argument("worker_id")
    p.add_argument("--concurrency", type=int, default=8)
    p.add_argument("--lease-ms", type=int, default=1000)
    p.add_argument("--poll-ms", type=int, default=200)
    p.add_argument("--fail-percent", type=int, default=DEFAULT_FAIL_PERCENT)
    p.add_argument("--hold", action="store_true")
    p.add_argument("--audit", action="store_true")
    args = p.parse_args(argv)
    logging.basicConfig(
        level=logging.WARNING,
        stream=sys.stderr,
        format=f"%(levelname)s {args.worker_id} %(name)s: %(message)s",
    )
    ledger = Ledger(args.dsn, args.ledger, args.worker_id)
    await ledger.open()
    store = (
        AuditedStore(args.dsn, schema=args.schema, ledger=ledger)
        if args.audit
        else PostgresStore(args.dsn, schema=args.schema, max_size=4)
    )
    config = pipeline_config(ledger, fail_percent=args.fail_percent, hold=args.hold)
    try:
        await store.open()
        worker = Worker(
            store,
            {WORKFLOW: lambda: config},
            concurrency=args.concurrency,
            worker_id=args.worker_id,
            lease_ms=args.lease_ms,
            poll_ms=args.poll_ms,
        )
        print(f"ready {args.worker_id}", flush=True)
        await worker.run()
        print(f"stopped {args.worker_id} processed={worker.processed}", flush=True)
    finally:
        await store.close()
        await ledger.close()
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main(sys.argv[1:])))
