"""``open_store(url)``: one string names a store, for code and for the CLI's ``--db``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..core._errors import StateMachineError
from ._base import Codec, Store

__all__ = ["migrate_store", "open_store", "sqlite_path"]


def open_store(url: str | Path, *, codec: Codec | None = None, create: bool = True) -> Store:
    """``sqlite:///relative.db``, ``sqlite:////absolute.db``, a bare file path,
    ``memory://`` or ``postgresql://user@host:port/db``. The store is not opened yet:
    ``await store.open()`` or ``async with open_store(url) as store``. With
    ``create=False`` opening creates no file or schema (``NO_STORE`` if there is none)."""
    text = str(url).strip()
    if not text:
        raise StateMachineError("empty store URL: give a file path or a URL", "INVALID_STORE_URL")
    scheme, sep, rest = text.partition("://")
    if not sep:
        return _sqlite(text, codec, create)
    scheme = scheme.lower()
    if scheme == "sqlite":
        if not rest.startswith("/") or rest == "/":
            raise StateMachineError(
                f"bad SQLite URL {text!r}: use sqlite:///relative/path.db or "
                "sqlite:////absolute/path.db",
                "INVALID_STORE_URL",
            )
        return _sqlite(rest[1:], codec, create)
    if scheme == "memory":
        from ._memory import MemoryStore

        return MemoryStore(codec=codec)
    if scheme in ("postgresql", "postgres"):
        store: Store = _postgres(text, codec, create)
        return store
    raise StateMachineError(
        f"unknown store URL scheme {scheme!r}: use a file path, sqlite:///path, "
        "memory:// or postgresql://...",
        "INVALID_STORE_URL",
    )


def _sqlite(path: str, codec: Codec | None, create: bool) -> Store:
    from ._sqlite import SQLiteStore

    return SQLiteStore(path, codec=codec, create=create)


def _postgres(dsn: str, codec: Codec | None, create: bool) -> Any:
    try:
        from ._postgres import PostgresStore  # type: ignore[import-not-found,unused-ignore]
    except ImportError as e:
        raise StateMachineError(
            f"PostgreSQL stores need the psycopg driver, which is not installed ({e}): "
            "pip install 'deploysm[postgres]'",
            "INVALID_STORE_URL",
        ) from e
    return PostgresStore(dsn, codec=codec, create=create)


def sqlite_path(url: str | Path) -> Path | None:
    """The file a SQLite store URL (or bare path) names; ``None`` for other URLs."""
    text = str(url).strip()
    scheme, sep, rest = text.partition("://")
    if not sep:
        return Path(text) if text else None
    if scheme.lower() == "sqlite" and rest.startswith("/") and rest != "/":
        return Path(rest[1:])
    return None


async def migrate_store(store: Store) -> tuple[list[int], int]:
    """Open ``store`` (which creates or upgrades its schema); returns the versions that
    applied (none when it was up to date) and the schema version it has now."""
    from ._sqlite import SQLiteStore

    await store.open()
    if isinstance(store, SQLiteStore):
        from ._sqlite_writer import migrations

        return list(store.migrated), len(migrations())
    if not hasattr(store, "migrated"):  # a store without a schema (MemoryStore)
        return [], 0
    from ._postgres_sql import migrations as pg_migrations

    return list(store.migrated), len(pg_migrations())
