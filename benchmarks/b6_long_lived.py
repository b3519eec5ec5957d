"""B6: save cost of a long-lived machine: bytes and client CPU per save, and process RSS,
after 10, 1,000 and 100,000 transitions.

**Workload.** One machine on `SQLiteStore` (a file, WAL, `synchronous=NORMAL`: the
figures are about what the client encodes and writes, not about the disk's fsync) of
a 10-state ring (`s0 -> s1 -> ... -> s9 -> s0` on `NEXT`), no effect, so each
transition is one durable save (the snapshot and its `committed` journal row). Every
event carries a small payload (`{"n": <transition number>, "by": "bench"}`), which the
entered state's `data` keeps. The config's `history_limit` is left at its default.

**Method.** The machine runs `NEXT` in one event loop, one dispatch at a time. At each
checkpoint (10, 1,000, 100,000 past transitions) the next 100 saves are measured: the
first 50 for the process CPU time of each dispatch (`time.process_time`, the store's
writer thread included, nothing else running), the next 50 for the bytes each wrote
(the length of the stored snapshot plus its journal rows' data, read back from the file
between saves: reading it between timed saves would add to their time); each figure is
the median of its 50. RSS (`VmRSS` of `/proc/self/status`, after `gc.collect()`) is
read at the 1,000 and 100,000 checkpoints. Ratios are relative to the figure after 10
transitions (RSS: after 1,000). For comparison, a second machine with
`history_limit=1,000,000` (every state kept, as before the limit existed) is measured
the same way after 1,000 transitions. Before any figure, the work is checked: each
machine's version and `total_transitions` equal the transitions dispatched, its store
holds that version, and its journal has one `committed` row per transition. Full run:
checkpoints 10, 1,000, 100,000; `--quick`: 10, 100, 2,000.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import platform
import sqlite3
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import harness

import deploysm
from deploysm.stores import SQLiteStore

STATES = [f"s{i}" for i in range(10)]
SAMPLE = 50  # saves measured per checkpoint


def ring(store: SQLiteStore, **extra: Any) -> deploysm.StateMachineConfig[str, str, dict]:
    return deploysm.StateMachineConfig(
        id="b6-ring",
        initial_state=STATES[0],
        states=STATES,
        events=["NEXT"],
        transitions=[
            deploysm.Transition(s, STATES[(i + 1) % len(STATES)], "NEXT")
            for i, s in enumerate(STATES)
        ],
        store=store,
        **extra,
    )


def rss_mib() -> float:
    gc.collect()
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def last_seq(db: sqlite3.Connection, mid: str) -> int:
    row = db.execute("SELECT max(seq) FROM journal WHERE machine_id = ?", (mid,)).fetchone()
    return int(row[0] or 0)


def written(db: sqlite3.Connection, mid: str, after: int) -> int:
    """Bytes of the last save: its snapshot, and its journal rows (``seq > after``)."""
    snap = db.execute("SELECT length(snapshot) FROM machines WHERE id = ?", (mid,)).fetchone()
    rows = db.execute(
        "SELECT coalesce(sum(length(data)), 0) FROM journal WHERE machine_id = ? AND seq > ?",
        (mid, after),
    ).fetchone()
    return int(snap[0]) + int(rows[0])


class Runner:
    """One machine, driven ``NEXT`` after ``NEXT``."""

    def __init__(self, path: Path, mid: str, **extra: Any) -> None:
        self.path, self.mid, self.extra = path, mid, extra
        self.done = 0

    async def open(self) -> None:
        self.store = SQLiteStore(self.path, synchronous="NORMAL")
        await self.store.open()
        self.sm = deploysm.create_state_machine(ring(self.store, **self.extra), {}, self.mid)
        self.db = sqlite3.connect(self.path)

    async def close(self) -> None:
        self.db.close()
        await self.store.close()

    async def step(self) -> None:
        self.done += 1
        result = await self.sm.dispatch(
            deploysm.Event("NEXT", payload={"n": self.done, "by": "bench"})
        )
        harness.check(result.success, f"transition {self.done} failed: {result.error}")

    async def run_to(self, count: int) -> None:
        while self.done < count:
            await self.step()
            if self.done % 10_000 == 0:
                harness.progress(f"{self.mid}: {self.done:,} transitions")

    async def sample(self) -> tuple[float, float]:
        """Median bytes and CPU seconds per save: ``SAMPLE`` saves timed, with nothing
        else running, then ``SAMPLE`` saves measured (reading the file between saves
        would add its work to the timed ones)."""
        cpu = []
        for _ in range(SAMPLE):
            t0 = time.process_time()
            await self.step()
            cpu.append(time.process_time() - t0)
        sizes = []
        for _ in range(SAMPLE):
            after = last_seq(self.db, self.mid)
            await self.step()
            sizes.append(written(self.db, self.mid, after))
        return statistics.median(sizes), statistics.median(cpu)

    async def check(self) -> None:
        sm = self.sm
        m = sm.get_metrics()
        harness.check(sm.version == self.done, f"version {sm.version} != {self.done}")
        harness.check(m.total_transitions == self.done, f"{m.total_transitions} transitions")
        stored = await self.store.load(self.mid)
        harness.check(stored is not None and stored.version == self.done, "store is behind")
        (rows,) = self.db.execute(
            "SELECT count(*) FROM journal WHERE machine_id = ? AND kind = 'committed'",
            (self.mid,),
        ).fetchone()
        harness.check(rows == self.done, f"{rows} committed journal rows for {self.done}")


async def bench(dirname: Path, marks: list[int]) -> harness.Result:
    rows: list[harness.Row] = []
    bytes_at, cpu_at, rss_at = {}, {}, {}
    r = Runner(dirname / "b6.db", "long-lived")
    await r.open()
    try:
        for mark in marks:
            await r.run_to(mark)
            if mark != marks[0]:
                rss_at[mark] = rss_mib()
            bytes_at[mark], cpu_at[mark] = await r.sample()
            harness.progress(
                f"after {mark:,}: {bytes_at[mark]:,.0f} B, "
                f"{cpu_at[mark] * 1e6:,.0f} us CPU per save"
            )
        await r.check()
        history = len(r.sm.get_history())
    finally:
        await r.close()
    u = Runner(dirname / "b6-unbounded.db", "unbounded", history_limit=1_000_000)
    await u.open()
    try:
        await u.run_to(marks[1])
        unbounded = await u.sample()
        await u.check()
    finally:
        await u.close()
    first, mid, last = marks
    for mark in marks:
        rows.append(
            harness.Row(
                f"bytes per save after {mark:,} transitions",
                bytes_at[mark],
                "bytes",
                bytes_at[mark] / bytes_at[first],
            )
        )
    rows.append(
        harness.Row(
            f"bytes per save after {mid:,}, every state kept",
            unbounded[0],
            "bytes",
            unbounded[0] / bytes_at[first],
            "history_limit=1,000,000: the save grows with the machine's age",
        )
    )
    for mark in marks:
        rows.append(
            harness.Row(
                f"client CPU per save after {mark:,} transitions",
                cpu_at[mark] * 1e6,
                "us",
                cpu_at[mark] / cpu_at[first],
            )
        )
    rows.append(
        harness.Row(
            f"client CPU per save after {mid:,}, every state kept",
            unbounded[1] * 1e6,
            "us",
            unbounded[1] / cpu_at[first],
        )
    )
    for mark in (mid, last):
        rows.append(
            harness.Row(
                f"process RSS after {mark:,} transitions",
                rss_at[mark],
                "MiB",
                rss_at[mark] / rss_at[mid],
            )
        )
    return harness.Result(
        id="B6",
        title="save cost of a long-lived machine",
        rows=rows,
        targets=[
            harness.at_most(
                f"bytes per save after {last:,} / after {first}",
                bytes_at[last] / bytes_at[first],
                1.5,
            ),
            harness.at_most(
                f"client CPU per save after {last:,} / after {first}",
                cpu_at[last] / cpu_at[first],
                1.5,
            ),
            harness.at_most(
                f"process RSS after {last:,} / after {mid:,}", rss_at[last] / rss_at[mid], 2.0
            ),
        ],
        setup=(
            f"one machine, 10-state ring, SQLiteStore (WAL, synchronous=NORMAL), "
            f"history_limit default ({history} kept); median of {SAMPLE} saves per checkpoint"
        ),
        versions={
            "python": platform.python_version(),
            "deploysm": deploysm.__version__,
            "sqlite": sqlite3.sqlite_version,
        },
    )


def measure(args: argparse.Namespace) -> harness.Result:
    marks = [10, 100, 2_000] if args.quick else [10, 1_000, 100_000]
    with tempfile.TemporaryDirectory(prefix="deploysm-b6-") as d:
        return asyncio.run(bench(Path(d), marks))


if __name__ == "__main__":
    harness.main(measure, __doc__)
