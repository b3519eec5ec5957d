"""``deploysm demo``: the example blue/green deployment, end to end, with live progress.

Waits run ``speed`` times faster than real time (:class:`ScaledClock`), so the
deployment's 1 s traffic steps and 60 s health-check intervals pass quickly. The
machine records wall-clock times (the store holds real times); the printed times are
simulated seconds (:class:`Timeline`: real time the demo ran, times ``speed``). The
simulated load balancer rejects one traffic update (first attempt, at 60%) to show
an attempt rolled back and retried. With ``--fail-health`` the third health check
fails and the deployment is rolled back: all traffic back on blue, green torn down,
final state ``rolled_back``.

The machine lives in a SQLite file (``.deploysm/demo.db`` by default) as
``demo-blue-green-N``. A run first looks at the newest one: still active (the last run
was interrupted by Ctrl-C or killed) -> it is resumed (:meth:`StateMachine.resume`
finishes the interrupted transition: the non-idempotent traffic switch is rolled back
and retried) and driven on; finished -> a new one, ``N + 1``, starts. Simulated time
goes on from the last journal entry: the time the demo was down is left out.
:func:`build_machine` makes the machine,
:func:`deploysm.examples.blue_green.run_blue_green` advances it from wherever it is,
:func:`report` prints the outcome.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import random
import re
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TextIO

from ..core._config import Hooks, StateMachineConfig
from ..core._effects import call_maybe_async
from ..core._errors import StateMachineError
from ..core._retry import RetryPolicy
from ..core._types import Event, State
from ..durable._snapshot import SerializableState
from ..engine._engine import create_state_machine
from ..examples.blue_green import (
    BlueGreenContext,
    BlueGreenMachine,
    blue_green_config,
    new_blue_green_context,
    run_blue_green,
)
from ..stores import Codec, MachineInfo, Store, open_store
from ._demo_time import ScaledClock, Timeline, mmss, pauses

__all__ = [
    "DEFAULT_DB",
    "DEFAULT_SEED",
    "DEFAULT_SPEED",
    "DemoOptions",
    "DemoSetupError",
    "ScaledClock",
    "Timeline",
    "run_demo",
]

DEFAULT_SPEED = 50.0  # about 320 simulated seconds -> about 6.5 s of real time
DEFAULT_SEED = 5  # its five simulated health checks all pass
DEFAULT_DB = ".deploysm/demo.db"
ID_PREFIX = "demo-blue-green"
_ID = re.compile(re.escape(ID_PREFIX) + r"-([0-9]+)")
FINISHED = ("completed", "rolled_back")  # the final states: exit status 0


class DemoSetupError(Exception):
    """The demo's store could not be opened (a bad ``--db``)."""


@dataclass(frozen=True, slots=True)
class DemoOptions:
    speed: float = DEFAULT_SPEED
    seed: int = DEFAULT_SEED
    fail_health: bool = False
    db: str = DEFAULT_DB
    fresh: bool = False
    codec: Codec | None = None  # e.g. EncryptedCodec: what the store is opened with


_STYLES = {
    "state": "1;32",
    "retry": "33",
    "error": "1;31",
    "time": "2",
    "rollback": "35",
    "teardown": "35",
}


class Printer:
    """Live progress lines: the machine's hooks plus the effects' progress callback."""

    def __init__(self, out: TextIO, timeline: Timeline, color: bool) -> None:
        self.out = out
        self.timeline = timeline
        self.color = color
        self._came_from = ""

    def style(self, text: str, kind: str) -> str:
        code = _STYLES.get(kind)
        return f"\x1b[{code}m{text}\x1b[0m" if self.color and code else text

    def stamp(self, at: datetime | None = None) -> str:
        return mmss(self.timeline.seconds(at or datetime.now(UTC)))

    def line(self, label: str, text: str, kind: str = "", at: datetime | None = None) -> None:
        stamp = self.style(f"[{self.stamp(at)}]", "time")
        self.write(f"{stamp} {self.style(f'{label:<8}', kind)} {text}")

    def write(self, text: str) -> None:
        try:
            print(text, file=self.out, flush=True)
        except BrokenPipeError:  # `deploysm demo | head` stopped reading: deploy on quietly
            _to_devnull(self.out)

    # -- hooks
    def on_transition(self, a: State[Any], b: State[Any], ev: Event[Any], ctx: Any) -> None:
        self._came_from = f"(from {a.name} on {ev.type})"

    def on_state_enter(self, state: State[Any], ctx: BlueGreenContext) -> None:
        traffic = f"  traffic to green: {ctx['traffic_percentage']}%"
        text = f"{state.name:<18}{self._came_from}{traffic}"
        self.line("state", text, "state", at=state.timestamp)

    def on_retry(self, attempt: int, error: BaseException, state: State[Any], ctx: Any) -> None:
        self.line("retry", f"attempt {attempt} of {state.name} failed: {error}", "retry")

    def on_error(self, error: BaseException, state: State[Any], ctx: Any) -> None:
        self.line("error", f"{error} (in {state.name})", "error")

    def on_log(self, level: str, message: str, meta: Mapping[str, Any]) -> None:
        if "delay_ms" in meta:  # the retry warning: the delay is known only here
            delay = float(meta["delay_ms"]) / 1000.0
            text = f"waiting {delay:.1f} s before attempt {int(meta.get('attempt', 0)) + 1}"
            self.line("retry", text, "retry")
        elif "hook" in meta or message.startswith("transition refused"):
            self.line(level, message, "error")

    def hooks(self) -> Hooks:
        return Hooks(
            on_state_enter=self.on_state_enter,
            on_transition=self.on_transition,
            on_retry=self.on_retry,
            on_error=self.on_error,
            on_log=self.on_log,
        )


def build_machine(
    options: DemoOptions,
    clock: ScaledClock,
    printer: Printer,
    *,
    machine_id: str = f"{ID_PREFIX}-1",
    store: Store | None = None,
    engine_random: random.Random | None = None,
) -> BlueGreenMachine:
    """The demo deployment: seeded randomness, a load balancer that rejects the first
    attempt of a traffic switch once it reaches 60%."""
    health_rng = random.Random(options.seed)  # apart from the engine's draws
    attempt = [0]  # the running traffic switch's attempt number

    def route_traffic(ctx: BlueGreenContext, pct: int) -> bool:
        if pct == 60 and attempt[0] == 1:
            raise ConnectionError("load balancer returned 503 (simulated)")
        return True

    def health_check(ctx: BlueGreenContext) -> bool:
        if options.fail_health:
            return ctx["health_checks_passed"] < 2  # the third check fails
        return health_rng.random() > 0.1  # passes 90% of the time

    def progress(kind: str, message: str) -> None:
        printer.line(kind, message, kind)

    config = blue_green_config(
        health_check=health_check,
        route_traffic=route_traffic,
        progress=progress,
        clock=clock,
        random=engine_random or random.Random(options.seed),
        hooks=printer.hooks(),
    )
    effects = dict(config.effects or {})
    switch = effects["switching_traffic"]

    async def counted(ctx: BlueGreenContext, state: State[Any]) -> Any:
        attempt[0] = state.attempts
        return await call_maybe_async(switch.execute, ctx, state)

    effects["switching_traffic"] = dataclasses.replace(switch, execute=counted, name=switch.label)
    config.effects = effects
    config.store = store
    context = new_blue_green_context(42, "checkout:v1.4.2", "checkout:v1.5.0")
    return create_state_machine(config, context, machine_id=machine_id)


def report(machine: BlueGreenMachine, printer: Printer, real_s: float, resumed: bool) -> None:
    """The history (each state, time, attempts, message) and a one-line summary of how
    the deployment ended."""
    visits = [*machine.get_history(), machine.get_state()]
    lines = ["\nHistory", f"  {'state':<18} {'time':>8}  {'attempts':>8}  message"]
    for s in visits:
        data = s.data
        payload = data.get("payload")
        reason = payload.get("reason") if isinstance(payload, Mapping) else None
        message = data.get("message") or reason or ""
        stamp = printer.stamp(s.timestamp)
        lines.append(f"  {s.name:<18} {stamp:>8}  {s.attempts:>8}  {message}".rstrip())
    m = machine.get_metrics()
    final = machine.get_state()
    end = final.timestamp if machine.status != "active" else datetime.now(UTC)
    sim = printer.timeline.seconds(end)
    retries = "retry" if m.total_retries == 1 else "retries"
    real = f"{real_s:.1f} s real" + (" since resuming" if resumed else "")
    took = (
        f"after {int(sim // 60)}m{sim % 60:04.1f}s of simulated time ({real}), "
        f"{m.total_transitions} transitions, {m.total_retries} {retries}"
    )
    ctx = machine.get_context()
    green, blue = ctx["green_version"], ctx["blue_version"]
    if final.name == "completed":
        summary = f"completed {took}; all traffic on green ({green})"
    elif final.name == "rolled_back":
        why = visits[-2].data.get("payload") if len(visits) > 1 else None
        reason = why.get("reason") if isinstance(why, Mapping) else None
        summary = (
            f"rolled back {took}: {reason or 'the deployment failed'}; all traffic on blue "
            f"({blue}), green ({green}) torn down"
        )
    else:
        summary = f"not finished: {machine.status} in {final.name} {took}"
    kind = "state" if final.name in FINISHED else "error"
    lines.append(f"\nSummary: {printer.style(summary, kind)}")
    printer.write("\n".join(lines))


def _to_devnull(out: TextIO) -> None:
    """Point ``out``'s file descriptor at /dev/null: later writes and the final flush
    succeed instead of raising ``BrokenPipeError`` again."""
    try:
        null = os.open(os.devnull, os.O_WRONLY)
        os.dup2(null, out.fileno())
        os.close(null)
    except (OSError, ValueError):
        pass


def _use_color(out: TextIO) -> bool:
    isatty = getattr(out, "isatty", None)
    return bool(isatty and isatty()) and "NO_COLOR" not in os.environ


async def run_demo(options: DemoOptions, out: TextIO | None = None) -> int:
    """Run (or resume) the demo; 0 when the deployment finished (``completed``, or
    ``rolled_back``: traffic back on blue, green torn down), 1 when it did not."""
    stream = out if out is not None else sys.stdout
    logger = logging.getLogger("deploysm")
    if not logger.handlers:  # the hooks print; no "last resort" copies on stderr
        logger.addHandler(logging.NullHandler())
    try:
        store = open_store(options.db, codec=options.codec)
        await store.open()
    except (StateMachineError, ValueError, OSError) as e:
        raise DemoSetupError(f"cannot open --db {options.db}: {e}") from None
    try:
        return await _run(store, options, stream)
    finally:
        await store.close()


async def _run(store: Store, options: DemoOptions, out: TextIO) -> int:
    notes: list[str] = []
    number, last = _newest(await store.list())
    snap: SerializableState | None = None
    if last is not None and last.status == "active":
        if options.fresh:
            notes.append(await _cancel(store, last, options))
        else:
            try:
                snap = await store.load(last.machine_id)
            except StateMachineError as e:
                notes.append(f"cannot resume {last.machine_id} ({e}); starting a new one")
    elif last is not None:
        why = "needs an operator" if last.status == "needs_attention" else "finished"
        end = last.status if last.state == last.status else f"{last.status}, in {last.state}"
        notes.append(f"the last demo {why} ({end}); starting a new one")
    machine_id = last.machine_id if snap is not None and last else f"{ID_PREFIX}-{number + 1}"
    seed, last_kind = random.Random(options.seed), ""
    timeline = Timeline(options.speed, datetime.now(UTC))
    if snap is not None:  # simulated time goes on from the last durable record
        entries = await store.journal(machine_id)
        last_kind = entries[-1].kind if entries else ""
        timeline = Timeline(options.speed, _first_time(snap), pauses(entries, timeline.first))
        seed = random.Random(f"{options.seed}:{snap.version}")  # fresh idempotency keys
    printer = Printer(out, timeline, _use_color(out))
    machine = build_machine(
        options,
        ScaledClock(options.speed),
        printer,
        machine_id=machine_id,
        store=store,
        engine_random=seed,
    )
    if snap is None:
        timeline.first = machine.get_state().timestamp
    per_minute = 60.0 / options.speed
    printer.write(
        "\n".join(
            [
                "deploysm demo: blue/green deployment of checkout v1.4.2 (blue) -> v1.5.0 "
                f"(green)\nseed {options.seed}, speed {options.speed:g}x (1 simulated minute = "
                f"{per_minute:.2f} s); times shown are simulated mm:ss\nkept in {options.db} "
                f"as {machine_id} (with wall-clock times): interrupt it (Ctrl-C, kill -9) and "
                "run it again to resume\n",
                *notes,
            ]
        )
    )
    t0 = time.monotonic()
    if snap is None:
        initial = machine.get_state()
        printer.line("state", f"{initial.name:<18}(initial)", "state", at=initial.timestamp)
    else:
        printer.write(_resume_plan(snap, machine.config, last_kind))
        result = await machine.resume()
        failed = result is not None and not result.success and machine.status == "active"
        if failed and result and "HEALTH_FAIL" in machine.available_events():
            await machine.dispatch(
                {"type": "HEALTH_FAIL", "payload": {"reason": str(result.error)}}
            )
    await run_blue_green(machine)
    if machine.status == "needs_attention":
        printer.line("error", f"needs an operator: deploysm show {machine_id} --db {options.db}")
    report(machine, printer, time.monotonic() - t0, resumed=snap is not None)
    return 0 if machine.get_state().name in FINISHED else 1


def _newest(infos: list[MachineInfo]) -> tuple[int, MachineInfo | None]:
    """The highest demo number in the store and that machine (0, None: none yet)."""
    best: tuple[int, MachineInfo | None] = (0, None)
    for info in infos:
        match = _ID.fullmatch(info.machine_id)
        if match and int(match.group(1)) > best[0]:
            best = (int(match.group(1)), info)
    return best


def _first_time(snap: SerializableState) -> datetime:
    visits = snap.metrics.states
    return visits[0].entered_at if visits else snap.current_state.timestamp


async def _cancel(store: Store, info: MachineInfo, options: DemoOptions) -> str:
    """``--fresh``: cancel the unfinished deployment so that only one is active."""
    clock = ScaledClock(options.speed)
    printer = Printer(sys.stdout, Timeline(options.speed, clock.now()), False)
    old = build_machine(options, clock, printer, machine_id=info.machine_id, store=store)
    try:
        snap = await store.load(info.machine_id)
        if snap is None:
            raise StateMachineError("it has no snapshot")
        await old.rehydrate(snap)
        await old.cancel()
    except StateMachineError as e:
        return f"--fresh: could not cancel {info.machine_id} ({e}); left as it is"
    return f"--fresh: cancelled the unfinished {info.machine_id} (it was at {info.state})"


def _resume_plan(
    snap: SerializableState, config: StateMachineConfig[Any, Any, Any], last_kind: str
) -> str:
    """What was interrupted and what resume() is about to do about it."""
    head = (
        f"resuming deployment {snap.machine_id} from state {snap.current_state.name} "
        f"(version {snap.version}"
    )
    done = " -> ".join([s.name for s in snap.history] + [snap.current_state.name])
    f = snap.in_flight
    if f is None:
        undone = "; its interrupted attempt was rolled back" if last_kind == "interrupted" else ""
        return f"{head}, nothing in flight{undone})\ndone so far: {done}"
    step = f"{f.from_state} -> {f.to_state}"
    eff = (config.effects or {}).get(f.to_state)
    policy = config.retry_policy
    tries = policy.max_attempts if isinstance(policy, RetryPolicy) else 1
    if f.phase == "retry_wait":
        plan = f"waiting out the rest of the retry delay, then attempt {f.attempt} of {tries}"
        now = f"attempt {f.attempt} of {step} was waiting to start"
    else:
        now = f"attempt {f.attempt} of {step} was running"
        if eff is not None and eff.reconcile is not None:
            plan = f"asking the effect whether attempt {f.attempt} took effect"
        elif eff is None or eff.idempotent:
            plan = f"running attempt {f.attempt} again (idempotent effect, same idempotency key)"
        elif eff.rollback is None:
            plan = f"attempt {f.attempt} is not safe to repeat: it needs an operator"
        elif f.attempt < tries:
            plan = (
                f"rolling back the interrupted attempt {f.attempt}, then retrying "
                f"(attempt {f.attempt + 1} of {tries})"
            )
        else:
            plan = f"rolling back the interrupted attempt {f.attempt}; no attempts left: it fails"
    return f"{head}, {now} when it stopped)\ndone so far: {done}\nresumed: {plan}"
