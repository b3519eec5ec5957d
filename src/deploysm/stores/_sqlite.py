"""``SQLiteStore``: the embedded default store (one file, WAL, durable commits).

Writes go to one writer thread that owns the write connection and commits the
saves of concurrent machines together (group commit: one transaction and one fsync
per batch, each save's compare-and-set checked on its own inside a SAVEPOINT), see
``_sqlite_writer``. With ``synchronous="FULL"`` (the default) a save returns only
once its batch is durable.

Reads (``load``, ``journal``, ``list``) run inline on the event loop, on a second,
read-only connection: in WAL mode a reader never waits for the writer, and a short
indexed read costs less than the thread hop that would move it off the loop. Measured
on a 2-core VM (~1 KB snapshot, 100 machines), inline vs ``asyncio.to_thread``:
``load`` 36-45 us vs 96-151 us; ``journal`` (5 entries) 22 vs 82-94 us; ``list`` (100
rows) 197-211 vs 248-308 us. Decoding, the bulk of a ``load``, needs the GIL anyway.
(A write pays that hop, ~80 us here, but it also waits for an fsync.)

Several processes on one host may share a file: SQLite's locks serialize their
writers; a writer kept waiting longer than ``busy_timeout_ms`` fails with
``STORE_BUSY``. The newest schema a database may have is the newest this code
knows; a newer one is refused with ``SCHEMA_TOO_NEW``.

It is also a ``RuntimeStore`` (workers run machines out of it): ``start``, ``send``,
``claim``, leases and fencing tokens, see ``_sqlite_runtime``. A save's statement
and its refusals are in ``_sqlite_save``. Claims are write
operations, so SQLite's single writer makes them exclusive across processes; wake-ups
across processes are by polling (every 50 ms, a cheap read).
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
import weakref
from collections.abc import Callable, Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any, TypeVar

from ..core._errors import ErrorCode, StateMachineError
from ..durable._snapshot import SerializableState
from ._base import (
    AsyncOpenClose,
    Codec,
    JournalEntry,
    JournalRecord,
    JSONCodec,
    MachineInfo,
    encode_snapshot,
    error_text,
)
from ._prune import PruneCounts, cutoff, prune_sqlite
from ._rows import journal_entry, machine_info
from ._runtime import Lease, holds_lease
from ._sealed import (
    MARK,
    MARKED,
    SealingStore,
    error_column,
    read_error,
    seal,
    sealed,
    seals,
    unseal,
)
from ._sqlite_runtime import SQLiteRuntime, Wakeups
from ._sqlite_save import SaveOp, journal_json
from ._sqlite_writer import SCHEMA_TOO_NEW, STORE_BUSY, Writer, no_store, store_error, utc_text

__all__ = ["SCHEMA_TOO_NEW", "STORE_BUSY", "SQLiteStore"]

T = TypeVar("T")
_SYNCHRONOUS = ("OFF", "NORMAL", "FULL", "EXTRA")

_LIST = (
    "SELECT id, workflow, definition_id, status, state, version, updated_at, last_error"
    " FROM machines"
)


class SQLiteStore(SQLiteRuntime, SealingStore, AsyncOpenClose):
    """A ``Store`` in one SQLite file. ``async with SQLiteStore(path) as store:`` opens
    and closes it; a store that is used before ``open()`` (or after ``close()``)
    opens itself. ``":memory:"`` is refused: the writer thread owns its connection,
    so an in-memory database would not be shared with the reader. ``create=False``
    creates nothing: ``open()`` of a missing file is ``NO_STORE``."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        codec: Codec | None = None,
        synchronous: str = "FULL",
        busy_timeout_ms: int = 5000,
        create: bool = True,
    ) -> None:
        text = os.fspath(path)
        if not isinstance(text, str) or not text or text == ":memory:" or "mode=memory" in text:
            raise ValueError(
                f"SQLiteStore needs a file path, not {text!r}: an in-memory database is not "
                "supported (its writer thread owns the connection); use MemoryStore instead"
            )
        if text.startswith("file:"):
            raise ValueError(f"SQLiteStore takes a file path, not a URI: {text!r}")
        sync = str(synchronous).upper()
        if sync not in _SYNCHRONOUS:
            raise ValueError(f"synchronous must be one of {', '.join(_SYNCHRONOUS)}")
        if isinstance(busy_timeout_ms, bool) or not isinstance(busy_timeout_ms, int):
            raise ValueError("busy_timeout_ms must be an int")
        if busy_timeout_ms < 0:
            raise ValueError("busy_timeout_ms must be >= 0")
        self.path = Path(text)
        self.codec: Codec = codec if codec is not None else JSONCodec()
        self._seals = seals(self.codec)
        self._marked = False  # deploysm_meta says the store holds encrypted rows
        self.synchronous = sync
        self.busy_timeout_ms = busy_timeout_ms
        self.create = bool(create)
        self.migrated: list[int] = []  # the schema versions the last open() applied
        self._writer: Writer | None = None
        self._reader: sqlite3.Connection | None = None
        self._opening: asyncio.Future[None] | None = None
        self._finalizer: weakref.finalize[Any, Any] | None = None
        self._past_commits = 0
        self._past_requests = 0
        self._wakeups = Wakeups()

    def __repr__(self) -> str:
        return f"SQLiteStore({str(self.path)!r})"

    # ---------------------------------------------------------------- lifecycle

    async def open(self) -> None:
        """Create the file (and its folder) if needed, apply migrations, start the writer.
        With ``create=False`` nothing is created: a missing file, or one without a
        deploysm schema, is ``NO_STORE`` (an older schema is still upgraded)."""
        if self._writer is not None:
            return
        if self._opening is not None:
            await asyncio.shield(self._opening)
            return
        opening = self._opening = asyncio.get_running_loop().create_future()
        try:
            if not self.create and (not self.path.is_file() or not self.path.stat().st_size):
                raise no_store(self.path)  # an empty file too: it would be written to
            if self.create:
                self.path.parent.mkdir(parents=True, exist_ok=True)
            writer = Writer(
                str(self.path),
                busy_timeout_ms=self.busy_timeout_ms,
                synchronous=self.synchronous,
                create=self.create,
            )
            reader = await writer.start()
        except BaseException as e:
            err = _open_error(self.path, e)
            opening.set_exception(err)
            opening.exception()  # whoever waits gets it; nobody else needs to
            if err is e or not isinstance(e, Exception):
                raise
            raise err  # noqa: B904 (its cause is set: the SQLite or OS error)
        finally:
            self._opening = None
        self._writer, self._reader = writer, reader
        self.migrated = writer.migrated
        self._marked = reader.execute(MARKED).fetchone() is not None
        self._finalizer = weakref.finalize(self, _abandon, writer, reader)
        opening.set_result(None)

    async def close(self) -> None:
        """Finish every queued write, stop the writer thread, close both connections.
        Idempotent. Writes submitted while closing fail; a later call reopens."""
        if self._opening is not None:
            try:
                await asyncio.shield(self._opening)
            except Exception:
                return
        writer, reader = self._writer, self._reader
        if writer is None or reader is None:
            return
        await writer.stop()
        if self._writer is writer:
            self._writer = self._reader = None
            self._past_commits += writer.commits
            self._past_requests += writer.requests
            if self._finalizer is not None:
                self._finalizer.detach()
            reader.close()

    @property
    def commits(self) -> int:
        """Write transactions committed so far (one per batch of saves)."""
        w = self._writer
        return self._past_commits + (w.commits if w is not None else 0)

    @property
    def write_requests(self) -> int:
        """Write operations run so far; ``write_requests / commits`` is the batching."""
        w = self._writer
        return self._past_requests + (w.requests if w is not None else 0)

    async def _ready(self) -> tuple[Writer, sqlite3.Connection]:
        if self._writer is None or self._reader is None:
            await self.open()
        assert self._writer is not None and self._reader is not None
        return self._writer, self._reader

    # -------------------------------------------------------- extension points

    async def run_write(self, op: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``op(connection)`` on the writer thread, in the next batch's transaction
        and in a SAVEPOINT of its own: if it raises, its changes are undone and the
        error is raised here (SQLite errors as ``STORE_BUSY``/``PERSISTENCE_ERROR``);
        otherwise its result is returned once the batch is durable."""
        writer, _ = await self._ready()
        result: T = await writer.submit(op)
        return result

    async def run_read(self, op: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``op`` inline on the read-only connection (keep it short and indexed)."""
        _, reader = await self._ready()
        try:
            return op(reader)
        except (sqlite3.Error, UnicodeEncodeError) as e:
            raise store_error(e) from e

    # ------------------------------------------------------------------- Store

    async def save(
        self,
        snapshot: SerializableState,
        *,
        expected_version: int | None,
        journal: Sequence[JournalRecord] = (),
        workflow: str | None = None,
        token: int | None = None,
        consumed: Sequence[int] = (),
        lease: Lease | None = None,
    ) -> int | None:
        """Compare-and-set: write ``snapshot`` and its journal records in one transaction
        if the stored version is ``expected_version`` (``None``: the machine must not
        exist yet); otherwise raise ``CONFLICT`` and write nothing. Returns once the
        write is durable. A caller cancelled while waiting does not undo a write that
        is already queued (shield the call to learn its outcome).

        Leases, checked before the version: with ``token``, the save is refused with
        ``LEASE_LOST`` (nothing written) unless it is the machine's current fencing
        token; without one, while another worker's lease is live (``LEASE_HELD`` when
        the save has a ``lease``, see ``Lease``). ``consumed`` inbox seqs are marked
        delivered in the same transaction. With a lease, returns the fencing token."""
        mid = snapshot.machine_id
        blob = encode_snapshot(self.codec, snapshot)
        rows: list[tuple[Any, ...]]
        if self._seals:
            rows = [
                (mid, snapshot.version, r.kind, utc_text(r.at), seal(self.codec, mid, r.data))
                for r in journal
            ]
        else:
            rows = [
                (mid, snapshot.version, r.kind, utc_text(r.at), journal_json(r.data))
                for r in journal
            ]
        values = (
            mid,
            workflow,
            snapshot.definition_id,
            snapshot.status,
            snapshot.current_state.name,
            snapshot.version,
            blob,
            utc_text(),
            int(snapshot.in_flight is not None),
        )
        error = error_column(self.codec, mid, error_text(snapshot.last_error))
        if self._seals is not self._marked or self._writer is None:
            await self._writable()
        writer, _ = await self._ready()
        op = SaveOp(values, expected_version, rows, token, consumed, error)
        if lease is not None:
            op.lease, op.holds = lease, holds_lease(snapshot)
        fencing_token: int = await writer.submit(op)
        return fencing_token if lease is not None else None

    async def load(self, machine_id: str) -> SerializableState | None:
        _, reader = await self._ready()
        try:
            row = reader.execute(
                "SELECT snapshot FROM machines WHERE id = ?", (machine_id,)
            ).fetchone()
        except (sqlite3.Error, UnicodeEncodeError) as e:
            raise store_error(e) from e
        if row is None or row[0] is None:  # started, never run: no snapshot yet
            return None
        return _decode(self.codec, machine_id, row[0])

    async def journal(self, machine_id: str, *, after: int = 0) -> list[JournalEntry]:
        _, reader = await self._ready()
        try:
            rows = reader.execute(
                "SELECT seq, version, kind, at, data FROM journal"
                " WHERE machine_id = ? AND seq > ? ORDER BY seq",
                (machine_id, after),
            ).fetchall()
        except (sqlite3.Error, UnicodeEncodeError) as e:
            raise store_error(e) from e
        codec = self.codec
        return [
            journal_entry(
                machine_id,
                seq,
                v,
                kind,
                at,
                unseal(codec, machine_id, data, f"journal entry {seq}")
                if sealed(codec, data)
                else data,
            )
            for seq, v, kind, at, data in rows
        ]

    async def list(self, status: str | None = None) -> list[MachineInfo]:
        _, reader = await self._ready()
        try:
            if status is None:
                cur = reader.execute(_LIST + " ORDER BY id")
            else:
                cur = reader.execute(_LIST + " WHERE status = ? ORDER BY id", (status,))
            rows = cur.fetchall()
        except (sqlite3.Error, UnicodeEncodeError) as e:
            raise store_error(e) from e
        codec = self.codec
        return [
            machine_info(mid, wf, did, st, state, version, at, read_error(codec, mid, error))
            for mid, wf, did, st, state, version, at, error in rows
        ]

    async def prune(self, older_than: timedelta) -> PruneCounts:
        """Remove old journal entries of finished machines and old delivered events, in
        one write (see ``_prune``)."""
        before = utc_text(cutoff(older_than))
        return await self.run_write(lambda c: prune_sqlite(c, before))

    def _decode_snapshot(self, machine_id: str, blob: Any) -> SerializableState:
        return _decode(self.codec, machine_id, blob)

    async def _write_mark(self) -> None:
        await self.run_write(lambda c: c.execute(MARK))


def _decode(codec: Codec, machine_id: str, blob: Any) -> SerializableState:
    """The stored snapshot, validated; whatever is wrong with it is ``INVALID_SNAPSHOT``."""
    try:
        if isinstance(blob, str):
            blob = blob.encode()
        if not isinstance(blob, bytes):
            raise TypeError(f"the stored snapshot is a {type(blob).__name__}, not bytes")
        snap = SerializableState.from_dict(codec.decode(machine_id, blob))
    except StateMachineError as e:
        if e.code == ErrorCode.INVALID_SNAPSHOT:
            raise
        raise _invalid(machine_id, f"{e.code}: {e.message}") from e
    except Exception as e:
        raise _invalid(machine_id, f"{type(e).__name__}: {e}") from e
    if snap.machine_id != machine_id:
        raise _invalid(machine_id, f"it is the snapshot of {snap.machine_id!r}")
    return snap


def _invalid(machine_id: str, why: str) -> StateMachineError:
    return StateMachineError(
        f"stored snapshot of {machine_id!r} is invalid: {why}", ErrorCode.INVALID_SNAPSHOT
    )


def _open_error(path: Path, e: BaseException) -> Exception:
    """What ``open()`` raises: a folder or file that cannot be made or opened is
    ``PERSISTENCE_ERROR`` naming the path."""
    if not isinstance(e, Exception):
        return StateMachineError("open() was interrupted")
    if isinstance(e, OSError | sqlite3.Error) or (
        isinstance(e, StateMachineError) and e.code == ErrorCode.PERSISTENCE_ERROR
    ):
        why = e.message if isinstance(e, StateMachineError) else f"{type(e).__name__}: {e}"
        err = StateMachineError(
            f"cannot open the SQLite store {str(path)!r}: {why}", ErrorCode.PERSISTENCE_ERROR
        )
        err.__cause__ = e.__cause__ if isinstance(e, StateMachineError) and e.__cause__ else e
        return err
    return e


def _abandon(writer: Writer, reader: sqlite3.Connection) -> None:
    """A store collected without ``close()``: let its thread finish and end."""
    writer.stop_nowait()
    reader.close()
