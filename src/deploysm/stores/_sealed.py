"""User data beside the snapshot (start contexts, event payloads, journal data) through
the store's codec, so that ``EncryptedCodec`` leaves none of it in clear.

With the plain ``JSONCodec`` nothing changes: those values stay JSON text (SQLite) or
``json``/``jsonb`` columns (PostgreSQL), and this module is not on the write path.
With any other codec each value is wrapped in a JSON object (``{"context": ...}``,
``{"payload": ..., "correlation_id": ...}``, or the journal record's data) and stored
as the bytes ``codec.encode(machine_id, object)`` returns.

A store holding such rows is marked (``deploysm_meta``: ``codec = sealed``) before its
first one is written; a store opened with the plain codec on a marked store reads, but
refuses every write of user data with ``KEYS_REQUIRED``: it would write in clear.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from ..core._errors import ErrorCode, StateMachineError
from ._base import TEXT_CODECS, Codec, JSONCodec

__all__ = [
    "ENCRYPTED_ERROR",
    "MARK",
    "MARKED",
    "SealingStore",
    "error_column",
    "keys_required",
    "read_error",
    "seal",
    "sealed",
    "seals",
    "unseal",
]

_ENVELOPE = b"DSM1"
# The marker row, and the query that finds it.
MARK = "INSERT INTO deploysm_meta (name, value) VALUES ('codec', 'sealed') ON CONFLICT DO NOTHING"
MARKED = "SELECT 1 FROM deploysm_meta WHERE name = 'codec' AND value = 'sealed'"


def seals(codec: Codec) -> bool:
    """Whether ``codec`` stores user data as bytes of its own (anything but plain JSON)."""
    return type(codec) is not JSONCodec


def sealed(codec: Codec, value: Any) -> bool:
    """Whether a stored ``value`` is what ``seal`` wrote (bytes of the codec, or of an
    encrypted store read without its keys) rather than plain JSON."""
    return isinstance(value, bytes) and (seals(codec) or value.startswith(_ENVELOPE))


def seal(codec: Codec, machine_id: str, doc: Mapping[str, Any]) -> bytes:
    """``doc`` through ``codec``. A value JSON cannot hold is kept as its ``str()``, as
    the plain journal does."""
    text = json.dumps(dict(doc), separators=(",", ":"), allow_nan=False, default=str)
    encode_text = TEXT_CODECS.get(type(codec))
    if encode_text is not None:
        return encode_text(codec, machine_id, text)
    return codec.encode(machine_id, json.loads(text))


def unseal(codec: Codec, machine_id: str, blob: Any, what: str) -> dict[str, Any]:
    """What ``seal`` stored as ``what`` (e.g. ``"the start context"``) of the machine;
    ``INVALID_SNAPSHOT`` (that names the machine, never the data) if it cannot be read."""
    blob = bytes(blob)
    if not seals(codec) and blob.startswith(_ENVELOPE):
        raise StateMachineError(
            f"{what} of {machine_id!r} is encrypted: open the store with its keys "
            "(EncryptedCodec; on the command line, DEPLOYSM_KEYS)",
            ErrorCode.INVALID_SNAPSHOT,
        )
    try:
        return codec.decode(machine_id, blob)
    except StateMachineError as e:
        raise StateMachineError(f"{what} of {machine_id!r} cannot be read: {e}", e.code) from None


ENCRYPTED_ERROR = "[encrypted: open the store with its keys to read it]"


def error_column(codec: Codec, machine_id: str, text: str | None) -> str | bytes | None:
    """What a save stores as the machine's last error: the text, or with a sealing
    codec the codec's bytes of ``{"last_error": text}``."""
    if text is None or not seals(codec):
        return text
    return seal(codec, machine_id, {"last_error": text})


def read_error(codec: Codec, machine_id: str, value: Any) -> str | None:
    """The last error ``error_column`` stored; a sealed one this store cannot read
    (no keys, a key gone) is ``ENCRYPTED_ERROR``, so that listing never fails on it."""
    if value is None or isinstance(value, str):
        return value
    if not sealed(codec, value):
        return bytes(value).decode("utf-8", "replace")
    try:
        text = unseal(codec, machine_id, value, "the last error").get("last_error")
    except StateMachineError:
        return ENCRYPTED_ERROR
    return text if isinstance(text, str) else None


def keys_required(where: str) -> StateMachineError:
    return StateMachineError(
        f"{where} holds encrypted rows; this store has no keys and would write in clear, "
        "so nothing was written: open it with its EncryptedCodec (on the command line, "
        "set DEPLOYSM_KEYS)",
        ErrorCode.KEYS_REQUIRED,
    )


class SealingStore:
    """The write guard of a store with a codec (see the module docstring). A store sets
    ``_seals`` and reads ``_marked`` when it opens; writes of user data call
    ``_writable()`` first (a save only when ``_seals is not _marked``, or not open)."""

    codec: Codec
    _seals: bool
    _marked: bool

    async def open(self) -> None:
        raise NotImplementedError

    async def _write_mark(self) -> None:
        raise NotImplementedError

    async def _writable(self) -> None:
        await self.open()
        if not self._seals:
            if self._marked:
                raise keys_required(str(self))
        elif not self._marked:
            await self._write_mark()
            self._marked = True
