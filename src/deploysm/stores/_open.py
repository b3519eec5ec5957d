"""``open_store(url)``: one string names a store, for code and for the CLI's ``--db``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .._errors import StateMachineError
from ._base import Codec, Store

__all__ = ["open_store"]


def open_store(url: str | Path, *, codec: Codec | None = None) -> Store:
    """``sqlite:///relative.db``, ``sqlite:////absolute.db``, a bare file path,
    ``memory://`` or ``postgresql://user@host:port/db``. The store is not opened yet:
    ``await store.open()`` or ``async with open_store(url) as store``."""
    text = str(url).strip()
    if not text:
        raise StateMachineError("empty store URL: give a file path or a URL", "INVALID_STORE_URL")
    scheme, sep, rest = text.partition("://")
    if not sep:
        return _sqlite(text, codec)
    scheme = scheme.lower()
    if scheme == "sqlite":
        if not rest.startswith("/") or rest == "/":
            raise StateMachineError(
                f"bad SQLite URL {text!r}: use sqlite:///relative/path.db or "
                "sqlite:////absolute/path.db",
                "INVALID_STORE_URL",
            )
        return _sqlite(rest[1:], codec)
    if scheme == "memory":
        from ._memory import MemoryStore

        return MemoryStore(codec=codec)
    if scheme in ("postgresql", "postgres"):
        store: Store = _postgres(text, codec)
        return store
    raise StateMachineError(
        f"unknown store URL scheme {scheme!r}: use a file path, sqlite:///path, "
        "memory:// or postgresql://...",
        "INVALID_STORE_URL",
    )


def _sqlite(path: str, codec: Codec | None) -> Store:
    from ._sqlite import SQLiteStore

    return SQLiteStore(path, codec=codec)


def _postgres(dsn: str, codec: Codec | None) -> Any:
    try:
        from ._postgres import PostgresStore  # type: ignore[import-not-found,unused-ignore]
    except ImportError as e:
        raise StateMachineError(
            f"PostgreSQL stores are not available here ({e})", "INVALID_STORE_URL"
        ) from e
    return PostgresStore(dsn, codec=codec)
