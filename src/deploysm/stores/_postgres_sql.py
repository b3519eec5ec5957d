"""The SQL side of ``PostgresStore``: named queries, migrations, errors, LISTEN.

SQL lives in files beside this module (``sql/postgres``): numbered migrations
``NNNN_name.sql`` and ``queries.sql``, a list of ``-- name: NAME`` blocks, both read
with ``importlib.resources``. Migrations run in one transaction holding a
transaction-scoped advisory lock of the schema, so workers that start together
apply each migration exactly once; the ``deploysm_schema`` table records them.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import re
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import cache
from importlib import resources
from typing import Any, Literal, LiteralString, cast
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict

from ..core._errors import ErrorCode, StateMachineError
from ..core._redact import REDACTED
from ._base import JournalRecord, conflict
from ._runtime import Lease, LeaseHeld, lease_lost

__all__ = [
    "CHANNEL",
    "STORE_UNAVAILABLE",
    "Listener",
    "Migration",
    "Wake",
    "check_dsn",
    "db_error",
    "migrate",
    "migrations",
    "queries",
    "journal_rows",
    "redact",
    "refusal",
    "refuses",
    "save_query",
    "scrub",
    "utc",
]

logger = logging.getLogger("deploysm.stores.postgres")

CHANNEL = "deploysm_inbox"
STORE_UNAVAILABLE = ErrorCode.STORE_UNAVAILABLE
_FILE = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")
_NAME = re.compile(r"^--\s*name:\s*([a-z_][a-z0-9_]*)\s*$", re.MULTILINE)


# --------------------------------------------------------------------------- files


def _folder() -> resources.abc.Traversable:
    return resources.files("deploysm.stores") / "sql" / "postgres"


@cache
def queries() -> dict[str, LiteralString]:
    """The named queries of ``queries.sql``: name -> SQL text."""
    text = (_folder() / "queries.sql").read_text(encoding="utf-8")
    parts = _NAME.split(text)
    found: dict[str, LiteralString] = {}
    for name, body in zip(parts[1::2], parts[2::2], strict=True):
        if name in found:
            raise RuntimeError(f"queries.sql names {name!r} twice")
        found[name] = cast(LiteralString, body.strip().rstrip(";"))
    return found


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    name: str
    script: LiteralString


@cache
def migrations() -> tuple[Migration, ...]:
    """The packaged migrations in order; their numbers must run 1, 2, 3, ..."""
    found: list[Migration] = []
    for entry in _folder().iterdir():
        m = _FILE.match(entry.name)
        if m is not None:
            script = entry.read_text(encoding="utf-8")
            found.append(Migration(int(m[1]), m[2], script))
    found.sort(key=lambda m: m.version)
    if [m.version for m in found] != list(range(1, len(found) + 1)):
        raise RuntimeError(f"PostgreSQL migrations must be numbered 0001, 0002, ...: {found}")
    return tuple(found)


# ------------------------------------------------------------------------ migrations


def _lock_key(schema: str) -> int:
    """A stable signed 64-bit advisory lock key for migrating ``schema``."""
    digest = hashlib.blake2b(f"deploysm-migrate:{schema}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


async def _version(conn: psycopg.AsyncConnection[Any], schema: str, known: int) -> int:
    table = sql.SQL("{}.deploysm_schema").format(sql.Identifier(schema)).as_string(conn)
    cur = await conn.execute("SELECT to_regclass(%s) IS NOT NULL", (table,))
    row = await cur.fetchone()
    if row is None or not row[0]:
        return 0
    query = sql.SQL("SELECT coalesce(max(version), 0) FROM {}.deploysm_schema")
    cur = await conn.execute(query.format(sql.Identifier(schema)))
    row = await cur.fetchone()
    found = int(row[0]) if row is not None else 0
    if found > known:
        raise StateMachineError(
            f"database schema {schema!r} is at version {found}, newer than this deploysm's "
            f"({known}); upgrade deploysm to use it",
            ErrorCode.SCHEMA_TOO_NEW,
        )
    return found


async def migrate(
    conn: psycopg.AsyncConnection[Any], schema: str, create: bool = True
) -> list[int]:
    """Bring ``schema`` up to date on ``conn`` (an autocommit connection); returns the
    versions applied (none when it was current). Safe when processes race to do it.
    ``create=False`` refuses (``NO_STORE``) a schema without deploysm's tables."""
    known = migrations()
    current = await _version(conn, schema, len(known))
    if current == len(known):
        return []
    if current == 0 and not create:
        raise StateMachineError(
            f"no deploysm store in schema {schema!r} (opened with create=False): create it "
            "with create=True or `deploysm migrate`",
            ErrorCode.NO_STORE,
        )
    ident = sql.Identifier(schema)
    applied: list[int] = []
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock(%s)", (_lock_key(schema),))
        cur = await conn.execute("SELECT 1 FROM pg_namespace WHERE nspname = %s", (schema,))
        if await cur.fetchone() is None:
            await conn.execute(sql.SQL("CREATE SCHEMA {}").format(ident))
        await conn.execute("SELECT set_config('search_path', %s, true)", (ident.as_string(conn),))
        await conn.execute(
            "CREATE TABLE IF NOT EXISTS deploysm_schema (version integer PRIMARY KEY,"
            " name text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())"
        )
        current = await _version(conn, schema, len(known))  # again, under the lock
        for m in known[current:]:
            await conn.execute(m.script)
            await conn.execute(
                "INSERT INTO deploysm_schema (version, name) VALUES (%s, %s)", (m.version, m.name)
            )
            applied.append(m.version)
    if applied:
        logger.info("schema %s migrated to version %d", schema, applied[-1])
    return applied


# ------------------------------------------------------------------------ values

_NUL = re.compile(r"(?<!\\)((?:\\\\)*)\\u0000")


def utc(d: datetime) -> datetime:
    """An aware UTC datetime; a naive one is taken to be UTC already."""
    return d.replace(tzinfo=UTC) if d.tzinfo is None else d.astimezone(UTC)


def journal_rows(records: Sequence[JournalRecord]) -> str:
    """``records`` as the JSON array of ``[kind, at, data]`` that ``save_journal`` reads
    (``at`` in ISO 8601, UTC)."""
    # The journal is for people and tools: a value JSON cannot hold is kept as its str()
    # rather than failing the durable write it explains (as SQLiteStore does); a NUL,
    # which jsonb refuses, is kept as U+FFFD.
    rows = [[r.kind, utc(r.at).isoformat(), dict(r.data)] for r in records]
    text = json.dumps(rows, separators=(",", ":"), allow_nan=False, default=str)
    return _NUL.sub(r"\1\\ufffd", text) if "\\u0000" in text else text


@cache
def save_query(insert: bool, journal: bool, consume: bool, sealed: bool = False) -> LiteralString:
    """The one statement of a save (see ``queries.sql``): the first save of a machine
    (``insert``) or a compare-and-set update, with journal records (``sealed``: through
    the codec) or inbox deliveries when it has them."""
    q = queries()
    query = q["save_insert"] if insert else q["save_update"]
    if journal:
        query += "\n" + q["save_journal_sealed" if sealed else "save_journal"]
    if consume:
        query += "\n" + q["save_consume"]
    return query + "\n" + q["save_result"]


# ---------------------------------------------------------------------------- errors


def redact(dsn: str) -> str:
    """``dsn`` with its password (URL userinfo, ``password=`` option) redacted."""
    if "://" in dsn:
        try:
            parts = urlsplit(dsn)
            netloc = parts.netloc
            if "@" in netloc:
                userinfo, _, hosts = netloc.rpartition("@")
                user, sep, _ = userinfo.partition(":")
                netloc = f"{user}:{REDACTED}@{hosts}" if sep else f"{user}@{hosts}"
            query = parts.query
            if query:
                pairs = parse_qsl(query, keep_blank_values=True)
                query = urlencode(
                    [(k, REDACTED if k.lower() == "password" else v) for k, v in pairs], safe="[]"
                )
            return urlunsplit(parts._replace(netloc=netloc, query=query))
        except ValueError:
            return re.sub(r"//[^/?#]*@", f"//{REDACTED}@", dsn)
    return re.sub(r"(password\s*=\s*)('(?:[^'\\]|\\.)*'|\S+)", rf"\1{REDACTED}", dsn, flags=re.I)


def _secrets(dsn: str) -> list[str]:
    try:
        password = conninfo_to_dict(dsn).get("password")
    except psycopg.Error:
        return []
    return [str(password)] if password else []


def scrub(text: str, dsn: str) -> str:
    """``text`` without any occurrence of the DSN's password."""
    for secret in _secrets(dsn):
        text = text.replace(secret, REDACTED)
    return text


def db_error(e: Exception, dsn: str, doing: str) -> StateMachineError:
    """What a caller sees for a driver error ``e`` raised while ``doing`` something:
    ``STORE_UNAVAILABLE`` when the server cannot be reached (with what to check),
    ``PERSISTENCE_ERROR`` otherwise. The password never appears in the message."""
    where = redact(dsn)
    why = " ".join(scrub(f"{type(e).__name__}: {e}", dsn).split())
    if isinstance(e, psycopg.OperationalError):
        err = StateMachineError(
            f"PostgreSQL store unavailable while {doing} ({where}): {why} -- check the DSN "
            "(host, port, database, user, password) and that the server is running and "
            "accepts connections",
            STORE_UNAVAILABLE,
        )
    else:
        err = StateMachineError(
            f"PostgreSQL store error while {doing} ({where}): {why}", ErrorCode.PERSISTENCE_ERROR
        )
    err.__cause__ = e
    err.__suppress_context__ = True
    return err


def check_dsn(dsn: str) -> None:
    """Refuse (``INVALID_STORE_URL``) a DSN libpq cannot parse, without echoing its password."""
    if not isinstance(dsn, str) or not dsn.strip():
        raise StateMachineError("empty PostgreSQL DSN", ErrorCode.INVALID_STORE_URL)
    try:
        conninfo_to_dict(dsn)
    except psycopg.Error as e:
        raise StateMachineError(
            f"bad PostgreSQL DSN {redact(dsn)!r} ({scrub(str(e), dsn)}): use "
            "postgresql://user@host:port/dbname",
            ErrorCode.INVALID_STORE_URL,
        ) from None


def refuses(
    expected: int | None, token: int | None, row: tuple[Any, ...] | None, evict: str | None = None
) -> bool:
    """Whether ``row`` (version, fencing token, live lease, lease owner, its expiry;
    ``None``: no row) refuses a save expecting ``expected`` with ``token`` (and an
    owner it may ``evict``). A save's statement reports the row as of its snapshot;
    when that row would not refuse it, a concurrent writer changed the row after the
    snapshot (the write itself checks the newest one), so look again."""
    if row is None:
        return expected is not None
    if expected is None:
        return True
    version, fencing_token, leased, owner = row[:4]
    if token is not None:
        lease_ok = fencing_token == token
    else:
        lease_ok = not leased or (evict is not None and owner == evict)
    return not lease_ok or int(version) != expected


def refusal(
    mid: str,
    expected: int | None,
    token: int | None,
    row: tuple[Any, ...] | None,
    lease: Lease | None = None,
) -> StateMachineError:
    """Why a save changed no row, as ``MemoryStore`` says it: the lease first."""
    if row is None:
        return conflict(mid, expected, None)
    version, fencing_token, leased, owner, until = row
    if token is not None and fencing_token != token:
        return lease_lost(mid, token)
    if token is None and leased and (lease is None or owner != lease.evict):
        if lease is None:
            return lease_lost(mid, None)
        return LeaseHeld(mid, owner, until)
    return conflict(mid, expected, int(version))


# ---------------------------------------------------------------------------- LISTEN


Wake = Literal["notified", "pending", "timeout", "stopped"]


class Listener:
    """One dedicated connection (not from the pool) that LISTENs on ``CHANNEL`` and wakes
    every waiter at each notification; it reconnects (with backoff) when it drops.

    A wake that finds nobody waiting (a notification that comes while a worker claims,
    or before its wait is registered; the (re)connection, after which anything sent
    while not listening is lost) is remembered: the next wait returns at once
    (``"pending"``), so the worker claims again instead of sleeping until its poll."""

    def __init__(self, dsn: str, channel: str = CHANNEL) -> None:
        self.dsn = dsn
        self.channel = channel
        self.ready = asyncio.Event()  # set while LISTEN is active (and once stopped)
        self.backend_pid: int | None = None
        self.stopped = False
        self.received = 0  # notifications received
        self._pending = False  # a wake that found nobody waiting
        self._waiters: set[asyncio.Future[None]] = set()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if not self.stopped and (self._task is None or self._task.done()):
            self._task = asyncio.get_running_loop().create_task(
                self._run(), name="deploysm-postgres-listen"
            )

    async def stop(self) -> None:
        """Close the connection; every wait in progress returns. Final."""
        self.stopped = True
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self.ready.set()  # nobody waits for LISTEN any more
        self.wake()

    async def wait_for_work(
        self, max_wait_s: float, next_timer: Callable[[], Awaitable[float | None]]
    ) -> Wake:
        """Until the next notification, the next timer (``next_timer()`` seconds from
        now, asked once LISTEN is up) or ``max_wait_s``; at once when a wake came while
        nobody waited. Starts listening if needed; says what ended the wait. Never
        raises for an unreachable server: it keeps reconnecting meanwhile."""
        if self.stopped:
            return "stopped"
        loop = asyncio.get_running_loop()
        deadline = loop.time() + max_wait_s
        self.start()
        if not self.ready.is_set():
            try:
                await asyncio.wait_for(self.ready.wait(), max(0.0, max_wait_s))
            except TimeoutError:
                return "timeout"
        if self._pending:  # no need to ask for the next timer
            self._pending = False
            return "pending"
        timer = None if self.stopped else await next_timer()
        if timer is not None:
            deadline = min(deadline, loop.time() + max(0.0, timer))
        if self.stopped:
            return "stopped"
        return await self.wait(deadline - loop.time())

    async def wait(self, timeout_s: float) -> Wake:
        """Until the next notification, or ``timeout_s``; at once when a wake came while
        nobody waited."""
        if self._pending:
            self._pending = False
            return "pending"
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.add(waiter)
        try:
            await asyncio.wait_for(waiter, max(0.0, timeout_s))
        except TimeoutError:
            return "timeout"
        finally:
            self._waiters.discard(waiter)
        return "stopped" if self.stopped else "notified"

    def wake(self) -> None:
        woken = False
        for waiter in self._waiters:
            if not waiter.done():
                waiter.set_result(None)
                woken = True
        if not woken:
            self._pending = True

    async def _run(self) -> None:
        delay = 0.05
        while True:
            try:
                conn = await psycopg.AsyncConnection.connect(
                    self.dsn,
                    autocommit=True,
                    fallback_application_name="deploysm-listen",
                    keepalives=1,
                    keepalives_idle=10,
                    keepalives_interval=5,
                    keepalives_count=3,
                )
            except Exception as e:
                logger.warning("LISTEN connection failed (%s); retrying", scrub(str(e), self.dsn))
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)
                continue
            try:
                await conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(self.channel)))
                self.backend_pid = conn.info.backend_pid
                self.ready.set()
                self.wake()  # whatever came while we were not listening
                delay = 0.05
                while True:
                    async for _ in conn.notifies(timeout=30.0):
                        self.received += 1
                        self.wake()
                    await conn.execute("SELECT 1")  # quiet for 30 s: is it still there?
            except Exception as e:
                logger.warning("LISTEN connection lost (%s); reconnecting", scrub(str(e), self.dsn))
            finally:
                self.ready.clear()
                self.backend_pid = None
                await conn.close()
            await asyncio.sleep(delay)
            delay = min(delay * 2, 2.0)
