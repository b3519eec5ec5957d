"""``deploysm demo``: the seed's blue/green deployment, end to end, with live progress.

Time runs ``speed`` times faster than real time (:class:`ScaledClock`), so the
deployment's 1 s traffic steps and 60 s health-check intervals pass quickly
while the printed times stay in simulated seconds. The simulated load balancer
rejects one traffic update (first attempt, at 60%) to show a rollback and retry.

Structure, for resumable runs later: :func:`build_machine` makes the machine,
:func:`deploysm.examples.blue_green.run_blue_green` advances it from wherever it
is, :func:`report` prints the outcome.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, TextIO

from ._config import Hooks
from ._engine import create_state_machine
from ._types import Event, State
from .examples.blue_green import (
    BlueGreenContext,
    BlueGreenMachine,
    blue_green_config,
    new_blue_green_context,
    run_blue_green,
)

__all__ = ["DEFAULT_SEED", "DEFAULT_SPEED", "DemoOptions", "ScaledClock", "run_demo"]

DEFAULT_SPEED = 50.0  # about 320 simulated seconds -> about 6.5 s of real time
DEFAULT_SEED = 5  # its five simulated health checks all pass


class ScaledClock:
    """A clock ``factor`` times faster than real time, starting at ``start``."""

    __slots__ = ("_factor", "_start", "_t0")

    def __init__(self, factor: float, start: datetime | None = None) -> None:
        if not factor > 0:
            raise ValueError(f"speed factor must be > 0, got {factor!r}")
        self._factor = factor
        self._start = start if start is not None else datetime.now(UTC)
        self._t0 = time.monotonic()

    @property
    def elapsed(self) -> float:
        """Simulated seconds since ``start``."""
        return (time.monotonic() - self._t0) * self._factor

    def now(self) -> datetime:
        return self._start + timedelta(seconds=self.elapsed)

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(max(0.0, seconds) / self._factor)


@dataclass(frozen=True, slots=True)
class DemoOptions:
    speed: float = DEFAULT_SPEED
    seed: int = DEFAULT_SEED
    fail_health: bool = False


_STYLES = {"state": "1;32", "retry": "33", "error": "1;31", "time": "2", "rollback": "35"}


class Printer:
    """Live progress lines: the machine's hooks plus the effects' progress callback."""

    def __init__(self, out: TextIO, clock: ScaledClock, color: bool) -> None:
        self.out = out
        self.clock = clock
        self.start = clock.now()
        self.color = color
        self._came_from = ""

    def style(self, text: str, kind: str) -> str:
        code = _STYLES.get(kind)
        return f"\x1b[{code}m{text}\x1b[0m" if self.color and code else text

    def stamp(self, at: datetime | None = None) -> str:
        s = max(0.0, ((at or self.clock.now()) - self.start).total_seconds())
        return f"{int(s // 60):02d}:{s % 60:04.1f}"

    def line(self, label: str, text: str, kind: str = "", at: datetime | None = None) -> None:
        stamp = self.style(f"[{self.stamp(at)}]", "time")
        print(f"{stamp} {self.style(f'{label:<8}', kind)} {text}", file=self.out, flush=True)

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
        self.line("error", f"still in {state.name}: {error}", "error")

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


def build_machine(options: DemoOptions, clock: ScaledClock, printer: Printer) -> BlueGreenMachine:
    """The demo deployment: seeded randomness, a flaky simulated load balancer."""
    health_rng = random.Random(options.seed)  # apart from the engine's draws
    glitched: list[int] = []

    def route_traffic(ctx: BlueGreenContext, pct: int) -> bool:
        if pct == 60 and not glitched:
            glitched.append(pct)
            raise ConnectionError("load balancer returned 503 (simulated)")
        return True

    def health_check(ctx: BlueGreenContext) -> bool:
        if options.fail_health:
            return ctx["health_checks_passed"] < 2  # the third check fails
        return health_rng.random() > 0.1  # the seed's 90% success rate

    def progress(kind: str, message: str) -> None:
        printer.line(kind, message, kind)

    config = blue_green_config(
        health_check=health_check,
        route_traffic=route_traffic,
        progress=progress,
        clock=clock,
        random=random.Random(options.seed),
        hooks=printer.hooks(),
    )
    context = new_blue_green_context(42, "checkout:v1.4.2", "checkout:v1.5.0")
    return create_state_machine(config, context, machine_id="demo-deployment-42")


def report(machine: BlueGreenMachine, printer: Printer, real_s: float) -> None:
    """The history (each state, time, attempts, message) and a one-line summary."""
    out = printer.out
    visits = [*machine.get_history(), machine.get_state()]
    print("\nHistory", file=out)
    print(f"  {'state':<18} {'time':>8}  {'attempts':>8}  message", file=out)
    for s in visits:
        data = s.data
        payload = data.get("payload")
        reason = payload.get("reason") if isinstance(payload, Mapping) else None
        message = data.get("message") or reason or ""
        stamp = printer.stamp(s.timestamp)
        print(f"  {s.name:<18} {stamp:>8}  {s.attempts:>8}  {message}".rstrip(), file=out)
    m = machine.get_metrics()
    final = machine.get_state().name
    sim = m.total_duration_ms / 1000.0
    retries = "retry" if m.total_retries == 1 else "retries"
    summary = (
        f"{final} after {int(sim // 60)}m{sim % 60:04.1f}s of simulated time ({real_s:.1f} s "
        f"real), {m.total_transitions} transitions, {m.total_retries} {retries}"
    )
    kind = "state" if final == "completed" else "error"
    print(f"\nSummary: {printer.style(summary, kind)}", file=out, flush=True)


def _use_color(out: TextIO) -> bool:
    isatty = getattr(out, "isatty", None)
    return bool(isatty and isatty()) and "NO_COLOR" not in os.environ


async def run_demo(options: DemoOptions, out: TextIO | None = None) -> int:
    """Run the demo; 0 when the deployment completed, 1 otherwise (rolling_back)."""
    stream = out if out is not None else sys.stdout
    logger = logging.getLogger("deploysm")
    if not logger.handlers:  # the hooks print; no "last resort" copies on stderr
        logger.addHandler(logging.NullHandler())
    clock = ScaledClock(options.speed)
    printer = Printer(stream, clock, _use_color(stream))
    machine = build_machine(options, clock, printer)
    printer.start = machine.get_state().timestamp
    per_minute = 60.0 / options.speed
    print(
        "deploysm demo: blue/green deployment of checkout v1.4.2 (blue) -> v1.5.0 (green)\n"
        f"seed {options.seed}, speed {options.speed:g}x "
        f"(1 simulated minute = {per_minute:.2f} s); times are simulated mm:ss\n",
        file=stream,
        flush=True,
    )
    initial = machine.get_state()
    printer.line("state", f"{initial.name:<18}(initial)", "state", at=initial.timestamp)
    t0 = time.monotonic()
    await run_blue_green(machine)
    report(machine, printer, time.monotonic() - t0)
    return 0 if machine.get_state().name == "completed" else 1
