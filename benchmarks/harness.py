"""Shared shapes of the benchmarks that ``make bench`` runs.

Every benchmark module defines ``add_args(parser)`` (optional) and
``measure(args) -> Result``, and ends with ``harness.main(measure, __doc__,
add_args)``. Run alone it prints its table; under ``benchmarks/run.py`` it is
started as its own process with ``--json`` (so memory figures are not disturbed
by other benchmarks) and prints one JSON line as its last line of stdout.

A benchmark checks that each system really did the work it is credited with
(effect calls, rows written, machines finished) with :func:`check` before it
returns a figure; a failed check aborts the benchmark with a non-zero exit.
Progress goes to stderr.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.metadata
import json
import os
import sys
from collections.abc import Callable
from typing import Any


@dataclasses.dataclass
class Row:
    """One system's figure; ``ratio`` is relative to the benchmark's baseline row."""

    system: str
    value: float
    unit: str
    ratio: float | None = None
    note: str = ""


@dataclasses.dataclass
class Target:
    """One of the project's targets, as measured in this run."""

    text: str
    value: float
    goal: str
    met: bool


@dataclasses.dataclass
class Result:
    id: str
    title: str
    rows: list[Row] = dataclasses.field(default_factory=list)
    targets: list[Target] = dataclasses.field(default_factory=list)
    setup: str = ""
    skipped: str | None = None
    versions: dict[str, str] = dataclasses.field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self))

    @classmethod
    def from_json(cls, text: str) -> Result:
        raw = json.loads(text)
        raw["rows"] = [Row(**r) for r in raw["rows"]]
        raw["targets"] = [Target(**t) for t in raw["targets"]]
        return cls(**raw)


class WorkNotDone(SystemExit):
    """A system did not do the work a figure would credit it with."""


def check(condition: bool, message: str) -> None:
    if not condition:
        raise WorkNotDone(f"work check failed: {message}")


def at_least(text: str, value: float, goal: float) -> Target:
    return Target(text, value, f">= {goal:g}", value >= goal)


def at_most(text: str, value: float, goal: float) -> Target:
    return Target(text, value, f"<= {goal:g}", value <= goal)


def version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def progress(message: str) -> None:
    print(f"  {message}", file=sys.stderr, flush=True)


def pg_url(args: argparse.Namespace) -> str | None:
    return getattr(args, "pg", None) or os.environ.get("DEPLOYSM_TEST_PG") or None


def fmt(value: float, unit: str) -> str:
    if unit in ("bytes", "B/machine", "bytes/machine"):
        return f"{value:,.0f} B"
    if unit == "s":
        return f"{value:.2f} s"
    if unit == "ms":
        return f"{value:.2f} ms"
    if unit == "MiB":
        return f"{value:,.1f} MiB"
    return f"{value:,.0f} {unit}"


def render(result: Result) -> str:
    lines = [f"{result.id}: {result.title}"]
    if result.setup:
        lines.append(f"  {result.setup}")
    if result.skipped:
        lines.append(f"  skipped: {result.skipped}")
        return "\n".join(lines)
    width = max((len(r.system) for r in result.rows), default=10) + 2
    for r in result.rows:
        ratio = f"{r.ratio:8.2f}x" if r.ratio is not None else " " * 9
        note = f"  {r.note}" if r.note else ""
        lines.append(f"  {r.system:<{width}}{fmt(r.value, r.unit):>22}{ratio}{note}")
    for t in result.targets:
        mark = "met" if t.met else "MISSED"
        lines.append(f"  target {t.text}: {t.value:.2f} ({t.goal}) {mark}")
    return "\n".join(lines)


def main(
    measure: Callable[[argparse.Namespace], Result],
    doc: str | None,
    add_args: Callable[[argparse.ArgumentParser], None] | None = None,
) -> None:
    parser = argparse.ArgumentParser(description=(doc or "").strip().splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller sizes, for a smoke run")
    parser.add_argument("--pg", default=None, help="PostgreSQL URL (default $DEPLOYSM_TEST_PG)")
    parser.add_argument("--json", action="store_true", help="print the result as one JSON line")
    if add_args is not None:
        add_args(parser)
    args = parser.parse_args()
    result: Any = measure(args)
    if args.json:
        print(result.to_json(), flush=True)
    else:
        print(render(result), flush=True)
