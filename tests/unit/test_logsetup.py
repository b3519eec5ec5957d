"""The CLI's log lines: text escapes what a terminal would obey, JSON is one object."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest

from deploysm.runtime._logsetup import log_to_stderr


@pytest.fixture
def stream() -> Iterator[io.StringIO]:
    root = logging.getLogger("deploysm")
    saved = (list(root.handlers), root.level, root.propagate)
    out = io.StringIO()
    yield out
    root.handlers[:], root.level, root.propagate = saved


def _emit() -> None:
    log = logging.getLogger("deploysm.worker")
    extra = {"machine_id": "m\x1b[2J", "fields": {"attempt": 2, "why": "a\nb"}}
    log.info("moved\rforged", extra=extra)
    log.debug("not shown at info")


def test_text_lines_escape_control_characters(stream: io.StringIO) -> None:
    log_to_stderr("info", "text", stream)
    _emit()
    (line,) = stream.getvalue().splitlines()
    assert line.endswith(" INFO deploysm.worker m\\x1b[2J: moved\\rforged (attempt=2, why=a\\nb)")
    assert "\x1b" not in line and "\r" not in line


def test_json_lines_carry_the_machine_and_its_fields(stream: io.StringIO) -> None:
    log_to_stderr("debug", "json", stream)
    _emit()
    first, second = (json.loads(line) for line in stream.getvalue().splitlines())
    assert set(first) == {"ts", "level", "logger", "message", "machine_id", "fields"}
    assert first["ts"].endswith("Z")
    assert (first["level"], first["logger"]) == ("info", "deploysm.worker")
    assert first["message"] == "moved\rforged" and first["machine_id"] == "m\x1b[2J"
    assert first["fields"] == {"attempt": 2, "why": "a\nb"}
    assert second["level"] == "debug" and second["machine_id"] is None
