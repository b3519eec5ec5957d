"""Encryption at rest: an AES-256-GCM snapshot codec with key ids for rotation.

Envelope (all of it is authenticated)::

    b"DSM1" | len(key_id): 1 byte | key_id: ASCII | nonce: 12 bytes | ciphertext + 16-byte tag

The plaintext is the snapshot's compact JSON. The associated data is everything
before the ciphertext followed by the machine id (UTF-8), so a row copied to
another machine, or a header edited to name another key, fails authentication.
``cryptography`` is imported only when a codec is built (``pip install 'deploysm[crypto]'``).
"""

from __future__ import annotations

import base64
import binascii
import os
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from ..core._errors import ErrorCode, StateMachineError
from ._base import TEXT_CODECS, JSONCodec

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

__all__ = ["EncryptedCodec"]

_MAGIC = b"DSM1"
_NONCE_LEN = 12
_TAG_LEN = 16
_KEY_LEN = 32
_MAX_ID_LEN = 64
_ID_FORBIDDEN = frozenset(",:")
_FORMAT = "'id1:base64key,id2:base64key' (urlsafe base64 of 32-byte keys; the first id is active)"
_JSON = JSONCodec()


def _check_key_id(key_id: object) -> str:
    if not isinstance(key_id, str) or not 1 <= len(key_id) <= _MAX_ID_LEN:
        raise ValueError(f"key id {key_id!r} must be a str of 1..{_MAX_ID_LEN} characters")
    if any(not "!" <= c <= "~" or c in _ID_FORBIDDEN for c in key_id):
        raise ValueError(f"key id {key_id!r} must be visible ASCII without spaces, ',' or ':'")
    return key_id


def _invalid(machine_id: str, why: str) -> StateMachineError:
    return StateMachineError(
        f"encrypted snapshot of {machine_id!r} {why}", ErrorCode.INVALID_SNAPSHOT
    )


class EncryptedCodec:
    """A ``Codec`` that encrypts each snapshot with AES-256-GCM.

    ``keys`` maps key ids to 32-byte keys (AES-256 only: 16/24-byte keys are
    refused). New rows use ``active_key_id``; any row decodes as long as the key
    named in its envelope is still in ``keys``, so rotation is: add the new key,
    make it active, keep the old one until every row has been rewritten.
    """

    __slots__ = ("_active", "_aead")

    def __init__(self, keys: Mapping[str, bytes], active_key_id: str) -> None:
        try:
            from cryptography.hazmat.primitives.ciphers.aead import AESGCM
        except ImportError as e:
            raise ImportError(
                "EncryptedCodec needs the 'cryptography' package: pip install 'deploysm[crypto]'"
            ) from e
        if not isinstance(keys, Mapping) or not keys:
            raise ValueError("keys must be a non-empty mapping of key id -> 32-byte key")
        aead: dict[str, AESGCM] = {}
        for key_id, key in keys.items():
            _check_key_id(key_id)
            if not isinstance(key, bytes | bytearray | memoryview):
                raise ValueError(
                    f"key {key_id!r} must be bytes, not {type(key).__name__} "
                    "(use EncryptedCodec.key_from_text for text keys)"
                )
            if len(bytes(key)) != _KEY_LEN:
                raise ValueError(
                    f"key {key_id!r} must be {_KEY_LEN} bytes (AES-256), got {len(bytes(key))}"
                )
            aead[key_id] = AESGCM(bytes(key))
        if not isinstance(active_key_id, str) or active_key_id not in aead:
            raise ValueError(f"active key id {active_key_id!r} is not one of {sorted(aead)}")
        self._aead = aead
        self._active = active_key_id

    def __repr__(self) -> str:
        return f"EncryptedCodec(key_ids={sorted(self._aead)}, active_key_id={self._active!r})"

    @property
    def active_key_id(self) -> str:
        return self._active

    @property
    def key_ids(self) -> frozenset[str]:
        return frozenset(self._aead)

    def encode(self, machine_id: str, data: Mapping[str, Any]) -> bytes:
        return self._seal(machine_id, _JSON.encode(machine_id, data))

    def _encode_text(self, machine_id: str, text: str) -> bytes:
        return self._seal(machine_id, text.encode())

    def _seal(self, machine_id: str, plaintext: bytes) -> bytes:
        key_id = self._active.encode("ascii")
        header = _MAGIC + bytes([len(key_id)]) + key_id + os.urandom(_NONCE_LEN)
        aad = header + machine_id.encode("utf-8", "surrogatepass")
        return header + self._aead[self._active].encrypt(header[-_NONCE_LEN:], plaintext, aad)

    def decode(self, machine_id: str, blob: bytes) -> dict[str, Any]:
        from cryptography.exceptions import InvalidTag

        if not isinstance(blob, bytes | bytearray | memoryview):
            raise _invalid(machine_id, f"is a {type(blob).__name__}, not bytes")
        blob = bytes(blob)
        if not blob.startswith(_MAGIC):
            raise _invalid(machine_id, "lacks the DSM1 envelope marker (not encrypted?)")
        id_end = len(_MAGIC) + 1 + blob[len(_MAGIC)] if len(blob) > len(_MAGIC) else len(blob)
        nonce_end = id_end + _NONCE_LEN
        if len(blob) < nonce_end + _TAG_LEN or id_end == len(_MAGIC) + 1:
            raise _invalid(machine_id, "is truncated or has a corrupt header")
        try:
            key_id = _check_key_id(blob[len(_MAGIC) + 1 : id_end].decode("ascii"))
        except (UnicodeDecodeError, ValueError):
            raise _invalid(machine_id, "has a corrupt key id in its header") from None
        aead = self._aead.get(key_id)
        if aead is None:
            raise _invalid(
                machine_id,
                f"was written with key id {key_id!r}, which is not configured "
                f"(known: {sorted(self._aead)}); supply that key to read it",
            )
        aad = blob[:nonce_end] + machine_id.encode("utf-8", "surrogatepass")
        try:
            plaintext = aead.decrypt(blob[id_end:nonce_end], blob[nonce_end:], aad)
        except (InvalidTag, ValueError, OverflowError):
            raise _invalid(
                machine_id,
                f"failed authentication with key {key_id!r}: wrong key, tampered or "
                "truncated data, or a row copied from another machine id",
            ) from None
        return _JSON.decode(machine_id, plaintext)

    @staticmethod
    def generate_key() -> bytes:
        """A fresh random 32-byte key (``os.urandom``)."""
        return os.urandom(_KEY_LEN)

    @staticmethod
    def key_to_text(key: bytes) -> str:
        """The text form of a key for config files and env vars (urlsafe base64)."""
        return base64.urlsafe_b64encode(bytes(key)).decode("ascii")

    @staticmethod
    def key_from_text(text: str) -> bytes:
        """Parse a key's text form (urlsafe or standard base64, padding optional)."""
        if not isinstance(text, str):
            raise ValueError(f"key text must be a str, not {type(text).__name__}")
        s = text.strip().translate(str.maketrans("+/", "-_")).rstrip("=")
        try:
            key = base64.b64decode(s + "=" * (-len(s) % 4), altchars=b"-_", validate=True)
        except (binascii.Error, ValueError):
            raise ValueError("key text is not valid base64") from None
        if len(key) != _KEY_LEN:
            raise ValueError(f"key text decodes to {len(key)} bytes; expected {_KEY_LEN}")
        return key

    @classmethod
    def from_string(cls, spec: str) -> EncryptedCodec:
        """Build from ``'id1:base64key,id2:base64key'``; the first id is the active one."""
        keys: dict[str, bytes] = {}
        for n, entry in enumerate(str(spec).split(","), 1):
            key_id, sep, text = (part.strip() for part in entry.partition(":"))
            if not sep or not key_id or not text:
                raise ValueError(f"key entry {n} is not 'id:base64key'; expected {_FORMAT}")
            try:
                _check_key_id(key_id)
                keys.setdefault(key_id, cls.key_from_text(text))
            except ValueError as e:
                raise ValueError(f"key entry {n} ({key_id!r}): {e}; expected {_FORMAT}") from None
            if len(keys) != n:
                raise ValueError(f"key id {key_id!r} appears twice; expected {_FORMAT}")
        return cls(keys, next(iter(keys)))

    @classmethod
    def from_env(
        cls, var: str = "DEPLOYSM_KEYS", *, environ: Mapping[str, str] | None = None
    ) -> EncryptedCodec:
        """Build from an environment variable holding ``'id1:base64key,id2:base64key'``."""
        spec = (os.environ if environ is None else environ).get(var, "").strip()
        if not spec:
            raise ValueError(f"environment variable {var} is unset or empty; expected {_FORMAT}")
        try:
            return cls.from_string(spec)
        except ValueError as e:
            raise ValueError(f"{var}: {e}") from None


TEXT_CODECS[EncryptedCodec] = EncryptedCodec._encode_text
