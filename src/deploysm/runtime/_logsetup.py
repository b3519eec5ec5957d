"""How the CLI worker logs: one line per record on stderr, as text or as JSON.

The library itself stays silent (``deploysm`` has a ``NullHandler``); only the CLI
installs this. A record about one machine carries ``machine_id`` and ``fields`` (a
mapping) in its ``extra``; the engine, the worker and the stores log that way.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, TextIO

from ..core._printable import printable

__all__ = ["LEVELS", "FORMATS", "JsonFormatter", "TextFormatter", "log_to_stderr"]

LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}


def _ts(record: logging.LogRecord) -> str:
    at = datetime.fromtimestamp(record.created, UTC)
    return at.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _fields(record: logging.LogRecord) -> dict[str, Any]:
    fields = getattr(record, "fields", None)
    return dict(fields) if isinstance(fields, Mapping) else {}


def _error(record: logging.LogRecord) -> str | None:
    if record.exc_info is None or record.exc_info[1] is None:
        return None
    error = record.exc_info[1]
    return f"{type(error).__name__}: {error}"


class TextFormatter(logging.Formatter):
    """``2026-12-04T15:31:58.361Z INFO deploysm.worker m1: a -> b on NEXT (attempts=1)``;
    every character that is not printable is escaped, so a record is one line."""

    def format(self, record: logging.LogRecord) -> str:
        text = record.getMessage()
        machine = getattr(record, "machine_id", None)
        if machine is not None:
            text = f"{machine}: {text}"
        fields = _fields(record)
        if fields:
            text += " (" + ", ".join(f"{k}={v}" for k, v in fields.items()) + ")"
        error = _error(record)
        if error is not None:
            text += f" [{error}]"
        return printable(f"{_ts(record)} {record.levelname} {record.name} {text}")


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ``ts``, ``level``, ``logger``, ``message``,
    ``machine_id`` (or null) and ``fields``."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": _ts(record),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
            "machine_id": getattr(record, "machine_id", None),
            "fields": _fields(record),
        }
        error = _error(record)
        if error is not None:
            out["error"] = error
        return json.dumps(out, default=str)  # ASCII only: no control character gets out


FORMATS: dict[str, type[logging.Formatter]] = {"text": TextFormatter, "json": JsonFormatter}


def log_to_stderr(level: str = "info", fmt: str = "text", stream: TextIO | None = None) -> None:
    """Send the ``deploysm`` loggers' records at ``level`` and above to stderr, one line
    each (``fmt``: ``text`` or ``json``), and only there."""
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(FORMATS[fmt]())
    root = logging.getLogger("deploysm")
    root.addHandler(handler)
    root.setLevel(LEVELS[level])
    root.propagate = False
