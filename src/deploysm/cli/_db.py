"""``--db`` for every verb that opens a store: which URLs a command line may name, and
the one place a store is opened, run and closed.

Only ``migrate`` creates a store (a SQLite file, a PostgreSQL schema's tables); every
other verb opens with ``create=False``, so a typo in ``--db`` is ``NO_STORE`` and leaves
nothing behind. ``memory://`` is refused: its machines would vanish when the command
exits, before any worker could see them.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
from collections.abc import Callable, Coroutine
from typing import Any

from ..core._errors import ErrorCode, StateMachineError
from ..stores import SQLiteStore, Store, open_store
from ._base import CliError
from ._keys import KEYS_ENV, codec_from

__all__ = ["migrate_hint", "quiet_logs", "where", "with_store"]

Body = Callable[[Any], Coroutine[Any, Any, int]]


def _redacted(url: str) -> str:
    if "://" not in url or url.lower().startswith(("sqlite:", "memory:")):
        return url
    from ..core._redact import DEFAULT_REDACTOR

    return DEFAULT_REDACTOR.redact_text(url)


def where(store: Store, url: str) -> str:
    """The store as a person would name it: a SQLite file's path, a redacted URL."""
    return str(store.path) if isinstance(store, SQLiteStore) else _redacted(url)


def migrate_hint(url: str) -> str:
    return f"run deploysm migrate --db {_redacted(url)}"


def quiet_logs() -> None:
    """Outcomes are printed: no stray log lines on stderr (unless a verb set up its own)."""
    log = logging.getLogger("deploysm")
    if not log.handlers:
        log.addHandler(logging.NullHandler())


def with_store(args: argparse.Namespace, body: Body, *, create: bool = False) -> int:
    """Open ``--db`` (a usage error, exit 2, if that fails), run ``body(store)``, close.
    A StateMachineError of ``body`` is one coded line, exit 1."""
    url = args.db
    if not url:
        raise CliError("no store: pass --db URL or set DEPLOYSM_DB")
    if str(url).strip().lower().startswith("memory:"):
        raise CliError(
            f"--db {url} is a store in this process's memory, gone when the command exits: "
            "use a SQLite file (deploysm migrate --db PATH) or postgresql://...",
            code=ErrorCode.INVALID_STORE_URL,
        )
    codec = codec_from(args)
    try:
        store = open_store(url, codec=codec, create=create)
    except (StateMachineError, ValueError) as e:
        code = e.code if isinstance(e, StateMachineError) else ErrorCode.INVALID_STORE_URL
        raise CliError(str(e), code=code) from None
    quiet_logs()

    async def go() -> int:
        try:
            try:
                await store.open()
            except StateMachineError as e:
                if e.code == ErrorCode.NO_STORE:
                    msg = f"no store at {where(store, url)}; {migrate_hint(url)}"
                    raise CliError(msg, code=e.code) from None
                raise CliError(f"cannot open --db {_redacted(url)}: {e}", code=e.code) from None
            except OSError as e:
                msg = f"cannot open --db {_redacted(url)}: {e}"
                raise CliError(msg, code=ErrorCode.PERSISTENCE_ERROR) from None
            try:
                return await body(store)
            except StateMachineError as e:
                hint = ""
                if e.code == ErrorCode.INVALID_SNAPSHOT and codec is None:
                    hint = f" (an encrypted store? pass --keys-env VAR or set {KEYS_ENV})"
                raise CliError(f"{e}{hint}", exit_code=1, code=e.code) from None
        finally:
            await store.close()

    return asyncio.run(go())
