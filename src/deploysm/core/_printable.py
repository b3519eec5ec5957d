"""Text that is safe to show on a terminal.

Machine ids, workflow and state names, event types, error messages and journal data
come from whoever wrote to the store; printed raw, an ESC sequence clears the screen,
a CR or a newline forges a line, a bidi override reorders what follows. Everything
the CLI shows people goes through :func:`printable`; its JSON goes through
:func:`json_text`, which stays valid JSON with the true values.

A character is escaped when Python's ``str.isprintable()`` says it is not printable:
the C0 and C1 controls and DEL, format characters (bidi overrides and isolates,
zero-width characters), line and paragraph separators, spaces other than ' ',
lone surrogates, private-use and unassigned code points.
"""

from __future__ import annotations

import json
from typing import Any

__all__ = ["json_text", "printable"]


def printable(value: object) -> str:
    """``str(value)`` with each character that is not printable written as a Python
    escape (``\\x1b``, ``\\n``, ``\\u202e``, ``\\udc80``): one line, no control."""
    text = value if isinstance(value, str) else str(value)
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else _escape(c) for c in text)


def _escape(c: str) -> str:
    return c.encode("unicode_escape").decode("ascii")


def json_text(value: Any) -> str:
    """Indented JSON of ``value`` (``str()`` of what JSON cannot hold) in which every
    character that is not printable, other than the line breaks of the indentation,
    is a ``\\uXXXX`` escape: ``json.loads`` gives back the same values."""
    text = json.dumps(value, indent=2, ensure_ascii=False, default=str)
    lines = text.split("\n")  # JSON escapes newlines inside strings: these are layout
    if all(line.isprintable() for line in lines):
        return text
    return "\n".join(
        line if line.isprintable() else "".join(map(_json_char, line)) for line in lines
    )


def _json_char(c: str) -> str:
    if c.isprintable():
        return c
    code = ord(c)
    if code > 0xFFFF:  # outside the BMP: a JSON escape is a UTF-16 surrogate pair
        code -= 0x10000
        return f"\\u{0xD800 + (code >> 10):04x}\\u{0xDC00 + (code & 0x3FF):04x}"
    return f"\\u{code:04x}"
