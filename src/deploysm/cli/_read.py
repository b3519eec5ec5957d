"""What the CLI's store-reading subcommands share (``ls``, ``show``, ``history``,
``resolve``, ``unpark``): their arguments, opening the store, and how a machine is
described."""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable, Coroutine, Sequence
from datetime import UTC, datetime
from typing import Any

from ..core._errors import ErrorCode
from ..core._printable import json_text, printable
from ..durable._snapshot import SerializableState
from ..stores import MachineInfo, Store
from ._base import CliError
from ._db import with_store
from ._keys import add_keys_arg


def _store_args(p: argparse.ArgumentParser, *, machine: bool = True, json_: bool = True) -> None:
    if machine:
        p.add_argument("machine_id", metavar="ID", help="the machine's id")
    p.add_argument(
        "--db",
        default=os.environ.get("DEPLOYSM_DB"),
        metavar="URL",
        help="the store: a SQLite file path, sqlite:///rel.db, sqlite:////abs.db, "
        "postgresql://... (default: $DEPLOYSM_DB)",
    )
    add_keys_arg(p)
    if json_:
        p.add_argument("--json", action="store_true", help="machine-readable JSON output")


def _with_store(args: argparse.Namespace, body: Callable[[Store], Coroutine[Any, Any, int]]) -> int:
    """Open ``--db`` (exit 2 if that fails; a missing store is never created), run
    ``body``, close. Errors of the store or the engine after that are one line, exit 1."""
    return with_store(args, body)


def _not_found(args: argparse.Namespace) -> CliError:
    return CliError(
        f"machine {args.machine_id!r} not found in {args.db}",
        exit_code=1,
        code=ErrorCode.UNKNOWN_MACHINE,
    )


async def _info(store: Store, machine_id: str) -> MachineInfo | None:
    return next((i for i in await store.list() if i.machine_id == machine_id), None)


def _time(at: datetime) -> str:
    return at.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]


def _table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    rows = [[printable(cell) for cell in row] for row in rows]
    widths = [max(len(r[i]) for r in [headers, *rows]) for i in range(len(headers))]
    lines = [
        "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in [headers, *rows]
    ]
    return "\n".join(line.rstrip() for line in lines)


_dumps = json_text


_ERROR_WIDTH = 60


def _short(error: str | None) -> str:
    """A last error for the table: one line, escaped, at most ``_ERROR_WIDTH`` long."""
    if not error:
        return ""
    text = printable(" ".join(error.split()))
    return text if len(text) <= _ERROR_WIDTH else text[: _ERROR_WIDTH - 1] + "…"


def _workflow(i: MachineInfo) -> str:
    """The workflow's name, with the definition id when it differs (a machine that has
    not run yet has none)."""
    if i.workflow and i.definition_id and i.workflow != i.definition_id:
        return f"{i.workflow} ({i.definition_id})"
    return i.workflow or i.definition_id


def _iso(at: datetime) -> str:
    return at.astimezone(UTC).isoformat()


def _describe(snap: SerializableState, info: MachineInfo | None) -> list[str]:
    """The lines of ``show``, one string each (``say`` escapes what they hold)."""
    s = snap.current_state
    lines = [
        f"machine      {snap.machine_id}",
        f"workflow     {_workflow(info) if info else snap.definition_id}"
        f"  (fingerprint {snap.fingerprint[:12]})",
        f"status       {snap.status}",
        f"state        {s.name}  (entered {_time(s.timestamp)} UTC)",
        f"version      {snap.version}"
        + (f"  (updated {_time(info.updated_at)} UTC)" if info else ""),
    ]
    f = snap.in_flight
    lines.append(
        f"in flight    {f'{f.from_state} -> {f.to_state} on {f.event.type}' if f else 'none'}"
    )
    if f is not None:
        lines.append(f"{'':13}attempt {f.attempt}, phase {f.phase}, started {_time(f.started_at)}")
        if f.next_retry_at is not None:
            lines.append(f"{'':13}next attempt at {_time(f.next_retry_at)}")
        lines.append(f"{'':13}idempotency key {f.idempotency_key}")
    e = snap.last_error
    where = f" in {e['state']}" if e and e.get("state") else ""
    code = f" ({e['code']})" if e and e.get("code") else ""
    error = f"{e.get('type', 'Error')}{code}{where}: {e.get('message', '')}" if e else "none"
    lines.append(f"last error   {error}")
    lines.append(f"path         {' -> '.join([h.name for h in snap.history] + [s.name])}")
    lines.append(f"committed effects{'' if snap.committed_effects else '  none'}")
    lines.extend(
        f"  v{c.version} {c.state}  (from {c.from_state} on {c.event}, key {c.idempotency_key})"
        for c in snap.committed_effects
    )
    lines.append("context")
    lines.extend(f"  {line}" for line in _dumps(snap.context).split("\n"))
    return lines
