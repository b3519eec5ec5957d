"""B4: recovery of 10,000 machines SIGKILLed mid-effect, on SQLite (file) and PostgreSQL.

**Setup (not timed).** A child process (this script, ``--crash-child``) starts ``N``
machines of ``idle -GO-> done`` (final) with ``store.start`` + ``store.send`` and runs
them with a ``Worker`` (concurrency ``N``, ``--lease-ms`` 2,000; on PostgreSQL a pool of
16 that may wait 120 s for a connection). The effect of ``done``, idempotent, prints
``S <machine> <idempotency key>`` and awaits an ``asyncio.Event`` that never fires.
Once all ``N`` effects started (so all ``N`` intents are durable), this process
SIGKILLs the child, checks every stored snapshot is ``active`` with a ``running``
transition to ``done`` in flight under the key the child printed, ANALYZEs the
PostgreSQL tables (the statistics autovacuum gives a table that has lived a while),
and waits until the child's leases expired.

**Timed.** A fresh store object (opening included; PostgreSQL pool ``--pool`` 8) and
a fresh ``Worker`` (``--concurrency``, default 256, the fastest of 16/64/256 on both
stores; default lease) in this process: ``await worker.run_until_idle()``. Each machine
is claimed and resumed; its effect runs again, and now returns (the workflow factory is
told recovery is on); the transition commits to ``done`` (``completed``).

**Checked** before any figure: every machine ``completed`` in ``done``; the effect ran
exactly ``N`` times in recovery, once per machine, with the key of the intent recorded
before the crash (also the committed state's key); a sample of 200 journals records the
``resumed``. ``N`` is 10,000; ``--quick``: 500 (the target's goal scales with ``N``).
PostgreSQL needs ``--pg`` or $DEPLOYSM_TEST_PG (a fresh schema, dropped afterwards);
without, the setup line says it was skipped. ``--profile PATH``: cProfile of the timed
part (the event loop's thread).
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import dataclasses
import logging
import os
import platform
import pstats
import shutil
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import harness
import psycopg
from psycopg import sql

import deploysm
from deploysm import Worker
from deploysm.stores import PostgresStore, SQLiteStore

SCRIPT = os.path.abspath(__file__)
WORKFLOW = "b4-recovery"
STALL_S = 120.0  # setup fails when the child reports nothing for this long
Config = deploysm.StateMachineConfig[str, str, dict[str, str]]


def workflow(recovering: bool, calls: dict[str, list[str]]) -> Config:
    """``idle -GO-> done``; the effect of ``done`` records its key in ``calls``. In the
    child (``recovering`` False) it then never finishes; in recovery it returns."""

    async def run(ctx: dict[str, str], state: deploysm.State[str]) -> None:
        key = state.idempotency_key or ""
        calls.setdefault(ctx["id"], []).append(key)
        if not recovering:
            print(f"S {ctx['id']} {key}", flush=True)
            await asyncio.Event().wait()  # SIGKILLed here

    effect = deploysm.effect().execute(run).set_idempotent(True).build()
    go = [deploysm.Transition("idle", "done", "GO")]
    return deploysm.StateMachineConfig(
        WORKFLOW, "idle", ["idle", "done"], ["GO"], go, {"done": effect}, final_states=["done"]
    )


def open_store(
    target: str, schema: str | None, pool: int = 8, wait_s: float = 10.0
) -> SQLiteStore | PostgresStore:
    if schema is not None:
        return PostgresStore(target, schema=schema, max_size=pool, connect_timeout=wait_s)
    return SQLiteStore(target)


async def crash_child(args: argparse.Namespace) -> None:
    """Start and send to ``--machines`` machines, then run them until SIGKILLed."""
    # N machines share the pool: the default 10 s wait for a connection is too short
    async with open_store(args.store, args.schema, pool=16, wait_s=STALL_S) as store:
        t0 = time.perf_counter()

        async def one(i: int) -> None:
            mid = f"m{i:05d}"
            await store.start(WORKFLOW, mid, {"id": mid})
            await store.send(mid, "GO", event_id=f"{mid}/GO")

        for k in range(0, args.machines, 256):
            await asyncio.gather(*map(one, range(k, min(args.machines, k + 256))))
        print(f"P {time.perf_counter() - t0:.3f}", flush=True)
        flows = {WORKFLOW: workflow(False, {})}
        await Worker(store, flows, concurrency=args.machines, lease_ms=args.lease_ms).run()


@dataclasses.dataclass
class Run:
    seconds: float  # the timed recovery
    setup: float  # child spawn -> all N effects started (of which ``prepare``: start + send)
    prepare: float
    lease_wait: float  # after the kill and the store check, until the leases expired
    keys: dict[str, str]  # machine id -> the idempotency key of its intent


async def load_all(store: Any, ids: list[str]) -> list[Any]:
    out: list[Any] = []
    for k in range(0, len(ids), 500):
        out += await asyncio.gather(*(store.load(mid) for mid in ids[k : k + 500]))
    return out


async def crash(args: argparse.Namespace, target: str, schema: str | None, n: int) -> Run:
    """Run the child until all ``n`` effects are in flight, SIGKILL it, check the store."""
    argv = ["--crash-child", "--store", target, "--machines", str(n)]
    argv += ["--lease-ms", str(args.lease_ms), *(["--schema", schema] if schema else [])]
    t0 = time.perf_counter()
    proc = await asyncio.create_subprocess_exec(
        sys.executable, SCRIPT, *argv, stdout=asyncio.subprocess.PIPE
    )
    keys: dict[str, str] = {}
    prepare = 0.0
    try:
        assert proc.stdout is not None
        while len(keys) < n:
            try:
                line = await asyncio.wait_for(proc.stdout.readline(), STALL_S)
            except TimeoutError:
                raise SystemExit(f"stalled: {len(keys):,} of {n:,} effects started") from None
            if not line:
                raise SystemExit(f"the crash child exited early ({await proc.wait()})")
            kind, *rest = line.decode().split()
            if kind == "P":
                prepare = float(rest[0])
                harness.progress(f"child: {n:,} machines started and sent in {prepare:.1f} s")
            elif kind == "S":
                harness.check(rest[0] not in keys, f"{rest[0]}: effect started twice")
                keys[rest[0]] = rest[1]
        proc.kill()
        killed = time.perf_counter()
        setup = killed - t0
    finally:
        if proc.returncode is None:
            proc.kill()
        await proc.wait()
    harness.progress(f"all {n:,} effects in flight after {setup:.1f} s: SIGKILLed the child")
    async with open_store(target, schema) as store:
        snaps = await load_all(store, sorted(keys))
    for mid, snap in zip(sorted(keys), snaps, strict=True):
        f = None if snap is None or snap.status != "active" else snap.in_flight
        found = None if f is None else (f.phase, f.to_state, f.idempotency_key)
        harness.check(found == ("running", "done", keys[mid]), f"{mid} in flight: {found}")
    if schema is not None:  # statistics, as autovacuum gives a table that has lived a while
        async with await psycopg.AsyncConnection.connect(target, autocommit=True) as conn:
            for table in ("machines", "inbox", "journal"):
                await conn.execute(sql.SQL("ANALYZE {}").format(sql.Identifier(schema, table)))
    wait = max(0.0, killed + args.lease_ms / 1000 + 0.2 - time.perf_counter())
    await asyncio.sleep(wait)
    return Run(0.0, setup, prepare, wait, keys)


async def recover(args: argparse.Namespace, target: str, schema: str | None, run: Run) -> None:
    """The timed part, then its checks."""
    keys = run.keys
    calls: dict[str, list[str]] = {}
    profile = cProfile.Profile() if args.profile else None
    t0, cpu0, main0 = time.perf_counter(), time.process_time(), time.thread_time()
    if profile is not None:
        profile.enable()
    async with open_store(target, schema, pool=args.pool) as store:
        flows = {WORKFLOW: workflow(True, calls)}
        await Worker(store, flows, concurrency=args.concurrency).run_until_idle()
        run.seconds = time.perf_counter() - t0
        if profile is not None:
            profile.disable()
            profile.dump_stats(args.profile)
            pstats.Stats(profile, stream=sys.stderr).sort_stats("tottime").print_stats(25)
        cpu, main = time.process_time() - cpu0, time.thread_time() - main0
        harness.progress(f"this process's CPU: {cpu:.1f} s, {main:.1f} s of it the event loop's")
        if isinstance(store, SQLiteStore):
            harness.progress(f"{store.write_requests:,} writes in {store.commits:,} commits")
        infos = await store.list()
        snaps = await load_all(store, sorted(keys))
        sample = sorted(keys)[:: max(1, len(keys) // 200)]
        journals = [await store.journal(mid) for mid in sample]
    done = sum(1 for m in infos if m.status == "completed" and m.state == "done")
    harness.check(len(infos) == len(keys) == done, f"{done:,} of {len(keys):,} completed")
    ran = sum(len(v) for v in calls.values())
    harness.check(ran == len(keys), f"the effect ran {ran:,} times in recovery, not {len(keys):,}")
    harness.check(calls.keys() == keys.keys(), "the effect ran once for every machine")
    for mid, snap in zip(sorted(keys), snaps, strict=True):
        harness.check(calls[mid] == [keys[mid]], f"{mid}: recovery key {calls[mid]} = intent's")
        harness.check(snap.current_state.idempotency_key == keys[mid], f"{mid}: committed key")
    for mid, journal in zip(sample, journals, strict=True):
        harness.check(any(e.kind == "resumed" for e in journal), f"{mid}: journal has resumed")


def one_store(args: argparse.Namespace, target: str, schema: str | None, n: int) -> Run:
    run = asyncio.run(crash(args, target, schema, n))
    asyncio.run(recover(args, target, schema, run))
    harness.progress(f"recovered {n:,} in {run.seconds:.2f} s ({n / run.seconds:,.0f}/s)")
    return run


async def drop_schema(dsn: str, schema: str) -> str:
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        drop = sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema))
        await conn.execute(drop)
        cur = await conn.execute("SELECT current_setting('server_version')")
        row = await cur.fetchone()
    return str(row[0]) if row else "?"


def add_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--machines", type=int, default=None, help="(10,000; --quick 500)")
    parser.add_argument("--concurrency", type=int, default=256, help="the recovering worker's")
    parser.add_argument("--pool", type=int, default=8, help="PostgresStore max_size (recovery)")
    parser.add_argument("--lease-ms", type=int, default=2000, help="the crashed worker's lease")
    parser.add_argument("--profile", metavar="PATH", help="cProfile the recovery into PATH")
    parser.add_argument("--skip-sqlite", action="store_true")
    parser.add_argument("--crash-child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--store", help=argparse.SUPPRESS)
    parser.add_argument("--schema", help=argparse.SUPPRESS)


def measure(args: argparse.Namespace) -> harness.Result:
    logging.basicConfig(level=logging.WARNING, format="  %(name)s %(levelname)s: %(message)s")
    if args.crash_child:
        asyncio.run(crash_child(args))
        raise SystemExit(1)  # never reached: the child runs until SIGKILLed
    n = args.machines or (500 if args.quick else 10_000)
    runs: dict[str, Run] = {}
    notes = [f"{n:,} machines, recovering worker concurrency {args.concurrency}"]
    if not args.skip_sqlite:
        tmp = Path(tempfile.mkdtemp(prefix="deploysm-b4-"))
        try:
            harness.progress("SQLite (file, synchronous=FULL)")
            runs["SQLite"] = one_store(args, str(tmp / "b4.db"), None, n)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    dsn = harness.pg_url(args)
    if dsn:
        schema = f"bench_b4r_{uuid.uuid4().hex[:12]}"
        try:
            harness.progress(f"PostgreSQL (schema {schema}, pool {args.pool})")
            runs["PostgreSQL"] = one_store(args, dsn, schema, n)
        finally:
            notes.append(f"postgresql {asyncio.run(drop_schema(dsn, schema))}")
    else:
        notes.append("PostgreSQL skipped (no --pg URL or $DEPLOYSM_TEST_PG)")
    if not runs:
        return harness.Result("B4", "recovery after SIGKILL", skipped="nothing to run")
    rows: list[harness.Row] = []
    for name, r in runs.items():
        rows.append(harness.Row(f"{name}: recovery", r.seconds, "s"))
        rows.append(harness.Row(f"{name}: machines resumed", n / r.seconds, "machines/s"))
        notes.append(f"{name} setup {r.setup:.1f} s (start+send {r.prepare:.1f} s), then "
                     f"{r.lease_wait:.1f} s lease wait, not timed")  # fmt: skip
    text = f"B4 SQLite seconds for {n:,} in-flight machines"
    lite = runs.get("SQLite")
    targets = [harness.at_most(text, lite.seconds, 10 * n / 10_000)] if lite else []
    return harness.Result(
        id="B4",
        title="recovery of machines SIGKILLed mid-effect (resume, re-run, commit)",
        rows=rows,
        targets=targets,
        setup="; ".join(notes),
        versions={"python": platform.python_version(), "deploysm": deploysm.__version__},
    )


if __name__ == "__main__":
    harness.main(measure, __doc__, add_args)
