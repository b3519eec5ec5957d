"""B5: send-to-effect-start latency through an idle Worker in another process.

A worker process (this script with ``--role worker``: a ``Worker`` over a
``PostgresStore`` in a fresh schema, or over a ``SQLiteStore`` file) serves
``--events`` machines of a two-state workflow (``a -> b`` on ``PING``), started in
advance and run once by the worker, so each has a fresh two-entry history. The
effect of ``b``, first thing, writes ``time.time()`` (wall clock, same host) and the
machine's number to the worker's stdout, a pipe this process reads. This process
sends one PING to each machine in turn through its own store object: it waits until
the worker is idle (no machine running, back in ``wait_for_work``), then a gap, then
sends, and waits for the effect's line before the next send. Latency = effect start
- the moment ``send()`` returned (the event committed); ``send()`` itself is shown
apart, and so is effect start - ``send()`` called.

PostgreSQL wakes the worker with LISTEN/NOTIFY; the gap is ``--gap-ms``. SQLite is
polled: the worker runs with ``--poll-ms`` (its idle wait; default 50) and the store
reads ``PRAGMA data_version`` every 50 ms; the gap is ``--gap-ms`` plus a uniform
random 0..poll-ms, so sends land at random points of the poll cycle. Baseline in the
same run: the raw round trip of a psycopg ``NOTIFY`` (autocommit ``SELECT
pg_notify``) to a psycopg ``LISTEN`` connection in another process that writes
``time.time()`` to its stdout the same way: what LISTEN alone costs. Each run's work
is checked (one effect line per event, for the machine it was sent to; every machine
in state ``b``) before the percentiles are printed.

    python benchmarks/b5_latency.py [--pg URL] [--events 1000] [--sqlite-events 300]
                                    [--poll-ms 50] [--gap-ms 5] [--skip-sqlite]

``--pg`` defaults to $DEPLOYSM_TEST_PG; without either it says so and exits 0.
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

import psycopg
from psycopg import sql

import deploysm
from deploysm import Worker
from deploysm.stores import PostgresStore, SQLiteStore

CHANNEL = "deploysm_b5_baseline"
SCRIPT = os.path.abspath(__file__)
LINE_TIMEOUT_S = 30.0


# ------------------------------------------------------------------ child processes


def ping() -> deploysm.StateMachineConfig[str, str, dict]:
    async def mark(ctx: dict, state: deploysm.State[str]) -> None:
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


async def measure(
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
        if int(seen) != i:
            raise SystemExit(f"sent to {i}, effect line from {seen}")
        out["after"].append(float(at) - t1)
        out["send"].append(t1 - t0)
        out["total"].append(float(at) - t0)
    return out


async def run_worker(
    target: str, schema: str | None, events: int, jitter_s: float, args: Any
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

            result = await measure(child, send, events, args.gap_ms / 1000, jitter_s, "E")
            await child.line("I")
        finally:
            await child.stop()
        machines = await store.list()
    in_b = sum(1 for m in machines if m.state == "b")
    if len(machines) != events or in_b != events:
        raise SystemExit(f"{in_b} of {events} machines took their PING")
    return result


async def run_baseline(dsn: str, events: int, args: Any) -> Latencies:
    child = await Child.spawn("--role", "listen", "--store", dsn)
    try:
        async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:

            async def send(i: int) -> None:
                await conn.execute("SELECT pg_notify(%s, %s)", (CHANNEL, str(i)))

            return await measure(child, send, events, args.gap_ms / 1000, 0.0, "N")
    finally:
        await child.stop()


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def row(name: str, values: list[float]) -> str:
    ms = [v * 1000 for v in values]
    cols = [statistics.median(ms), pct(ms, 0.95), pct(ms, 0.99), max(ms)]
    return f"{name:<52}" + "".join(f"{c:>9.2f}" for c in cols)


async def bench(args: argparse.Namespace) -> None:
    dsn = args.pg
    schema = f"bench_b5_{uuid.uuid4().hex[:12]}"
    tmp = Path(tempfile.mkdtemp(prefix="deploysm-b5-"))
    runs: list[tuple[str, Latencies]] = []
    t_start = time.perf_counter()
    try:
        runs.append(
            ("raw psycopg NOTIFY -> LISTEN (baseline)", await run_baseline(dsn, args.events, args))
        )
        pg = await run_worker(dsn, schema, args.events, 0.0, args)
        runs.append(("deploysm PostgresStore worker (LISTEN/NOTIFY)", pg))
        if not args.skip_sqlite:
            jitter = args.poll_ms / 1000
            lite = await run_worker(str(tmp / "b5.db"), None, args.sqlite_events, jitter, args)
            runs.append((f"deploysm SQLiteStore worker (poll, --poll-ms {args.poll_ms})", lite))
    finally:
        async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
            await conn.execute(
                sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema))
            )
            cur = await conn.execute("SELECT current_setting('server_version')")
            (version,) = await cur.fetchone() or ("?",)
        shutil.rmtree(tmp, ignore_errors=True)
    elapsed = time.perf_counter() - t_start
    print(
        f"B5 send -> effect start through an idle worker process; {args.events} events "
        f"(SQLite {args.sqlite_events}), sent {args.gap_ms:g} ms after the worker went idle "
        f"(SQLite: + uniform 0-{args.poll_ms} ms); {elapsed:.0f} s in all"
    )
    print(
        f"python {platform.python_version()}, postgresql {version}, sqlite "
        f"{sqlite3.sqlite_version}, {os.cpu_count()} cpus"
    )
    for key, title in (
        ("after", "effect start - send() returned (committed)"),
        ("total", "effect start - send() called"),
        ("send", "send() alone (called -> committed)"),
    ):
        print(f"{title + ', ms':<52}{'p50':>9}{'p95':>9}{'p99':>9}{'max':>9}")
        for name, result in runs:
            print(row(f"  {name}", result[key]))


def main() -> None:
    p = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    p.add_argument("--pg", default=os.environ.get("DEPLOYSM_TEST_PG"), metavar="URL")
    p.add_argument("--events", type=int, default=1000, help="events sent (baseline, PostgreSQL)")
    p.add_argument("--sqlite-events", type=int, default=300, help="events sent to SQLite")
    p.add_argument("--poll-ms", type=int, default=50, help="the SQLite worker's poll_ms")
    p.add_argument("--gap-ms", type=float, default=5.0, help="wait after the worker went idle")
    p.add_argument("--skip-sqlite", action="store_true")
    p.add_argument(
        "--role", choices=["bench", "worker", "listen"], default="bench", help="internal"
    )
    p.add_argument("--store", help=argparse.SUPPRESS)
    p.add_argument("--schema", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.role == "worker":
        asyncio.run(serve_worker(args))
    elif args.role == "listen":
        asyncio.run(serve_listener(args))
    elif not args.pg:
        print("b5_latency: no PostgreSQL server given (--pg URL or DEPLOYSM_TEST_PG); skipped")
    else:
        asyncio.run(bench(args))


if __name__ == "__main__":
    main()
