"""B2s: durable effectful transitions per second on SQLite (file, WAL, synchronous=FULL).

**Workload** (the one of ``b2_durable.py``). A 10-state pipeline (`s0 -> s1 -> ... -> s9`,
final) on the event `NEXT`, one trivial idempotent effect per transition, so every
transition writes its intent and its outcome (two durable commits, each a snapshot plus
journal records). Per system:

- raw `sqlite3` loop (the baseline): one ~1 KB upsert + `COMMIT` per transition, on a
  file with the same settings (WAL, `synchronous=FULL`), 9 transitions per machine;
- deploysm `SQLiteStore`, 1 machine at a time: machines run one after another, each
  `await sm.dispatch("NEXT")` 9 times;
- deploysm `SQLiteStore`, 100 machines at once (`asyncio.gather`): their commits are
  grouped by the store's writer thread; the note gives the group-commit figure (write
  requests per SQLite commit);
- DBOS Transact (`benchmarks/peer_dbos.py`, its SQLite system database with DBOS's
  defaults): one workflow of 9 `@DBOS.step()`s per machine, in its own process, 1
  workflow at a time and 100 at once.

Rounds of raw, deploysm 1-at-a-time and deploysm 100-at-once are interleaved, each on a
fresh file; the median round is reported. DBOS is measured once per mode. Before any
figure, every run is checked: the effect ran once per transition and every machine
completed (deploysm), the raw loop wrote one row per machine, DBOS recorded every
workflow and step. Full run: 60 machines one at a time (540 transitions), 100 at once
(900), median of 3 rounds; DBOS 20 workflows one at a time, 100 at once. `--quick`:
10 and 100 machines, 1 round; DBOS 3 and 10 workflows.
"""

from __future__ import annotations

import argparse
import asyncio
import platform
import shutil
import sqlite3
import statistics
import tempfile
from pathlib import Path

import harness
from b2_durable import STEPS, pipeline, run_pipelines, run_raw
from peer_dbos import run_dbos

import deploysm
from deploysm.stores import SQLiteStore

BASELINE = "raw sqlite3: 1 upsert + commit per transition"


async def run_engine(path: Path, machines: int, concurrent: bool) -> tuple[float, float]:
    """Transitions/s of ``machines`` pipelines, and the store's write requests per commit."""
    calls = [0]
    async with SQLiteStore(path) as store:
        config = pipeline(store, calls)
        elapsed = await run_pipelines(config, machines, concurrent, "m")
        done = await store.list(status="completed")
        batching = store.write_requests / max(1, store.commits)
    harness.check(calls[0] == machines * STEPS, f"deploysm ran {calls[0]} effects")
    harness.check(len(done) == machines, f"{len(done)} of {machines} machines completed")
    return machines * STEPS / elapsed, batching


def add_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--machines", type=int, default=None, help="one at a time (60)")
    parser.add_argument("--concurrent", type=int, default=None, help="at once (100)")
    parser.add_argument("--rounds", type=int, default=None, help="median of (3)")


def measure(args: argparse.Namespace) -> harness.Result:
    machines = args.machines or (10 if args.quick else 60)
    conc = args.concurrent or 100
    rounds = args.rounds or (1 if args.quick else 3)
    dbos_seq, dbos_conc = (3, 10) if args.quick else (20, 100)
    rates: dict[str, list[float]] = {"raw": [], "seq": [], "conc": []}
    batch: dict[str, list[float]] = {"seq": [], "conc": []}
    tmp = Path(tempfile.mkdtemp(prefix="deploysm-b2s-"))
    try:
        for r in range(rounds):
            rates["raw"].append(run_raw(tmp / f"raw{r}.db", machines * STEPS))
            for key, n, together in (("seq", machines, False), ("conc", conc, True)):
                rate, ratio = asyncio.run(run_engine(tmp / f"{key}{r}.db", n, together))
                rates[key].append(rate)
                batch[key].append(ratio)
            got = ", ".join(f"{k} {v[-1]:,.0f}" for k, v in rates.items())
            harness.progress(f"round {r + 1}/{rounds}: {got} transitions/s")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    dbos = {}
    for mode, n in (("sequential", dbos_seq), ("concurrent", dbos_conc)):
        out = run_dbos("sqlite", n, STEPS, mode)
        harness.check(out["steps"] == n * STEPS, f"DBOS {mode} ran {out['steps']} steps")
        dbos[mode] = out
        harness.progress(f"DBOS {mode} ({n} workflows): {out['steps_per_s']:,.0f} steps/s")
    raw, seq, con = (statistics.median(rates[k]) for k in ("raw", "seq", "conc"))

    def row(name: str, rate: float, note: str) -> harness.Row:
        return harness.Row(name, rate, "transitions/s", rate / raw, note)

    def grouped(key: str) -> str:
        return f"{statistics.median(batch[key]):.2f} writes per SQLite commit"

    dseq, dcon = dbos["sequential"]["steps_per_s"], dbos["concurrent"]["steps_per_s"]
    rows = [
        row(BASELINE, raw, f"{machines * STEPS} transitions"),
        row("deploysm SQLiteStore, 1 machine at a time", seq, grouped("seq")),
        row(f"deploysm SQLiteStore, {conc} machines at once", con, grouped("conc")),
        row("DBOS (SQLite), 1 workflow at a time", dseq, f"{dbos_seq} workflows x {STEPS} steps"),
        row(f"DBOS (SQLite), {dbos_conc} workflows at once", dcon, f"{STEPS} steps each"),
    ]
    return harness.Result(
        id="B2s",
        title="durable effectful transitions/s on SQLite (file, WAL, synchronous=FULL)",
        rows=rows,
        targets=[
            harness.at_least("B2s 1 machine / raw loop", seq / raw, 0.45),
            harness.at_least("B2s 1 machine / DBOS 1 workflow", seq / dseq, 5),
            harness.at_least("B2s 100 machines / raw loop", con / raw, 1.0),
        ],
        setup=(
            f"{machines} machines one at a time, {conc} at once, x {STEPS} transitions; "
            f"median of {rounds} interleaved rounds; DBOS once per mode"
        ),
        versions={
            "python": platform.python_version(),
            "sqlite": sqlite3.sqlite_version,
            "deploysm": deploysm.__version__,
            "dbos": harness.version("dbos"),
        },
    )


if __name__ == "__main__":
    harness.main(measure, __doc__, add_args)
