"""The machinery behind ``SQLiteStore``: connections, migrations, the writer thread.

One thread owns the write connection. Callers ``submit`` an operation (a function of
the connection) and await a future. The thread takes every operation queued so far,
runs them in ONE transaction, each in its own SAVEPOINT (one that raises, e.g. a
compare-and-set ``CONFLICT``, is rolled back alone; the others still commit), commits
once (one fsync per batch: group commit), then settles the futures on their own loops
with ``call_soon_threadsafe`` (one wake-up per loop per batch). While a batch is made
durable the next one queues up, so batches grow with the load; nobody waits on a timer.

A lone write skips the thread. Operations submitted from the loop that opened the
store are collected until that loop's current iteration ends; when that is exactly one
operation and the thread is idle, it runs inline on the loop, in the same kind of
transaction, sparing two thread wake-ups (about 80 us; more on a busy host) per write.
Several operations (concurrent machines) go to the thread as one batch, as above.

Migrations are the files ``sql/sqlite/NNNN_name.sql`` beside this module, applied
in order inside ``BEGIN IMMEDIATE`` and recorded in the ``deploysm_schema`` table.
"""

from __future__ import annotations

import asyncio
import os
import queue
import re
import sqlite3
import threading
import time
from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import cache
from importlib import resources
from typing import Any, TypeVar

from ..core._errors import ErrorCode, StateMachineError

T = TypeVar("T")
Op = Callable[[sqlite3.Connection], Any]

STORE_BUSY = ErrorCode.STORE_BUSY
SCHEMA_TOO_NEW = ErrorCode.SCHEMA_TOO_NEW
INVALID_TEXT = ErrorCode.INVALID_TEXT
_BUSY = (5, 6)  # primary result codes SQLITE_BUSY and SQLITE_LOCKED
_FILE = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")
_SCHEMA_TABLE = (
    "CREATE TABLE IF NOT EXISTS deploysm_schema ("
    "version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at TEXT NOT NULL)"
)


def utc_text(d: datetime | None = None) -> str:
    """ISO-8601 UTC text with microseconds (fixed width, so text order is time order);
    a naive datetime is taken to be UTC already."""
    d = datetime.now(UTC) if d is None else d
    d = d.replace(tzinfo=UTC) if d.tzinfo is None else d.astimezone(UTC)
    return d.isoformat(timespec="microseconds")


# --------------------------------------------------------------------------- errors


def is_busy(e: BaseException) -> bool:
    code = getattr(e, "sqlite_errorcode", None)  # not set on every error (a decoding one)
    return isinstance(e, sqlite3.Error) and code is not None and (code & 0xFF) in _BUSY


def store_error(e: Exception) -> Exception:
    """What a caller sees for ``e``: SQLite errors become ``STORE_BUSY`` or
    ``PERSISTENCE_ERROR`` (``CORRUPT_ROW`` for stored text that is not UTF-8); text that
    is not UTF-8 (a lone surrogate) cannot be stored or looked up: ``INVALID_TEXT``; an
    integer of 2^63 or more cannot be stored: ``INVALID_SNAPSHOT``. Cause chained;
    anything else passes through."""
    if isinstance(e, UnicodeEncodeError):
        msg = f"text that is not valid UTF-8 cannot be stored or looked up: {e}"
        err = StateMachineError(msg, INVALID_TEXT)
    elif isinstance(e, OverflowError):
        msg = f"an integer of 2^63 or more cannot be stored (a snapshot's version?): {e}"
        err = StateMachineError(msg, ErrorCode.INVALID_SNAPSHOT)
    elif not isinstance(e, sqlite3.Error):
        return e
    elif "Could not decode to UTF-8" in str(e):
        err = StateMachineError(f"a stored row is corrupt: {e}", ErrorCode.CORRUPT_ROW)
    else:
        busy = is_busy(e)
        why = "busy (locked by another writer past the busy timeout)" if busy else "error"
        code = STORE_BUSY if busy else ErrorCode.PERSISTENCE_ERROR
        err = StateMachineError(f"SQLite store {why}: {type(e).__name__}: {e}", code)
    err.__cause__ = e
    return err


def _closed() -> StateMachineError:
    return StateMachineError("the SQLite store is closed", ErrorCode.PERSISTENCE_ERROR)


def retry_busy(fn: Callable[[], T], busy_timeout_ms: int) -> T:
    """Run ``fn``, again while SQLite answers BUSY, until ``busy_timeout_ms`` passed (for
    the cases where SQLite's own busy handler is not invoked, e.g. WAL recovery)."""
    deadline = time.monotonic() + busy_timeout_ms / 1000
    delay = 0.001
    while True:
        try:
            return fn()
        except sqlite3.OperationalError as e:
            if not is_busy(e) or time.monotonic() >= deadline:
                raise
        time.sleep(delay)
        delay = min(delay * 2, 0.05)


# ----------------------------------------------------------------------- migrations


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    name: str
    statements: tuple[str, ...]


def split_sql(script: str) -> tuple[str, ...]:
    """The statements of ``script`` (``executescript`` would commit our transaction)."""
    out: list[str] = []
    buf = ""
    for piece in script.split(";"):
        buf += piece + ";"
        if sqlite3.complete_statement(buf):
            if re.sub(r"--[^\n]*", "", buf).strip(" \t\r\n;"):
                out.append(buf.strip())
            buf = ""
    if buf.strip(" \t\r\n;"):
        raise ValueError(f"incomplete SQL statement at the end of a migration: {buf!r}")
    return tuple(out)


@cache
def migrations() -> tuple[Migration, ...]:
    """The packaged migrations in order; their numbers must run 1, 2, 3, ..."""
    root = resources.files("deploysm.stores") / "sql" / "sqlite"
    found: list[Migration] = []
    for entry in root.iterdir():
        m = _FILE.match(entry.name)
        if m is not None:
            text = entry.read_text(encoding="utf-8")
            found.append(Migration(int(m[1]), m[2], split_sql(text)))
    found.sort(key=lambda m: m.version)
    if [m.version for m in found] != list(range(1, len(found) + 1)):
        raise RuntimeError(f"SQLite migrations must be numbered 0001, 0002, ...: {found}")
    return tuple(found)


def _schema_version(conn: sqlite3.Connection, known: int) -> int:
    sql = "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'deploysm_schema'"
    if conn.execute(sql).fetchone() is None:
        return 0
    (found,) = conn.execute("SELECT coalesce(max(version), 0) FROM deploysm_schema").fetchone()
    if found > known:
        msg = f"database schema version {found} is newer than this deploysm's ({known})"
        raise StateMachineError(msg + "; upgrade deploysm to open it", SCHEMA_TOO_NEW)
    return int(found)


def no_store(path: str | os.PathLike[str]) -> StateMachineError:
    return StateMachineError(
        f"no deploysm store at {os.fspath(path)!r} (opened with create=False): create it "
        "with create=True or `deploysm migrate`",
        ErrorCode.NO_STORE,
    )


def migrate(conn: sqlite3.Connection, busy_timeout_ms: int, create: bool = True) -> list[int]:
    """Bring the schema up to date; idempotent and safe when processes race to do it.
    Returns the versions applied; ``create=False`` refuses a file without a schema."""
    known = migrations()
    current = _schema_version(conn, len(known))
    if current == len(known):
        return []
    if current == 0 and not create:
        raise no_store(conn.execute("PRAGMA database_list").fetchone()[2])
    retry_busy(lambda: conn.execute("BEGIN IMMEDIATE"), busy_timeout_ms)
    try:
        conn.execute(_SCHEMA_TABLE)
        current = _schema_version(conn, len(known))  # again, under the write lock
        applied = [m.version for m in known[current:]]
        for m in known[current:]:
            for stmt in m.statements:
                conn.execute(stmt)
            conn.execute(
                "INSERT INTO deploysm_schema (version, name, applied_at) VALUES (?, ?, ?)",
                (m.version, m.name, utc_text()),
            )
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            with suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
        raise
    return applied


def connect(path: str, busy_timeout_ms: int, synchronous: str, writer: bool) -> sqlite3.Connection:
    """Autocommit mode (we issue BEGIN/COMMIT), WAL, ``synchronous``, busy timeout,
    foreign keys; the reader is ``query_only``."""
    conn = sqlite3.connect(
        path, timeout=busy_timeout_ms / 1000, isolation_level=None, check_same_thread=False
    )
    try:
        conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout_ms)}")
        if writer:
            wal = lambda: conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]  # noqa: E731
            if str(mode := retry_busy(wal, busy_timeout_ms)).lower() != "wal":
                raise StateMachineError(f"WAL mode refused: {mode!r}", ErrorCode.PERSISTENCE_ERROR)
        for pragma in (f"synchronous = {synchronous}", "foreign_keys = ON"):
            conn.execute(f"PRAGMA {pragma}")
        if not writer:
            conn.execute("PRAGMA query_only = ON")
    except BaseException:
        conn.close()
        raise
    return conn


# --------------------------------------------------------------------------- writer

Loop = asyncio.AbstractEventLoop
_Request = tuple[Op, Loop, "asyncio.Future[Any]"]
_Outcome = tuple["asyncio.Future[Any]", Exception | None, Any]


def _post(loop: Loop, fn: Callable[..., object], *args: Any) -> None:
    with suppress(RuntimeError):  # that loop is closed: nobody is waiting any more
        loop.call_soon_threadsafe(fn, *args)


def _settle(outcomes: list[_Outcome]) -> None:
    for fut, err, value in outcomes:
        if fut.done():  # the caller was cancelled
            continue
        if err is None:
            fut.set_result(value)
        else:
            fut.set_exception(err)


def _deliver(fut: asyncio.Future[sqlite3.Connection], reader: sqlite3.Connection) -> None:
    if fut.done():  # open() was cancelled
        reader.close()
    else:
        fut.set_result(reader)


class Writer:
    """Owns the write connection on a thread of its own; see the module docstring.

    ``commits`` counts the batch transactions committed, ``requests`` the operations
    run (a store's group-commit ratio is ``requests / commits``)."""

    def __init__(
        self, path: str, *, busy_timeout_ms: int, synchronous: str, create: bool = True
    ) -> None:
        self.path = path
        self.create = create
        self.migrated: list[int] = []
        self.busy_timeout_ms = busy_timeout_ms
        self.synchronous = synchronous
        self.commits = 0
        self.requests = 0
        self._queue: queue.SimpleQueue[_Request | None] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._accepting = False
        self._finished = False
        self._waiters: list[tuple[Loop, asyncio.Future[None]]] = []
        self._thread: threading.Thread | None = None
        self._conn: sqlite3.Connection | None = None
        self._busy = threading.Lock()  # held while a batch runs, by the thread or inline
        self._home: Loop | None = None  # the loop that may run lone writes inline
        self._pending: list[_Request] = []
        self.inline_commits = 0
        self._waits = True  # the write connection's busy_timeout is set (not 0)

    async def start(self) -> sqlite3.Connection:
        """Open, migrate, start serving; returns a read connection to the same file."""
        loop = asyncio.get_running_loop()
        ready: asyncio.Future[sqlite3.Connection] = loop.create_future()
        self._accepting = True
        self._home = loop
        self._thread = threading.Thread(
            target=self._main, args=(loop, ready), name="deploysm-sqlite-writer", daemon=True
        )
        self._thread.start()
        try:
            return await ready
        except BaseException:
            self.stop_nowait()
            raise

    def submit(self, op: Op) -> asyncio.Future[Any]:
        """Queue ``op`` for the next batch; the future gets its result or its error."""
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[Any] = loop.create_future()
        with self._lock:
            if not self._accepting:
                raise _closed()
            if loop is self._home:
                if not self._pending:
                    loop.call_soon(self._flush)
                self._pending.append((op, loop, fut))
            else:
                self._queue.put((op, loop, fut))
        return fut

    def _flush(self) -> None:
        """End of the loop iteration: one lone operation runs inline if the thread is
        idle; anything else goes to the thread as one batch."""
        with self._lock:
            batch, self._pending = self._pending, []
            conn = self._conn
            inline = (
                len(batch) == 1
                and self._accepting
                and conn is not None
                and self._queue.empty()
                and self._busy.acquire(blocking=False)
            )
            if not inline:
                for request in batch:
                    self._queue.put(request)
                return
        assert conn is not None
        try:
            outcomes = self._run_batch(conn, batch, wait=False)
        finally:
            self._busy.release()
        if outcomes is None:  # another process holds the write lock: the thread waits
            with self._lock:
                for request in batch:
                    self._queue.put(request)
            return
        self.inline_commits += 1
        _settle(outcomes)

    def stop_nowait(self) -> None:
        """Stop accepting; what is queued still runs, then the thread ends."""
        with self._lock:
            if self._accepting:
                self._accepting = False
                for request in self._pending:
                    self._queue.put(request)
                self._pending = []
                self._queue.put(None)

    async def stop(self) -> None:
        """``stop_nowait``, then wait until every queued operation is settled and the
        connection is closed. Idempotent; callable from any event loop."""
        loop = asyncio.get_running_loop()
        done: asyncio.Future[None] = loop.create_future()
        with self._lock:
            if self._finished:
                return
            self._waiters.append((loop, done))
        self.stop_nowait()
        await done
        if self._thread is not None:
            self._thread.join()

    # ------------------------------------------------------------ on the writer thread

    def _main(self, loop: Loop, ready: asyncio.Future[sqlite3.Connection]) -> None:
        conn: sqlite3.Connection | None = None
        try:
            conn = connect(self.path, self.busy_timeout_ms, self.synchronous, writer=True)
            self.migrated = migrate(conn, self.busy_timeout_ms, self.create)
            reader = connect(self.path, self.busy_timeout_ms, self.synchronous, writer=False)
        except Exception as e:
            if conn is not None:
                conn.close()
            _post(loop, _settle, [(ready, store_error(e), None)])
            self._finish()
            return
        self._conn = conn
        _post(loop, _deliver, ready, reader)
        try:
            self._serve(conn)
        finally:
            with self._lock, self._busy:
                self._conn = None
            conn.close()
            self._finish()

    def _serve(self, conn: sqlite3.Connection) -> None:
        get, get_nowait = self._queue.get, self._queue.get_nowait
        while True:
            batch = [get()]
            with suppress(queue.Empty):
                while True:
                    batch.append(get_nowait())
            stop = batch[-1] is None  # nothing is ever queued after the stop mark
            requests = [r for r in batch if r is not None]
            if requests:
                with self._busy:
                    outcomes = self._run_batch(conn, requests)
                assert outcomes is not None  # a waiting batch always runs
                by_loop: dict[Loop, list[_Outcome]] = {}
                for (_, loop, _), outcome in zip(requests, outcomes, strict=True):
                    by_loop.setdefault(loop, []).append(outcome)
                for loop, settled in by_loop.items():
                    _post(loop, _settle, settled)
            if stop:
                return

    def _run_batch(
        self, conn: sqlite3.Connection, batch: list[_Request], *, wait: bool = True
    ) -> list[_Outcome] | None:
        """Run ``batch`` in one transaction, each operation in a SAVEPOINT of its own
        (a lone operation needs none: its failure rolls the transaction back).

        ``wait=False`` (inline, on the event loop): never wait for another process's
        write lock; ``None`` when it is held, with nothing done."""
        results: list[tuple[Exception | None, Any]] = []
        execute = conn.execute
        lone = len(batch) == 1
        if wait != self._waits:  # the busy handler may block the thread, never the loop
            execute(f"PRAGMA busy_timeout = {self.busy_timeout_ms if wait else 0}")
            self._waits = wait
        try:
            if wait:
                retry_busy(lambda: execute("BEGIN IMMEDIATE"), self.busy_timeout_ms)
            else:
                try:
                    execute("BEGIN IMMEDIATE")
                except sqlite3.OperationalError as e:
                    if is_busy(e):
                        return None
                    raise
            for op, _, _ in batch:
                if lone:
                    results.append((None, op(conn)))
                    continue
                execute("SAVEPOINT op")
                try:
                    value = op(conn)
                except Exception as e:
                    execute("ROLLBACK TO op")
                    execute("RELEASE op")
                    results.append((store_error(e), None))
                else:
                    execute("RELEASE op")
                    results.append((None, value))
            execute("COMMIT")
            self.commits += 1
        except Exception as e:  # nothing of this batch is durable: every request fails
            if conn.in_transaction:
                with suppress(sqlite3.Error):
                    execute("ROLLBACK")
            results = [(store_error(e), None) for _ in batch]
        self.requests += len(batch)
        return [(fut, err, value) for (_, _, fut), (err, value) in zip(batch, results, strict=True)]

    def _finish(self) -> None:
        with self._lock:
            self._accepting = False
            self._finished = True
            waiters, self._waiters = self._waiters, []
        leftovers: list[_Request] = []
        with suppress(queue.Empty):
            while True:
                item = self._queue.get_nowait()
                if item is not None:
                    leftovers.append(item)
        for _, loop, fut in leftovers:  # only after a crash of the thread itself
            _post(loop, _settle, [(fut, _closed(), None)])
        for loop, fut in waiters:
            _post(loop, _settle, [(fut, None, None)])
