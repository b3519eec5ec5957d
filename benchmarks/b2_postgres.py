"""B2p: durable effectful transitions per second through the engine on PostgresStore.

Workload: the one of ``b2_durable.py``: a 10-state pipeline (s0 -> s1 -> ... -> s9,
final), one trivial idempotent effect per transition, so every transition writes its
intent and its outcome (two durable commits, each a snapshot plus journal records).
Measured (a) one machine at a time, machines run one after another, and (b) 100
machines at once (sharing the store's pool of ``max_size`` connections, 8 by default).
Beside it, in the same run and on the same server (``synchronous_commit`` as the
server has it), a raw psycopg 3 async loop doing one ~1 KB upsert + COMMIT per
transition, from 1 connection and from 8 connections at once. Rounds are
interleaved; each system's work is checked (effect calls, completed machines, row
counts) before the medians are printed. Everything lives in a fresh schema that is
dropped at the end.

    python benchmarks/b2_postgres.py [--pg URL] [--machines 60] [--concurrent 100]
                                     [--rounds 3]

``--pg`` defaults to $DEPLOYSM_TEST_PG; without either it says so and exits 0.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import statistics
import sys
import time
import uuid

import psycopg
from b2_durable import STEPS, pipeline, run_pipelines  # the same workload as B2s
from psycopg import sql

from deploysm.stores import PostgresStore

BLOB = b"x" * 1000


async def run_engine(dsn: str, schema: str, prefix: str, machines: int, concurrent: bool) -> float:
    calls = [0]
    async with PostgresStore(dsn, schema=schema) as store:
        config = pipeline(store, calls)
        elapsed = await run_pipelines(config, machines, concurrent, prefix)
        done = [m for m in await store.list(status="completed") if m.machine_id.startswith(prefix)]
        versions = {m.version for m in done}
    if calls[0] != machines * STEPS or len(done) != machines:
        raise SystemExit(f"engine did {calls[0]} effects, {len(done)} machines completed")
    if len(versions) != 1:
        raise SystemExit(f"completed machines end at different versions: {versions}")
    return machines * STEPS / elapsed


async def run_raw(dsn: str, schema: str, table: str, transitions: int, conns: int) -> float:
    """One ~1 KB upsert per transition, in autocommit (one round trip, one commit) and
    prepared: the cheapest durable write per transition psycopg offers. ``conns``
    connections share the work, each on its own machines (transition ``i`` goes to
    machine ``i // STEPS``)."""
    ident = sql.Identifier(schema, table)
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as admin:
        await admin.execute(
            sql.SQL("CREATE TABLE {} (id text PRIMARY KEY, version bigint, snapshot bytea)").format(
                ident
            )
        )
    upsert = sql.SQL(
        "INSERT INTO {} VALUES (%s, %s, %s) ON CONFLICT (id) DO UPDATE"
        " SET version = excluded.version, snapshot = excluded.snapshot"
    ).format(ident)
    machines = -(-transitions // STEPS)
    share = [range(m, machines, conns) for m in range(conns)]
    connections = [
        await psycopg.AsyncConnection.connect(dsn, autocommit=True) for _ in range(conns)
    ]

    async def loop(conn: psycopg.AsyncConnection, mine: range) -> None:
        for m in mine:
            for step in range(STEPS):
                i = m * STEPS + step
                if i >= transitions:
                    return
                await conn.execute(upsert, (f"m{m}", i, BLOB), prepare=True)

    try:
        t0 = time.perf_counter()
        await asyncio.gather(*(loop(c, s) for c, s in zip(connections, share, strict=True)))
        elapsed = time.perf_counter() - t0
    finally:
        for c in connections:
            await c.close()
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as admin:
        cur = await admin.execute(
            sql.SQL("SELECT count(*), count(*) FILTER (WHERE version % {} = {}) FROM {}").format(
                sql.Literal(STEPS), sql.Literal(STEPS - 1), ident
            )
        )
        rows, finished = await cur.fetchone() or (0, 0)
    if rows != machines or finished != transitions // STEPS:
        raise SystemExit(f"raw loop wrote {rows} rows, {finished} at their last step")
    return transitions / elapsed


async def server_info(dsn: str) -> str:
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        cur = await conn.execute(
            "SELECT current_setting('server_version'), current_setting('synchronous_commit'),"
            " current_setting('fsync'), current_setting('wal_sync_method')"
        )
        version, sync_commit, fsync, method = await cur.fetchone() or ("?",) * 4
    return f"postgresql {version}, synchronous_commit={sync_commit}, fsync={fsync} ({method})"


async def drop_schema(dsn: str, schema: str) -> None:
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        await conn.execute(
            sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema))
        )


async def bench(args: argparse.Namespace) -> None:
    dsn = args.pg
    schema = f"bench_b2p_{uuid.uuid4().hex[:12]}"
    info = await server_info(dsn)
    results: dict[str, list[float]] = {"raw1": [], "raw8": [], "seq": [], "conc": []}
    transitions = args.machines * STEPS
    try:
        async with PostgresStore(dsn, schema=schema):  # creates the schema and its tables
            pass
        for r in range(args.rounds):
            results["raw1"].append(await run_raw(dsn, schema, f"raw1_{r}", transitions, 1))
            results["raw8"].append(await run_raw(dsn, schema, f"raw8_{r}", transitions, 8))
            results["seq"].append(await run_engine(dsn, schema, f"r{r}s", args.machines, False))
            results["conc"].append(await run_engine(dsn, schema, f"r{r}c", args.concurrent, True))
    finally:
        await drop_schema(dsn, schema)
    raw1, raw8, seq, conc = (statistics.median(results[k]) for k in ("raw1", "raw8", "seq", "conc"))
    print(f"B2p durable transitions on PostgreSQL, median of {args.rounds} interleaved rounds")
    print(f"python {platform.python_version()}, psycopg {psycopg.__version__}, {info}")
    print(f"{'system':<58}{'transitions/s':>14}{'vs raw 1':>9}{'vs raw 8':>9}")
    rows = [
        ("raw psycopg: 1 upsert + commit per transition, 1 conn", raw1),
        ("raw psycopg: same, 8 connections at once", raw8),
        ("deploysm PostgresStore, 1 machine at a time", seq),
        (f"deploysm PostgresStore, {args.concurrent} machines at once", conc),
    ]
    for name, rate in rows:
        print(f"{name:<58}{rate:>14,.0f}{rate / raw1:>9.2f}{rate / raw8:>9.2f}")
    spread = {k: f"{min(v):,.0f}-{max(v):,.0f}" for k, v in results.items()}
    print(f"range over rounds: {spread}")


def main() -> None:
    p = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    p.add_argument("--pg", default=os.environ.get("DEPLOYSM_TEST_PG"), metavar="URL")
    p.add_argument("--machines", type=int, default=60, help="machines run one after another")
    p.add_argument("--concurrent", type=int, default=100, help="machines run at once")
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args()
    if not args.pg:
        print("b2_postgres: no PostgreSQL server given (--pg URL or DEPLOYSM_TEST_PG); skipped")
        return
    asyncio.run(bench(args))


if __name__ == "__main__":
    sys.exit(main())
