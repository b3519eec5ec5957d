"""Where machines live between runs: the ``Store`` protocol and its backends.

``PostgresStore`` loads on first use, so the PostgreSQL driver is only needed by
those who use it (``pip install 'deploysm[postgres]'``).
"""

from typing import TYPE_CHECKING, Any

from ._base import Codec, JournalEntry, JournalRecord, JSONCodec, MachineInfo, Store
from ._crypto import EncryptedCodec
from ._history import full_history
from ._memory import MemoryStore
from ._open import open_store
from ._sqlite import SQLiteStore

__all__ = [
    "Codec",
    "EncryptedCodec",
    "JSONCodec",
    "JournalEntry",
    "JournalRecord",
    "MachineInfo",
    "MemoryStore",
    "PostgresStore",
    "SQLiteStore",
    "Store",
    "full_history",
    "open_store",
]

if TYPE_CHECKING:
    from ._postgres import PostgresStore


def __getattr__(name: str) -> Any:
    if name == "PostgresStore":
        from ._postgres import PostgresStore

        return PostgresStore
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
