"""CLI subcommands that read a store and repair its machines: ``ls``, ``show``,
``history`` and ``resolve`` (``unpark`` is in ``_park``; what they share in ``_read``).

Exit codes as in :mod:`._cli`: 0 ok; 1 the machine is unknown, its snapshot cannot be
read (``INVALID_SNAPSHOT``), or the operation failed; 2 usage errors, including a
``--db`` that names no store or one that cannot be opened.
"""

from __future__ import annotations

import argparse
import dataclasses
import getpass
from collections.abc import Mapping
from typing import Any

from ..core._config import StateMachineConfig, coerce_config
from ..core._errors import ErrorCode, StateMachineError
from ..durable._snapshot import STATUSES
from ..engine._engine import create_state_machine
from ..stores import JournalEntry, MachineInfo, Store
from ..stores._parking import PARKED
from ._base import CliError, command, one_line, say
from ._read import (
    _describe,
    _dumps,
    _info,
    _iso,
    _not_found,
    _short,
    _store_args,
    _table,
    _time,
    _with_store,
    _workflow,
)

__all__ = ["summarize"]

_ACTIONS = ("retry", "mark_succeeded", "mark_failed")


# -- ls


def _configure_ls(p: argparse.ArgumentParser) -> None:
    _store_args(p, machine=False)
    p.add_argument("--status", choices=STATUSES, help="only machines with this status")


@command("ls", "list the machines in a store (--status to filter)", _configure_ls)
def _ls(args: argparse.Namespace) -> int:
    async def body(store: Store) -> int:
        infos = await store.list(args.status)
        if args.json:
            print(_dumps([_ls_json(i) for i in infos]))
            return 0
        if not infos:
            say("no machines" + (f" with status {args.status}" if args.status else ""))
            return 0
        rows = [
            (
                i.machine_id,
                _workflow(i),
                i.status,
                i.state,
                str(i.version),
                _time(i.updated_at),
                _short(i.last_error),
            )
            for i in infos
        ]
        headers = ("ID", "WORKFLOW", "STATUS", "STATE", "VERSION", "UPDATED (UTC)", "LAST ERROR")
        print(_table(headers, rows))
        return 0

    return _with_store(args, body)


def _ls_json(i: MachineInfo) -> dict[str, Any]:
    """A machine as ``ls --json`` gives it: its workflow named as in the table, its last
    error in full."""
    return {
        **dataclasses.asdict(i),
        "workflow": i.workflow or i.definition_id or None,
        "updated_at": _iso(i.updated_at),
    }


# -- show


@command("show", "show one machine: state, status, in-flight transition, context", _store_args)
def _show(args: argparse.Namespace) -> int:
    async def body(store: Store) -> int:
        info = await _info(store, args.machine_id)
        try:
            snap = await store.load(args.machine_id)
        except StateMachineError as e:
            if e.code != ErrorCode.INVALID_SNAPSHOT or info is None or info.status != PARKED:
                raise
            from ._park import show_parked

            return await show_parked(store, info, e, args.json)
        if snap is None and info is None:
            raise _not_found(args)
        if info is not None and info.status == PARKED and (snap is None or snap.status != PARKED):
            from ._park import show_unrunnable

            return await show_unrunnable(store, info, snap, args.json)
        if args.json:
            out: dict[str, Any] = {"machine_id": args.machine_id}
            if info is not None:
                out.update(workflow=info.workflow, updated_at=_iso(info.updated_at))
            out["snapshot"] = snap.to_dict() if snap is not None else None
            print(_dumps(out))
        elif snap is None:
            assert info is not None
            say(f"machine      {info.machine_id}", f"workflow     {_workflow(info)}")
            say(f"status       {info.status} (started; it has not run yet)")
        else:
            say(*_describe(snap, info))
        return 0

    return _with_store(args, body)


# -- history


@command("history", "a machine's journal as a timeline (time, version, what happened)", _store_args)
def _history(args: argparse.Namespace) -> int:
    async def body(store: Store) -> int:
        entries = await store.journal(args.machine_id)
        if not entries and await _info(store, args.machine_id) is None:
            raise _not_found(args)
        if args.json:
            keys = ("seq", "version", "kind", "at", "data")
            rows = [(e.seq, e.version, e.kind, _iso(e.at), e.data) for e in entries]
            print(_dumps([dict(zip(keys, row, strict=True)) for row in rows]))
            return 0
        say(f"{args.machine_id}: {len(entries)} journal entries (times in UTC)")
        lines = [(_time(e.at), str(e.version), e.kind, summarize(e)) for e in entries]
        if lines:
            print(_table(("TIME", "V", "KIND", "WHAT HAPPENED"), lines))
        return 0

    return _with_store(args, body)


_SUMMARY = {
    "intent": "{source} -> {to} on {event} (attempt {attempt})",
    "attempt": "attempt {attempt} starts",
    "attempt_failed": "attempt {attempt} failed: {err}",
    "retry_scheduled": "retry in {delay} ms (attempt {attempt} next)",
    "rollback": "rolled back attempt {attempt}",
    "rollback_failed": "rollback of attempt {attempt} failed: {err}",
    "committed": "committed {source} -> {to}{on}{tries}",
    "failed": "{source} -> {to} failed after {attempts} attempt(s): {err}",
    "resumed": "resumed after a restart: attempt {attempt} was {phase}",
    "reconciled": "reconcile says attempt {attempt} is {verdict}",
    "reconcile_failed": "reconcile failed: {err}",
    "needs_attention": "needs attention: attempt {attempt} was interrupted and cannot be "
    "re-run by itself",
    "resolved": "resolved: {action} by {who}{why}",
    "interrupted": "interrupted during attempt {attempt} of {source} -> {to}",
    "completed": "completed in {state}",
    "cancelled": "cancelled in {state}",
    "machine_failed": "machine failed: {err}",
    "started": "started as workflow {workflow}",
    "event_refused": "event {event} refused ({code})",
    "compensated": "compensated {state} (key {key})",
    "compensation_failed": "compensation of {state} failed (key {key})",
    "unreadable": "parked: its snapshot cannot be read: {message}",
    "unparked": "unparked by an operator: {status} again",
    "unrunnable": "parked: the worker cannot run it: {message}",
}


class _Fields(dict[str, Any]):
    def __missing__(self, key: str) -> str:
        return "?"


def summarize(entry: JournalEntry) -> str:
    """One short line saying what a journal entry records."""
    d: Mapping[str, Any] = entry.data
    template = _SUMMARY.get(entry.kind)
    if template is None:
        return ", ".join(f"{k}={v}" for k, v in d.items())
    tries = d.get("attempts") or 0
    fields = _Fields(
        d,
        err=_err(d),
        delay=f"{float(d.get('delay_ms') or 0):,.0f}",
        on=f" on {d['event']}" if d.get("event") else "",
        tries=f" ({tries} attempt{'s' if tries != 1 else ''})" if tries else "",
        who=d.get("by") or "an operator",
        why=f" ({d['reason']})" if d.get("reason") else "",
    )
    return template.format_map(fields)


def _err(d: Mapping[str, Any]) -> str:
    text = " ".join(str(d.get("message") or "").split())
    if len(text) > 200:
        text = text[:199] + "…"
    name = d.get("error") or d.get("type") or "Error"
    return f"{name}: {text}" if text else str(name)


# -- resolve


def _configure_resolve(p: argparse.ArgumentParser) -> None:
    p.add_argument("machine_id", metavar="ID", help="a machine in needs_attention")
    p.add_argument(
        "action",
        choices=_ACTIONS,
        help="retry: run the interrupted effect again (same idempotency key); "
        "mark_succeeded: commit without running it; mark_failed: record the failure",
    )
    p.add_argument(
        "--app",
        metavar="MODULE:ATTR",
        help="the workflows: a mapping of workflow/definition id -> config factory, "
        "or one factory (required)",
    )
    p.add_argument("--by", metavar="NAME", help="who decided (default: your user name)")
    p.add_argument("--reason", metavar="TEXT", help="why, for the journal")
    _store_args(p, machine=False, json_=False)


@command("resolve", "take a machine out of needs_attention, as an operator", _configure_resolve)
def _resolve(args: argparse.Namespace) -> int:
    if not args.app:
        raise CliError("resolve needs --app MODULE:ATTR naming the workflow registry")
    from ._runtime import load_app

    try:
        app = load_app(args.app)
    except CliError:
        raise
    except Exception as e:  # a factory that raised while naming its workflow
        raise CliError(f"cannot load --app {args.app}: {one_line(e)}") from None
    by = args.by or _user()

    async def body(store: Store) -> int:
        snap = await store.load(args.machine_id)
        if snap is None:
            raise _not_found(args)
        if snap.status != "needs_attention":
            raise CliError(
                f"machine {args.machine_id!r} is {snap.status}, not needs_attention: "
                "nothing to resolve",
                exit_code=1,
                code=ErrorCode.INVALID_ACTION,
            )
        info = await _info(store, args.machine_id)
        config = _pick(app, args.app, info.workflow if info else None, snap.definition_id)
        sm = create_state_machine(
            dataclasses.replace(config, store=store), {}, machine_id=args.machine_id
        )
        try:
            await sm.resume()
            result = await sm.resolve(args.action, by=by, reason=args.reason)
        finally:
            sm.stop_state_timer()
        f = snap.in_flight
        step = f"{f.from_state} -> {f.to_state}" if f is not None else "the machine"
        head = f"resolved {args.machine_id} ({args.action} by {by or 'an operator'})"
        now = f"now {sm.status} in {sm.get_state().name} (version {sm.version})"
        done = {"retry": "ran again and committed", "mark_succeeded": "committed without running"}
        if result is None or result.success or args.action == "mark_failed":
            say(f"{head}: {step} {done.get(args.action, 'recorded as failed')}; {now}")
            return 0
        error = one_line(result.error) if result.error else "unknown error"
        again = " again" if args.action == "retry" else ""
        say(f"{head}: {step} failed{again}: {error}; {now}")
        return 1

    return _with_store(args, body)


def _pick(
    app: Mapping[str, Any], target: str, workflow: str | None, definition_id: str
) -> StateMachineConfig[Any, Any, Any]:
    """The config for a stored machine: by its workflow name, its definition id, or the
    first factory whose config has that id."""
    keys = [k for k in (workflow, definition_id) if k is not None and k in app]
    sources = [app[k] for k in keys] + [v for k, v in app.items() if k not in keys]
    for source in sources:
        try:
            made = source() if callable(source) else source
        except Exception as e:
            raise CliError(f"--app {target}: a factory failed: {one_line(e)}") from None
        config, problems = coerce_config(made)
        if config is not None and config.id == definition_id:
            if problems:
                raise CliError(f"--app {target}: config {definition_id!r}: {problems[0]}")
            return config
    raise CliError(
        f"--app {target} has no workflow whose config id is {definition_id!r} "
        f"(it has {', '.join(sorted(map(str, app))) or 'none'})"
    )


def _user() -> str | None:
    try:
        return getpass.getuser()
    except Exception:
        return None
