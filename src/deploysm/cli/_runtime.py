"""CLI subcommands of the runtime: ``migrate``, ``start``, ``send``, ``cancel``, ``prune``,
``worker``."""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
from collections.abc import Callable, Coroutine, Mapping
from datetime import timedelta
from typing import Any

from ..core._config import StateMachineConfig
from ..core._duration import describe_duration, parse_duration
from ..core._errors import ErrorCode, StateMachineError
from ..runtime._logsetup import FORMATS, LEVELS, log_to_stderr
from ..runtime._worker import Worker
from ..stores._open import migrate_store, sqlite_path
from ..stores._runtime import RuntimeStore
from ..stores._sealed import SealingStore
from ._app import add_app_arg, check_event, check_workflow
from ._base import CliError, command, say
from ._db import where, with_store
from ._keys import add_keys_arg

__all__ = ["load_app"]


def _db(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--db",
        default=os.environ.get("DEPLOYSM_DB"),
        metavar="URL",
        help="the store: a SQLite path, sqlite:///path or postgresql://... (default: $DEPLOYSM_DB)",
    )
    add_keys_arg(p)


def _json_arg(text: str | None, what: str) -> Any:
    if text is None:
        return None
    try:
        return json.loads(text)
    except ValueError as e:
        raise CliError(f"{what} is not valid JSON: {e}") from None


def _run(args: argparse.Namespace, body: Callable[[RuntimeStore], Coroutine[Any, Any, int]]) -> int:
    """Open ``--db`` (never creating a store), run ``body(store)``, close."""
    return with_store(args, body)


# -- migrate


def _configure_migrate(p: argparse.ArgumentParser) -> None:
    _db(p)
    p.add_argument(
        "--create",
        action="store_true",
        help="also create the SQLite file's missing parent directories "
        "(without it, a missing directory is an error: a typo creates nothing)",
    )


@command(
    "migrate",
    "create the store, or upgrade its schema (idempotent); the only verb that creates one",
    _configure_migrate,
)
def _migrate(args: argparse.Namespace) -> int:
    if not args.create:
        _check_parent(args.db)

    async def body(store: Any) -> int:
        applied, known = await migrate_store(store)
        at = where(store, args.db)
        if not applied:
            say(f"{at}: already up to date (schema v{known})")
        elif applied[0] == 1:
            say(f"created schema v{known} at {at}")
        else:
            say(f"upgraded schema v{applied[0] - 1} -> v{known} at {at}")
        return 0

    return with_store(args, body, create=True)


def _check_parent(url: str | None) -> None:
    path = sqlite_path(url) if url else None
    if path is not None and not path.parent.is_dir():
        raise CliError(
            f"no directory {str(path.parent)!r} for {str(path)!r}: create it, or pass "
            "--create to make it",
            code=ErrorCode.NO_STORE,
        )


# -- start / send / cancel


def _configure_start(p: argparse.ArgumentParser) -> None:
    p.add_argument("workflow", help="the workflow name a worker knows (its --app key)")
    p.add_argument("machine_id", metavar="ID")
    p.add_argument(
        "--context", metavar="JSON", default="{}", help="the machine's context, a JSON object"
    )
    add_app_arg(p)
    _db(p)


@command("start", "start a machine for the workers to run", _configure_start)
def _start(args: argparse.Namespace) -> int:
    context = _json_arg(args.context, "--context")
    if not isinstance(context, dict):
        raise CliError(
            f'--context must be a JSON object like \'{{"key": "value"}}\', not a JSON '
            f"{_json_kind(context)}: a worker runs the machine with a dict context",
            code=ErrorCode.INVALID_CONTEXT,
        )
    if args.app:
        check_workflow(load_app(args.app), args.app, args.workflow)

    async def body(store: RuntimeStore) -> int:
        try:
            await store.start(args.workflow, args.machine_id, context)
        except StateMachineError as e:
            if e.code != ErrorCode.CONFLICT:
                raise
            raise CliError(
                f"machine {args.machine_id!r} already exists: pick another ID, or look at "
                f"it with: deploysm show {args.machine_id}",
                exit_code=1,
                code=e.code,
            ) from None
        if args.app:
            say(f"started {args.machine_id} ({args.workflow})")
        else:
            say(
                f"started {args.machine_id} ({args.workflow}, unchecked: pass --app MODULE:ATTR "
                "to check the workflow name against the definitions the workers run)"
            )
        return 0

    return _run(args, body)


def _json_kind(value: Any) -> str:
    kinds = {list: "array", str: "string", bool: "boolean", int: "number", float: "number"}
    return "null" if value is None else kinds.get(type(value), type(value).__name__)


def _configure_send(p: argparse.ArgumentParser) -> None:
    p.add_argument("machine_id", metavar="ID")
    p.add_argument("event", metavar="EVENT")
    p.add_argument("--payload", metavar="JSON", help="the event's payload")
    p.add_argument(
        "--event-id",
        metavar="KEY",
        help="de-duplication key: sent twice, applied once (default: a new random key)",
    )
    add_app_arg(p)
    _db(p)


@command("send", "send an event to a machine's inbox", _configure_send)
def _send(args: argparse.Namespace) -> int:
    payload = _json_arg(args.payload, "--payload")
    app = load_app(args.app) if args.app else None

    async def body(store: RuntimeStore) -> int:
        note = None
        if app is not None:
            note = await check_event(store, app, args.app, args.machine_id, args.event)
        event: dict[str, Any] = {"type": args.event}
        if payload is not None:
            event["payload"] = payload
        added = await store.send(args.machine_id, event, event_id=args.event_id)
        if not added:
            say("already sent; ignored")
        elif app is None:
            say(
                f"sent {args.event} to {args.machine_id}: queued unchecked (pass --app "
                "MODULE:ATTR to check the event against the workflow); if the machine "
                f"refuses it, that shows in: deploysm history {args.machine_id}"
            )
        else:
            say(f"sent {args.event} to {args.machine_id}" + (f"; note: {note}" if note else ""))
        return 0

    return _run(args, body)


def _configure_cancel(p: argparse.ArgumentParser) -> None:
    p.add_argument("machine_id", metavar="ID")
    _db(p)


@command("cancel", "ask the workers to cancel a machine", _configure_cancel)
def _cancel(args: argparse.Namespace) -> int:
    async def body(store: RuntimeStore) -> int:
        await store.request_cancel(args.machine_id)
        say(f"cancel requested for {args.machine_id}")
        return 0

    return _run(args, body)


# -- prune


def _age(text: str) -> timedelta:
    try:
        return parse_duration(text)
    except StateMachineError as e:
        raise argparse.ArgumentTypeError(e.message) from None


def _configure_prune(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--older-than",
        required=True,
        type=_age,
        metavar="AGE",
        help="what is older than AGE goes: 30d, 12h, 90m or 45s",
    )
    _db(p)
    p.add_argument("--json", action="store_true", help="print the counts as JSON")


@command(
    "prune",
    "remove old journal entries of finished machines and old delivered events "
    "(never an undelivered event, nor a live machine's journal; see docs/runtime.md)",
    _configure_prune,
)
def _prune(args: argparse.Namespace) -> int:
    async def body(store: RuntimeStore) -> int:
        prune = getattr(store, "prune", None)
        if prune is None:
            raise CliError(
                f"{type(store).__name__} cannot prune", exit_code=1, code=ErrorCode.INVALID_ACTION
            )
        counts = await prune(args.older_than)
        if args.json:
            print(json.dumps({"journal": counts.journal, "inbox": counts.inbox}))
            return 0
        age = describe_duration(args.older_than)
        say(
            f"pruned {_plural(counts.journal, 'journal entry', 'journal entries')} of finished "
            f"machines and {_plural(counts.inbox, 'delivered event')} older than {age}"
        )
        return 0

    return _run(args, body)


def _plural(n: int, one: str, many: str | None = None) -> str:
    return f"{n:,} {one if n == 1 else many or one + 's'}"


# -- worker


def load_app(target: str) -> dict[str, Any]:
    """``module:attr`` naming a mapping of workflow name -> config factory (or config),
    or a single factory/config (its workflow name is the config's id)."""
    module_name, sep, attr = target.partition(":")
    if not sep or not module_name or not attr:
        raise CliError("--app must look like module:attribute, e.g. myapp.workflows:WORKFLOWS")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        obj: Any = importlib.import_module(module_name)
        for part in attr.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError) as e:
        raise CliError(f"cannot load --app {target}: {type(e).__name__}: {e}") from None
    if isinstance(obj, Mapping):
        return dict(obj)
    try:
        config = obj if isinstance(obj, StateMachineConfig) else obj() if callable(obj) else None
    except Exception as e:
        raise CliError(f"calling --app {target}() failed: {type(e).__name__}: {e}") from None
    if not isinstance(config, StateMachineConfig):
        raise CliError(f"--app {target} names neither a mapping nor a config factory")
    return {config.id: obj}


def _configure_worker(p: argparse.ArgumentParser) -> None:
    _db(p)
    p.add_argument("--app", required=True, metavar="MODULE:ATTR", help="the workflows to run")
    p.add_argument("--concurrency", type=int, default=16, metavar="N", help="machines run at once")
    p.add_argument(
        "--worker-id", metavar="NAME", help="this worker's name in leases (default: HOST:PID:N)"
    )
    p.add_argument(
        "--lease-ms", type=int, default=30_000, metavar="MS", help="how long a lease lasts"
    )
    p.add_argument(
        "--poll-ms", type=int, default=1_000, metavar="MS", help="how often to look for work"
    )
    p.add_argument(
        "--log-level",
        choices=sorted(LEVELS, key=LEVELS.__getitem__),
        default="info",
        help="what goes to stderr: info is one line per transition, retry, rollback, park "
        "and lease hand-over (default: info)",
    )
    p.add_argument(
        "--log-format",
        choices=sorted(FORMATS),
        default="text",
        help="text lines, or one JSON object per line (default: text)",
    )


@command("worker", "run machines out of the store until SIGTERM", _configure_worker)
def _worker(args: argparse.Namespace) -> int:
    workflows = load_app(args.app)
    log_to_stderr(args.log_level, args.log_format)

    async def body(store: RuntimeStore) -> int:
        if isinstance(store, SealingStore):  # no keys for an encrypted store: stop now
            await store._writable()
        worker = Worker(
            store,
            workflows,
            concurrency=args.concurrency,
            worker_id=args.worker_id,
            lease_ms=args.lease_ms,
            poll_ms=args.poll_ms,
        )
        say(
            f"worker {worker.worker_id} serving {', '.join(sorted(workflows))} "
            f"from {args.db} (concurrency {args.concurrency})",
            flush=True,
        )
        await worker.run()
        say(f"worker {worker.worker_id} stopped after {worker.processed} runs", flush=True)
        return 0

    return _run(args, body)
