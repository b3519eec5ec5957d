"""B2: durable SQLite writes: ``SQLiteStore.save`` beside a raw ``sqlite3`` loop.

Every write is durable (WAL, ``synchronous=FULL``). One ``SQLiteStore.save`` writes a
~1 KB snapshot plus one ~100-byte journal record in one transaction; it is measured
(a) from 1 writer, one save after the other, and (b) from 100 concurrent writers
(``asyncio.gather``, each saving its own machine again and again). Beside it, in the
same run and on other files with the same settings, a raw ``sqlite3`` loop does one
~1 KB upsert + COMMIT per write (the peers' B2 figure), and once more with the journal
insert a save also does. Rounds are interleaved; the median is printed, after
checking the row counts of every run.

    python benchmarks/b2_sqlite.py [--writes 1000] [--writers 100] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import platform
import random
import shutil
import sqlite3
import statistics
import sys
import tempfile
import time
from pathlib import Path

import deploysm
from deploysm import SerializableState
from deploysm.stores import JournalRecord
from deploysm.stores._sqlite import SQLiteStore

SNAPSHOT_BYTES = 1000
JOURNAL_DATA = {"from": "validating", "to": "deploying", "event": "VALIDATED", "attempt": 1}


def make_snapshot() -> SerializableState:
    """A real engine snapshot whose JSON is ~1 KB."""
    config: deploysm.StateMachineConfig[str, str, dict[str, str]] = deploysm.StateMachineConfig(
        id="bench",
        initial_state="idle",
        states=["idle", "running", "done"],
        events=["GO", "FINISH"],
        transitions=[
            deploysm.Transition("idle", "running", "GO"),
            deploysm.Transition("running", "done", "FINISH"),
        ],
        random=random.Random(0),
    )
    sm = deploysm.create_state_machine(config, {"service": "api", "pad": ""}, machine_id="m")
    base = len(asyncio.run(sm.serialize()).to_json())
    ctx = {"service": "api", "pad": "x" * max(0, SNAPSHOT_BYTES - base)}
    sm = deploysm.create_state_machine(config, ctx, machine_id="m")
    return asyncio.run(sm.serialize())


def run_raw(path: Path, writes: int, machines: int, blob: bytes, journal: bool) -> float:
    """One upsert (+ one journal insert, as a save does, if ``journal``) + COMMIT per write."""
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = FULL")
    conn.execute("CREATE TABLE snapshots (id TEXT PRIMARY KEY, writes INTEGER, snapshot BLOB)")
    conn.execute(
        "CREATE TABLE journal (seq INTEGER PRIMARY KEY AUTOINCREMENT, machine_id TEXT, "
        "version INTEGER, kind TEXT, at TEXT, data TEXT)"
    )
    conn.execute("CREATE INDEX journal_machine_seq ON journal (machine_id, seq)")
    sql = (
        "INSERT INTO snapshots VALUES (?, 1, ?) ON CONFLICT (id) DO UPDATE"
        " SET writes = writes + 1, snapshot = excluded.snapshot"
    )
    jsql = "INSERT INTO journal (machine_id, version, kind, at, data) VALUES (?, ?, ?, ?, ?)"
    data = json.dumps(JOURNAL_DATA, separators=(",", ":"))
    t0 = time.perf_counter()
    for i in range(writes):
        mid = f"m{i % machines:03d}"
        conn.execute("BEGIN")
        conn.execute(sql, (mid, blob))
        if journal:
            conn.execute(jsql, (mid, i, "commit", "2024-01-01T00:00:00.000000+00:00", data))
        conn.execute("COMMIT")
    dt = time.perf_counter() - t0
    rows, total = conn.execute("SELECT count(*), sum(writes) FROM snapshots").fetchone()
    conn.close()
    if (rows, total) != (min(writes, machines), writes):
        raise SystemExit(f"raw sqlite3 wrote {rows} rows / {total} writes, not {writes}")
    return writes / dt


async def run_store(
    path: Path, snap: SerializableState, writes: int, writers: int
) -> tuple[float, float]:
    """``writers`` tasks, each saving its own machine ``writes // writers`` times;
    returns writes/s and the saves per commit."""
    per_writer = writes // writers
    snaps = [dataclasses.replace(snap, machine_id=f"m{w:03d}") for w in range(writers)]
    async with SQLiteStore(path) as store:

        async def writer(base: SerializableState) -> None:
            for v in range(1, per_writer + 1):
                record = JournalRecord("commit", deploysm.now(), JOURNAL_DATA)
                await store.save(
                    dataclasses.replace(base, version=v),
                    expected_version=None if v == 1 else v - 1,
                    journal=[record],
                )

        t0 = time.perf_counter()
        await asyncio.gather(*(writer(s) for s in snaps))
        dt = time.perf_counter() - t0
        infos = await store.list()
        entries = await store.run_read(lambda c: c.execute("SELECT count(*) FROM journal"))
        (journal_rows,) = entries.fetchone()
        if len(infos) != writers or any(i.version != per_writer for i in infos):
            raise SystemExit(f"SQLiteStore: {len(infos)} machines, not {writers} at {per_writer}")
        if journal_rows != writers * per_writer:
            raise SystemExit(f"SQLiteStore: {journal_rows} journal rows, not {writes}")
        return writers * per_writer / dt, store.write_requests / store.commits


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--writes", type=int, default=1000, help="durable writes per run")
    p.add_argument("--writers", type=int, default=100, help="concurrent writers in (b)")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--dir", type=Path, default=None, help="where the files go (default: tmp)")
    args = p.parse_args()
    snap = make_snapshot()
    blob = snap.to_json().encode()
    record_bytes = len(json.dumps(JOURNAL_DATA)) + len("commit") + 32  # data, kind, at
    root = Path(tempfile.mkdtemp(prefix="b2-", dir=args.dir))
    rates: dict[str, list[float]] = {"raw": [], "rawj": [], "seq": [], "conc": []}
    batching: list[float] = []
    try:
        for r in range(args.rounds):
            rates["raw"].append(run_raw(root / f"r{r}.db", args.writes, args.writers, blob, False))
            rates["rawj"].append(run_raw(root / f"j{r}.db", args.writes, args.writers, blob, True))
            seq, _ = asyncio.run(run_store(root / f"seq{r}.db", snap, args.writes, 1))
            rates["seq"].append(seq)
            conc, per_commit = asyncio.run(
                run_store(root / f"conc{r}.db", snap, args.writes, args.writers)
            )
            rates["conc"].append(conc)
            batching.append(per_commit)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    raw, rawj, seq, conc = (statistics.median(rates[k]) for k in ("raw", "rawj", "seq", "conc"))
    print(
        f"B2 durable SQLite writes (WAL, synchronous=FULL), {args.writes:,} writes per run, "
        f"median of {args.rounds} interleaved rounds"
    )
    print(
        f"python {platform.python_version()}, sqlite {sqlite3.sqlite_version}, deploysm "
        f"{deploysm.__version__}; snapshot {len(blob)} B, journal record ~{record_bytes} B"
    )
    print(f"{'system':<52}{'writes/s':>10}{'us/write':>10}")
    rows = (
        ("raw sqlite3: 1 upsert + COMMIT per write", raw),
        ("raw sqlite3: 1 upsert + 1 journal insert + COMMIT", rawj),
        ("SQLiteStore.save, 1 writer, sequential", seq),
        (f"SQLiteStore.save, {args.writers} concurrent writers", conc),
    )
    for name, rate in rows:
        print(f"{name:<52}{rate:>10,.0f}{1e6 / rate:>10.0f}")
    print(
        f"vs raw upsert: sequential {seq / raw:.2f}x, concurrent {conc / raw:.1f}x; "
        f"vs raw upsert + journal: sequential {seq / rawj:.2f}x, concurrent {conc / rawj:.1f}x"
    )
    print(f"saves per commit with {args.writers} writers: {statistics.median(batching):.1f}")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
