"""The keyring of the command line: ``DEPLOYSM_KEYS`` (or ``--keys-env VAR``).

Every verb that opens a store takes it, so a store encrypted with ``EncryptedCodec``
is read and written with the same keys from the shell as from code. The value is
``id:base64key[,id:base64key...]``: 32-byte AES-256 keys in (urlsafe or standard)
base64, each under an id; the first id encrypts what is written, every id decrypts.
"""

from __future__ import annotations

import argparse
import os

from ..stores import Codec
from ._base import CliError

__all__ = ["KEYS_ENV", "KEYS_HELP", "add_keys_arg", "codec_from"]

KEYS_ENV = "DEPLOYSM_KEYS"
KEYS_HELP = (
    f"encrypt and decrypt with the keyring in environment variable VAR (default: "
    f"${KEYS_ENV}, when it is set): 'id:base64key[,id:base64key...]', 32-byte keys; "
    "the first id encrypts new rows, every id decrypts. Without keys, a verb that would "
    "write into an encrypted store refuses (KEYS_REQUIRED)"
)


def add_keys_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--keys-env", metavar="VAR", help=KEYS_HELP)


def codec_from(args: argparse.Namespace) -> Codec | None:
    """The ``EncryptedCodec`` of ``--keys-env VAR`` or ``$DEPLOYSM_KEYS``; ``None`` when
    neither is given. A bad keyring is a usage error that never echoes the keys."""
    var = getattr(args, "keys_env", None)
    if var is None and os.environ.get(KEYS_ENV, "").strip():
        var = KEYS_ENV
    if var is None:
        return None
    from ..stores import EncryptedCodec

    try:
        return EncryptedCodec.from_env(var)
    except (ValueError, ImportError) as e:
        raise CliError(f"--keys-env {var}: {e}") from None
