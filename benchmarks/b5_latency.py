"""B5: send-to-effect-start latency through an idle Worker in another process.

**Method.** A worker process (this script with ``--role worker``: a ``Worker`` over a
``PostgresStore`` in a fresh schema, or over a ``SQLiteStore`` file) serves ``N``
machines of a two-state workflow (`a -> b` on `PING`), started in advance and run once
by the worker, so each has a fresh two-entry history. The effect of `b`, first thing,
writes `time.time()` (wall clock, same host) and the machine's number to the worker's
stdout, a pipe this process reads. This process sends one `PING` to each machine in
turn through its own store object: it waits until the worker is idle (no machine
running, back in `wait_for_work`), then a gap, then sends, and waits for the effect's
line before the next send. Latency = effect start - the moment `send()` returned (the
event committed); the figure is its p99, the note gives p50, p95, max and `send()`
itself.

PostgreSQL wakes the worker with LISTEN/NOTIFY; the gap is `--gap-ms` (5). SQLite is
polled: the worker runs with `--poll-ms` (its idle wait; 50) and the store reads
`PRAGMA data_version` every 50 ms; the gap is `--gap-ms` plus a uniform random
0..poll-ms, so sends land at random points of the poll cycle. Baseline (ratio 1.0) in
the same run: the raw round trip of a psycopg `NOTIFY` (autocommit `SELECT pg_notify`)
to a psycopg `LISTEN` connection in another process that writes `time.time()` to its
stdout the same way: what LISTEN alone costs. Each run's work is checked (one effect
line per event, for the machine it was sent to; every machine in state `b`) before the
percentiles are computed. Full run: 1,000 events (PostgreSQL and the baseline), 300
(SQLite); `--quick`: 50 each. The PostgreSQL rows need `--pg` or $DEPLOYSM_TEST_PG (a
fresh schema, dropped afterwards); without it the setup line says they were skipped.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import random
import shutil
import signal
import sqlite3
import statistics
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

CHANNEL = "deploysm_b5_baseline"
SCRIPT = os.path.abspath(__file__)
LINE_TIMEOUT_S = 30.0


# ------------------------------------------------------------------ child processes


def ping() -> deploysm.StateMachineConfig[str, str, dict[str, Any]]:
    async def mark(ctx: dict[str, Any], state: deploysm.State[str]) -> None:
        now = time.time()
        sys.stdout.write(f"E {ctx['i']} {now!r}\n")
        sys.stdout.flush()

    eff = deploysm.effect().execute(mark).set_idempotent(True).build()
    return deploysm.StateMachineConfig(
        id="ping",
        initial_state="a",
        states=["a", "b"],
        events=["PING"],
        transitions=[deploysm.Transition("a", "b", "PING")],
        effects={"b": eff},
    )


def open_store(target: str, schema: str | None) -> Any:
    if target.startswith(("postgresql://", "postgres://")):
        return PostgresStore(target, schema=schema or "public")
    return SQLiteStore(target)


async def serve_worker(args: argparse.Namespace) -> None:
    """The worker process: prints ``I`` each time it goes idle (no machine running)."""
    store = open_store(args.store, args.schema)
    await store.open()
    worker = Worker(store, {"ping": ping}, poll_ms=args.poll_ms)
    wait_for_work = store.wait_for_work

    async def traced(max_wait_s: float) -> None:
        if not worker._running:
            sys.stdout.write("I\n")
            sys.stdout.flush()
        await wait_for_work(max_wait_s)

    store.wait_for_work = traced
    try:
        await worker.run()  # until SIGTERM
    finally:
        await store.close()


async def serve_listener(args: argparse.Namespace) -> None:
    """The baseline's LISTEN process: prints ``N <payload> <time>`` at each notification."""
    async with await psycopg.AsyncConnection.connect(args.store, autocommit=True) as conn:
        await conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(CHANNEL)))
        sys.stdout.write("I\n")
        sys.stdout.flush()
        stop = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
        while not stop.is_set():
            async for n in conn.notifies(timeout=0.2):
                now = time.time()
                sys.stdout.write(f"N {n.payload} {now!r}\nI\n")
                sys.stdout.flush()


# ------------------------------------------------------------------ the measuring side


class Child:
    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc

    @classmethod
    async def spawn(cls, *argv: str) -> Child:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, SCRIPT, *argv, stdout=asyncio.subprocess.PIPE
        )
        return cls(proc)

    async def line(self, kind: str) -> list[str]:
        """The next line of ``kind`` (``I``, ``E``, ``N``); other kinds are skipped."""
        assert self.proc.stdout is not None
        while True:
            raw = await asyncio.wait_for(self.proc.stdout.readline(), LINE_TIMEOUT_S)
            if not raw:
                raise SystemExit(f"child process exited ({await self.proc.wait()})")
            parts = raw.decode().split()
            if parts and parts[0] == kind:
                return parts

    async def stop(self) -> None:
        if self.proc.returncode is None:
            self.proc.send_signal(signal.SIGTERM)
        assert self.proc.stdout is not None
        await self.proc.stdout.read()
        await asyncio.wait_for(self.proc.wait(), 30)


Latencies = dict[str, list[float]]


async def sample(
    child: Child, send: Any, events: int, gap_s: float, jitter_s: float, kind: str
) -> Latencies:
    """``events`` sends one at a time, each once the child is idle plus ``gap_s`` plus a
    uniform 0..``jitter_s``, each awaiting the child's ``kind`` line; returns effect start -
    send returned, send returned - send called, and effect start - send called."""
    rng = random.Random(5)
    out: Latencies = {"after": [], "send": [], "total": []}
    for i in range(events):
        await child.line("I")
        await asyncio.sleep(gap_s + rng.uniform(0.0, jitter_s))
        t0 = time.time()
        await send(i)
        t1 = time.time()
        _, seen, at = await child.line(kind)
        harness.check(int(seen) == i, f"sent to {i}, effect line from {seen}")
        out["after"].append(float(at) - t1)
        out["send"].append(t1 - t0)
        out["total"].append(float(at) - t0)
    return out


async def run_worker(
    target: str, schema: str | None, events: int, jitter_s: float, args: argparse.Namespace
) -> Latencies:
    store = open_store(target, schema)
    async with store:
        for i in range(events):
            await store.start("ping", f"m{i}", {"i": i})
        argv = ["--role", "worker", "--store", target, "--poll-ms", str(args.poll_ms)]
        child = await Child.spawn(*argv, *(["--schema", schema] if schema else []))
        try:
            for _ in range(600):  # until the worker has run every machine once
                if all(m.version >= 1 for m in await store.list()):
                    break
                await asyncio.sleep(0.1)
            else:
                raise SystemExit("the worker did not run the machines it was given")

            async def send(i: int) -> None:
                if not await store.send(f"m{i}", "PING", event_id="ping"):
                    raise SystemExit(f"event to m{i} refused as a duplicate")

            result = await sample(child, send, events, args.gap_ms / 1000, jitter_s, "E")
            await child.line("I")
        finally:
            await child.stop()
        machines = await store.list()
    in_b = sum(1 for m in machines if m.state == "b")
    harness.check(len(machines) == events == in_b, f"{in_b} of {events} machines took PING")
    return result


async def run_baseline(dsn: str, events: int, args: argparse.Namespace) -> Latencies:
    child = await Child.spawn("--role", "listen", "--store", dsn)
    try:
        async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:

            async def send(i: int) -> None:
                await conn.execute("SELECT pg_notify(%s, %s)", (CHANNEL, str(i)))

            return await sample(child, send, events, args.gap_ms / 1000, 0.0, "N")
    finally:
        await child.stop()


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def row(name: str, values: list[float], base: float | None, extra: str) -> harness.Row:
    """p99 of ``values`` (seconds) in ms; p50, p95 and max in the note."""
    ms = [v * 1000 for v in values]
    p99 = pct(ms, 0.99)
    note = f"p50 {statistics.median(ms):.2f}, p95 {pct(ms, 0.95):.2f}, max {max(ms):.2f} ms"
    return harness.Row(name, p99, "ms", p99 / base if base else None, f"{note}; {extra}")


def send_note(lat: Latencies) -> str:
    return f"send() p50 {statistics.median(lat['send']) * 1000:.2f} ms"


async def pg_rows(dsn: str, events: int, args: argparse.Namespace) -> list[harness.Row]:
    schema = f"bench_b5_{uuid.uuid4().hex[:12]}"
    try:
        base = await run_baseline(dsn, events, args)
        harness.progress(f"NOTIFY baseline: p99 {pct(base['after'], 0.99) * 1000:.2f} ms")
        pg = await run_worker(dsn, schema, events, 0.0, args)
        harness.progress(f"PostgresStore worker: p99 {pct(pg['after'], 0.99) * 1000:.2f} ms")
    finally:
        async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
            drop = sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE")
            await conn.execute(drop.format(sql.Identifier(schema)))
    p99 = pct(base["after"], 0.99) * 1000
    return [
        row("raw psycopg NOTIFY -> LISTEN", base["after"], p99, send_note(base)),
        row("deploysm PostgresStore worker (LISTEN/NOTIFY)", pg["after"], p99, send_note(pg)),
    ]


async def server_version(dsn: str) -> str:
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        cur = await conn.execute("SELECT current_setting('server_version')")
        (version,) = await cur.fetchone() or ("?",)
    return str(version)


def add_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--events", type=int, default=None, help="PostgreSQL, baseline (1000)")
    parser.add_argument("--sqlite-events", type=int, default=None, help="SQLite (300)")
    parser.add_argument("--poll-ms", type=int, default=50, help="the SQLite worker's poll_ms")
    parser.add_argument("--gap-ms", type=float, default=5.0, help="wait after the worker idles")
    parser.add_argument("--skip-sqlite", action="store_true")


def measure(args: argparse.Namespace) -> harness.Result:
    events = args.events or (50 if args.quick else 1000)
    lite_events = args.sqlite_events or (50 if args.quick else 300)
    dsn = harness.pg_url(args)
    rows: list[harness.Row] = []
    targets: list[harness.Target] = []
    versions = {
        "python": platform.python_version(),
        "deploysm": deploysm.__version__,
        "sqlite": sqlite3.sqlite_version,
        "psycopg": psycopg.__version__,
    }
    setup = f"gap {args.gap_ms:g} ms after the worker went idle; {os.cpu_count()} cpus"
    if dsn is None:
        setup += "; PostgreSQL part skipped: no PostgreSQL URL (--pg or DEPLOYSM_TEST_PG)"
    else:
        rows += asyncio.run(pg_rows(dsn, events, args))
        targets.append(harness.at_most("B5 PostgreSQL p99 ms", rows[-1].value, 25))
        versions["postgresql"] = asyncio.run(server_version(dsn))
        setup = f"PostgreSQL {events} events; " + setup
    if not args.skip_sqlite:
        tmp = Path(tempfile.mkdtemp(prefix="deploysm-b5-"))
        try:
            jitter = args.poll_ms / 1000
            path = str(tmp / "b5.db")
            lite = asyncio.run(run_worker(path, None, lite_events, jitter, args))
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        name = f"deploysm SQLiteStore worker (poll, poll_ms={args.poll_ms})"
        rows.append(row(name, lite["after"], None, send_note(lite)))
        harness.progress(f"SQLiteStore worker: p99 {rows[-1].value:.2f} ms")
        setup += f"; SQLite {lite_events} events, gap + uniform 0-{args.poll_ms} ms"
    return harness.Result(
        id="B5",
        title="send-to-effect-start latency through an idle Worker in another process",
        rows=rows,
        targets=targets,
        setup=setup,
        versions=versions,
    )


def child_main() -> None:
    """``--role worker`` / ``--role listen``: the child processes."""
    p = argparse.ArgumentParser()
    p.add_argument("--role", choices=["worker", "listen"], required=True)
    p.add_argument("--store", required=True)
    p.add_argument("--schema", default=None)
    p.add_argument("--poll-ms", type=int, default=50)
    args = p.parse_args()
    asyncio.run(serve_worker(args) if args.role == "worker" else serve_listener(args))


if __name__ == "__main__":
    if "--role" in sys.argv:
        child_main()
    else:
        harness.main(measure, __doc__, add_args)
