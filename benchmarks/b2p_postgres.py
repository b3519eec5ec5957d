"""B2p: durable effectful transitions per second on PostgreSQL.

**Workload** (the one of B2s, ``b2_durable.py``). A 10-state pipeline (`s0 -> s1 -> ...
-> s9`, final) on the event `NEXT`, one trivial idempotent effect per transition, so
every transition writes its intent and its outcome (two durable commits, each a snapshot
plus journal records). The server's `synchronous_commit` is left as it is (the setup line
says what it was). Per system:

- raw psycopg 3 async loop (the baseline): one ~1 KB upsert per transition, prepared,
  in autocommit (one round trip and one commit each: the cheapest durable write per
  transition), from 1 connection, 9 transitions per machine; and the same from 8
  connections at once, each on its own machines;
- deploysm `PostgresStore`, 1 machine at a time: machines run one after another, each
  `await sm.dispatch("NEXT")` 9 times;
- deploysm `PostgresStore`, 100 machines at once (`asyncio.gather`), sharing the store's
  pool (8 connections by default);
- DBOS Transact (`benchmarks/peer_dbos.py`, its PostgreSQL system database in a fresh
  database on the same server, DBOS's defaults): one workflow of 9 `@DBOS.step()`s per
  machine, in its own process, 1 workflow at a time and 100 at once.

Rounds of the four raw/deploysm systems are interleaved, in one fresh schema dropped at
the end; the median round is reported. DBOS is measured once per mode. Before any figure,
every run is checked: the effect ran once per transition and every machine completed at
the same version (deploysm), the raw loops wrote one row per machine each at its last
step, DBOS recorded every workflow and step. Full run: 60 machines one at a time (540
transitions), 100 at once (900), median of 3 rounds; DBOS 20 workflows one at a time, 100
at once. `--quick`: 10 and 100 machines, 1 round; DBOS 3 and 10 workflows. Needs `--pg`
or $DEPLOYSM_TEST_PG; skipped without.
"""

from __future__ import annotations

import argparse
import asyncio
import platform
import statistics
import uuid

import harness
import psycopg
from b2_durable import STEPS
from b2_postgres import drop_schema, run_engine, run_raw, server_info
from peer_dbos import run_dbos

import deploysm
from deploysm.stores import PostgresStore

BASELINE = "raw psycopg: 1 autocommit upsert per transition, 1 connection"
KEYS = ("raw1", "raw8", "seq", "conc")


async def rounds_of(dsn: str, machines: int, conc: int, rounds: int) -> dict[str, list[float]]:
    """Interleaved rounds of the raw loops and deploysm, in a fresh schema dropped after."""
    schema = f"bench_b2p_{uuid.uuid4().hex[:12]}"
    rates: dict[str, list[float]] = {k: [] for k in KEYS}
    n = machines * STEPS
    try:
        async with PostgresStore(dsn, schema=schema):  # creates the schema and its tables
            pass
        for r in range(rounds):
            rates["raw1"].append(await run_raw(dsn, schema, f"raw1_{r}", n, 1))
            rates["raw8"].append(await run_raw(dsn, schema, f"raw8_{r}", n, 8))
            rates["seq"].append(await run_engine(dsn, schema, f"r{r}s", machines, False))
            rates["conc"].append(await run_engine(dsn, schema, f"r{r}c", conc, True))
            got = ", ".join(f"{k} {v[-1]:,.0f}" for k, v in rates.items())
            harness.progress(f"round {r + 1}/{rounds}: {got} transitions/s")
    finally:
        await drop_schema(dsn, schema)
    return rates


def add_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--machines", type=int, default=None, help="one at a time (60)")
    parser.add_argument("--concurrent", type=int, default=None, help="at once (100)")
    parser.add_argument("--rounds", type=int, default=None, help="median of (3)")


def measure(args: argparse.Namespace) -> harness.Result:
    title = "durable effectful transitions/s on PostgreSQL"
    dsn = harness.pg_url(args)
    if dsn is None:
        return harness.Result("B2p", title, skipped="no PostgreSQL URL (--pg or DEPLOYSM_TEST_PG)")
    machines = args.machines or (10 if args.quick else 60)
    conc = args.concurrent or 100
    rounds = args.rounds or (1 if args.quick else 3)
    dbos_seq, dbos_conc = (3, 10) if args.quick else (20, 100)
    info = asyncio.run(server_info(dsn))
    rates = asyncio.run(rounds_of(dsn, machines, conc, rounds))
    dbos = {}
    for mode, n in (("sequential", dbos_seq), ("concurrent", dbos_conc)):
        out = run_dbos(dsn, n, STEPS, mode)
        harness.check(out["steps"] == n * STEPS, f"DBOS {mode} ran {out['steps']} steps")
        dbos[mode] = out["steps_per_s"]
        harness.progress(f"DBOS {mode} ({n} workflows): {out['steps_per_s']:,.0f} steps/s")
    raw1, raw8, seq, con = (statistics.median(rates[k]) for k in KEYS)
    spread = {
        k: f"rounds {min(v):,.0f}-{max(v):,.0f}" if rounds > 1 else "" for k, v in rates.items()
    }

    def row(name: str, rate: float, note: str) -> harness.Row:
        return harness.Row(name, rate, "transitions/s", rate / raw1, note)

    dseq, dcon = dbos["sequential"], dbos["concurrent"]
    rows = [
        row(BASELINE, raw1, f"{machines * STEPS} transitions {spread['raw1']}".strip()),
        row("raw psycopg: the same, 8 connections at once", raw8, spread["raw8"]),
        row("deploysm PostgresStore, 1 machine at a time", seq, spread["seq"]),
        row(f"deploysm PostgresStore, {conc} machines at once", con, spread["conc"]),
        row("DBOS (PostgreSQL), 1 workflow at a time", dseq, f"{dbos_seq} workflows x {STEPS}"),
        row(f"DBOS (PostgreSQL), {dbos_conc} workflows at once", dcon, f"{STEPS} steps each"),
    ]
    return harness.Result(
        id="B2p",
        title=title,
        rows=rows,
        targets=[
            harness.at_least("B2p 1 machine / raw loop (1 connection)", seq / raw1, 0.45),
            harness.at_least("B2p 1 machine / DBOS 1 workflow", seq / dseq, 5),
            harness.at_least("B2p 100 machines / raw loop (1 connection)", con / raw1, 1.0),
        ],
        setup=(
            f"{info}; {machines} machines one at a time, {conc} at once, x {STEPS} "
            f"transitions; median of {rounds} interleaved rounds; DBOS once per mode"
        ),
        versions={
            "python": platform.python_version(),
            "postgresql": info.split(",")[0].removeprefix("postgresql "),
            "psycopg": psycopg.__version__,
            "deploysm": deploysm.__version__,
            "dbos": harness.version("dbos"),
        },
    )


if __name__ == "__main__":
    harness.main(measure, __doc__, add_args)
