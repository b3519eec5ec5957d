"""Where machines live between runs: the ``Store`` protocol and its backends."""

from ._base import Codec, JournalEntry, JournalRecord, JSONCodec, MachineInfo, Store
from ._crypto import EncryptedCodec
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
    "SQLiteStore",
    "Store",
    "open_store",
]
