"""B2s: durable effectful transitions per second through the engine on SQLiteStore.

Workload: a 10-state pipeline (s0 -> s1 -> ... -> s9, final), one trivial idempotent
effect per transition, so every transition writes its intent and its outcome
(two durable commits, each a snapshot plus journal records). Measured (a) one
machine at a time, machines run one after another, and (b) 100 machines at once
(their commits are grouped by the store's writer). Beside it, in the same run and
with the same settings (WAL, synchronous=FULL), a raw ``sqlite3`` loop doing one
~1 KB upsert + COMMIT per transition. Each system's work is checked (effect calls,
committed versions, row counts) before a figure is printed.

    python benchmarks/b2_durable.py [--machines 60] [--concurrent 100] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import platform
import shutil
import sqlite3
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import deploysm
from deploysm.stores import SQLiteStore

STATES = [f"s{i}" for i in range(10)]
STEPS = len(STATES) - 1


def pipeline(store: Any, calls: list[int]) -> deploysm.StateMachineConfig[str, str, dict]:
    async def step(ctx: dict, state: deploysm.State[str]) -> None:
        calls[0] += 1

    eff = deploysm.effect().execute(step).set_idempotent(True).build()
    return deploysm.StateMachineConfig(
        id="pipeline",
        initial_state=STATES[0],
        states=STATES,
        events=["NEXT"],
        transitions=[deploysm.Transition(STATES[i], STATES[i + 1], "NEXT") for i in range(STEPS)],
        effects=dict.fromkeys(STATES[1:], eff),
        store=store,
    )


async def run_machine(config: deploysm.StateMachineConfig[str, str, dict], mid: str) -> None:
    sm = deploysm.create_state_machine(config, {"service": "api", "replicas": 3}, machine_id=mid)
    for _ in range(STEPS):
        result = await sm.dispatch("NEXT")
        if not result.success:
            raise SystemExit(f"{mid}: {result.error}")


async def run_pipelines(
    config: deploysm.StateMachineConfig[str, str, dict],
    machines: int,
    concurrent: bool,
    prefix: str,
) -> float:
    """Run ``machines`` pipelines one after another or all at once; the seconds taken."""
    ids = [f"{prefix}{i}" for i in range(machines)]
    t0 = time.perf_counter()
    if concurrent:
        await asyncio.gather(*(run_machine(config, mid) for mid in ids))
    else:
        for mid in ids:
            await run_machine(config, mid)
    return time.perf_counter() - t0


async def run_engine(path: Path, machines: int, concurrent: bool) -> float:
    calls = [0]
    async with SQLiteStore(path) as store:
        config = pipeline(store, calls)
        elapsed = await run_pipelines(config, machines, concurrent, "m")
        done = await store.list(status="completed")
    if calls[0] != machines * STEPS or len(done) != machines:
        raise SystemExit(f"engine did {calls[0]} effects, {len(done)} machines completed")
    return machines * STEPS / elapsed


def run_raw(path: Path, transitions: int) -> float:
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    conn.execute("CREATE TABLE m (id TEXT PRIMARY KEY, version INTEGER, snapshot BLOB)")
    blob = b"x" * 1000
    t0 = time.perf_counter()
    for i in range(transitions):
        conn.execute("BEGIN")
        conn.execute(
            "INSERT INTO m VALUES (?, ?, ?) ON CONFLICT(id) DO UPDATE SET "
            "version = excluded.version, snapshot = excluded.snapshot",
            (f"m{i // STEPS}", i, blob),
        )
        conn.execute("COMMIT")
    elapsed = time.perf_counter() - t0
    (rows,) = conn.execute("SELECT count(*) FROM m").fetchone()
    conn.close()
    if rows != -(-transitions // STEPS):
        raise SystemExit(f"raw loop wrote {rows} rows")
    return transitions / elapsed


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--machines", type=int, default=60, help="machines run one after another")
    p.add_argument("--concurrent", type=int, default=100, help="machines run at once")
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args()
    results: dict[str, list[float]] = {"raw": [], "seq": [], "conc": []}
    tmp = Path(tempfile.mkdtemp(prefix="deploysm-b2-"))
    try:
        for r in range(args.rounds):
            results["raw"].append(run_raw(tmp / f"raw{r}.db", args.machines * STEPS))
            results["seq"].append(asyncio.run(run_engine(tmp / f"seq{r}.db", args.machines, False)))
            results["conc"].append(
                asyncio.run(run_engine(tmp / f"conc{r}.db", args.concurrent, True))
            )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    raw, seq, conc = (statistics.median(results[k]) for k in ("raw", "seq", "conc"))
    print(f"B2s durable transitions on SQLite (WAL, synchronous=FULL), median of {args.rounds}")
    print(f"python {platform.python_version()}, sqlite {sqlite3.sqlite_version}")
    print(f"{'system':<52}{'transitions/s':>14}{'vs raw':>8}")
    rows = [
        ("raw sqlite3: 1 upsert + commit per transition", raw),
        ("deploysm SQLiteStore, 1 machine at a time", seq),
        (f"deploysm SQLiteStore, {args.concurrent} machines at once", conc),
    ]
    for name, rate in rows:
        print(f"{name:<52}{rate:>14,.0f}{rate / raw:>8.2f}")


if __name__ == "__main__":
    main()
