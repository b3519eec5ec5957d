"""The worker: runs machines out of a store, many workers sharing one store.

A worker claims machines that have work (a lease with a fencing token), runs
each one's pending events in order through the engine, and gives the lease
back. Every write the engine makes carries the token, so a worker that lost its
lease (paused, partitioned, too slow) cannot write anything; another worker
takes the machine over once the lease expires and resumes it.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import signal
import socket
from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, datetime
from typing import Any

from ..core._config import StateMachineConfig
from ..core._definition import Definition, compile_config
from ..core._errors import ErrorCode, StateMachineError
from ..engine._engine import StateMachine
from ..engine._runner import HandBack
from ..stores._runtime import Claim, RuntimeStore
from . import _worker_exits as exits
from ._backoff import Backoff, unfixable
from ._leased import LeasedStore

__all__ = ["Worker"]

logger = logging.getLogger("deploysm.worker")

WorkflowFactory = Callable[[], StateMachineConfig[Any, Any, Any]]


class Worker:
    """Run machines out of ``store``; ``workflows`` maps a workflow name to a zero-argument
    factory returning its ``StateMachineConfig`` (a config object itself is accepted too).

    ``concurrency`` bounds the machines (and so the effects) running at once;
    ``lease_ms`` is how long a claim lasts without renewal (renewed every third of it).
    """

    def __init__(
        self,
        store: RuntimeStore,
        workflows: Mapping[str, WorkflowFactory | StateMachineConfig[Any, Any, Any]],
        *,
        concurrency: int = 16,
        worker_id: str | None = None,
        lease_ms: int = 30_000,
        poll_ms: int = 1_000,
    ) -> None:
        if concurrency < 1:
            raise ValueError("concurrency must be >= 1")
        if lease_ms < 30:
            raise ValueError("lease_ms must be >= 30")
        self.store = store
        self.workflows = dict(workflows)
        self._names = frozenset(self.workflows)
        self.concurrency = concurrency
        self.worker_id = worker_id or f"{socket.gethostname()}:{os.getpid()}:{id(self):x}"
        self.lease_ms = lease_ms
        self.poll_s = poll_ms / 1000.0
        self._definitions: dict[str, Definition] = {}
        self._running: dict[str, tuple[asyncio.Task[None], LeasedStore, Any]] = {}
        self._stopping = False
        self._stopped = asyncio.Event()
        self._wake: asyncio.Event | None = None
        self.processed = 0
        # riding out a failing store (see _backoff); _sleep is replaced in tests
        self._sleep: Callable[[float], Awaitable[None]] = asyncio.sleep
        self._claim_backoff = Backoff()
        self._write_backoff = Backoff()
        self._write_pause = 0.0
        self._stop_asked = asyncio.Event()

    # ------------------------------------------------------------------ public

    async def run(self) -> None:
        """Claim and run machines until :meth:`stop` or SIGTERM/SIGINT; then stop claiming,
        let each running machine finish the transition it is in, and give leases back."""
        await self.store.open()
        self._stopping = False
        self._stop_asked.clear()
        self._wake = asyncio.Event()
        loop = asyncio.get_running_loop()
        installed = self._install_signals(loop)
        renewer = loop.create_task(self._renew_forever())
        logger.info(
            "worker %s started: workflows %s, concurrency %d, lease %d ms",
            self.worker_id,
            ", ".join(sorted(self.workflows)),
            self.concurrency,
            self.lease_ms,
        )
        await exits.log_waits(self.store, self.worker_id, self._names)
        try:
            while not self._stopping:
                if self._write_pause:  # a machine's write failed: give the store time
                    await self._pause(self._write_pause)
                    self._write_pause = 0.0
                try:
                    claimed = await self._claim()
                except StateMachineError as e:
                    await self._pause(self._claim_failed(e))
                    continue
                self._claim_backoff.reset()
                if claimed:
                    continue
                await self._idle_wait()
            await self._drain()
        finally:
            renewer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await renewer
            for sig in installed:
                loop.remove_signal_handler(sig)
            self._stopped.set()
            logger.info("worker %s stopped after %d runs", self.worker_id, self.processed)

    async def stop(self) -> None:
        """Ask :meth:`run` to finish: no new claims, running transitions complete (a
        machine waiting out a retry delay is handed back at once, due at its deadline)."""
        if not self._stopping:
            logger.info(
                "worker %s stopping: no new claims; %d running machine(s) finish their "
                "transition and go back",
                self.worker_id,
                len(self._running),
            )
        self._stopping = True
        self._stop_asked.set()
        if self._wake is not None:
            self._wake.set()

    async def run_until_idle(self) -> int:
        """Run until no machine has work left (for tests and batch jobs); returns how many
        machine runs were processed."""
        await self.store.open()
        self._stopping = False
        start = self.processed
        await exits.log_waits(self.store, self.worker_id, self._names)
        renewer = asyncio.get_running_loop().create_task(self._renew_forever())
        try:
            while True:
                claimed = await self._claim()
                if not claimed and not self._running:
                    return self.processed - start
                if self._running:
                    await asyncio.wait(
                        [t for t, _, _ in self._running.values()],
                        return_when=asyncio.FIRST_COMPLETED,
                    )
        finally:
            renewer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await renewer

    # ------------------------------------------------------------------ store failures

    def _claim_failed(self, error: StateMachineError) -> float:
        """The delay before claiming again; raises when retrying cannot fix ``error``."""
        fix = unfixable(error)
        if fix is not None:
            logger.critical("worker %s stops: %s; %s", self.worker_id, error.message, fix)
            raise StateMachineError(
                f"worker {self.worker_id} stops: {error.message}; retrying cannot fix this: {fix}",
                error.code,
            ) from error
        if error.code not in _RETRIED:
            raise error
        delay = self._claim_backoff.next()
        logger.warning(
            "claiming failed (%s, try %d), retrying in %.2f s: %s",
            error.code,
            self._claim_backoff.failures,
            delay,
            error.message,
        )
        return delay

    def _write_failed(self, machine_id: str, error: BaseException | None) -> None:
        """A machine's durable write failed (``None``: one succeeded): the worker waits
        before its next claim, longer each time in a row."""
        if error is None:
            self._write_backoff.reset()
            return
        self._write_pause = max(self._write_pause, self._write_backoff.next())
        logger.warning(
            "machine %s: the store did not take a write (%s); its event stays in its inbox, "
            "claiming again in %.2f s: %s",
            machine_id,
            getattr(error, "code", type(error).__name__),
            self._write_pause,
            error,
        )

    async def _pause(self, delay: float) -> None:
        """Sleep ``delay`` seconds, or less if ``stop()`` comes first."""
        await _first(self._sleep(delay), self._stop_asked.wait())

    # ------------------------------------------------------------------ claiming

    async def _claim(self) -> int:
        free = self.concurrency - len(self._running)
        if free <= 0:
            return 0
        claims = await self.store.claim(
            self.worker_id, limit=free, lease_ms=self.lease_ms, workflows=self._names
        )
        started = 0
        for claim in claims:
            running = self._running.get(claim.machine_id)
            if running is not None and not running[0].done() and not running[1].released:
                # our own lease ran out under a slow run: keep running it
                running[1].token = claim.token
                continue
            if claim.taken_from is not None and claim.taken_from != self.worker_id:
                exits.log_takeover(claim)
            view = LeasedStore(self.store, claim.token, self._stop_asked)
            task = asyncio.get_running_loop().create_task(self._run_claim(claim, view))
            self._running[claim.machine_id] = (task, view, _PENDING)
            task.add_done_callback(functools.partial(self._done, claim.machine_id))
            started += 1
        return started

    def _done(self, machine_id: str, task: asyncio.Task[None]) -> None:
        entry = self._running.get(machine_id)
        if entry is not None and entry[0] is task:
            del self._running[machine_id]
        self.processed += 1
        if not task.cancelled() and task.exception() is not None:
            logger.error("machine %s: %s", machine_id, task.exception())
        if self._wake is not None:
            self._wake.set()

    async def _idle_wait(self) -> None:
        assert self._wake is not None
        self._wake.clear()
        if len(self._running) >= self.concurrency:
            await self._wake.wait()
            return
        await _first(self.store.wait_for_work(self.poll_s), self._wake.wait())

    async def _drain(self) -> None:
        while self._running:
            await asyncio.wait([t for t, _, _ in self._running.values()])

    # ------------------------------------------------------------------ one machine

    def _definition(self, workflow: str) -> Definition:
        definition = self._definitions.get(workflow)
        if definition is None:
            source = self.workflows.get(workflow)
            if source is None:
                raise StateMachineError(
                    f"no workflow named {workflow!r} in this worker "
                    f"(it knows {sorted(self.workflows)})",
                    "UNKNOWN_WORKFLOW",
                )
            config = source if isinstance(source, StateMachineConfig) else source()
            definition = self._definitions[workflow] = compile_config(config)
        return definition

    async def _run_claim(self, claim: Claim, view: LeasedStore) -> None:
        try:
            await self._run_machine(claim, view)
        except HandBack:
            await exits.hand_back(self.store, claim, view, self._running[claim.machine_id][2])
        except Exception as e:
            if not exits.cannot_run(e):
                raise
            await exits.park(self.store, claim, view, self._running[claim.machine_id][2], e)

    async def _run_machine(self, claim: Claim, view: LeasedStore) -> None:
        definition = self._definition(claim.workflow)
        context = claim.context if claim.snapshot is None else {}
        sm: StateMachine[Any, Any, Any] = StateMachine(definition, context, claim.machine_id)
        new = claim.snapshot is None  # its row holds no snapshot yet: version 0
        sm.use_store(view, workflow=claim.workflow, stored_version=0 if new else None)
        task, _, _ = self._running[claim.machine_id]
        self._running[claim.machine_id] = (task, view, sm)
        if claim.snapshot is None:
            sm.note("started", workflow=claim.workflow, worker=self.worker_id)
            await _persist(sm)
        else:
            await sm.resume_from(claim.snapshot)
        if claim.cancel_requested and sm.status == "active" and sm.write_error is None:
            await _cancel(sm)
        # A failed write (the store is down, busy or full) ends the run: what it was
        # writing is not durable, so its event stays in the inbox for the next claim.
        while sm.status == "active" and not sm.stale and not self._stopping:
            if sm.write_error is not None:
                break
            if await self.store.cancel_requested(claim.machine_id):
                await _cancel(sm)
                break
            item = await self.store.next_event(claim.machine_id)
            if item is None:
                break
            view.consume(item.seq)
            try:
                await sm.dispatch(item.event)
            except StateMachineError as e:
                sm.note("event_refused", event=item.event.type, code=e.code, message=e.message)
            if sm.write_error is not None:
                break
            if view.unconsumed() and not sm.stale:  # refused: no write took the event along
                sm.note("event_refused", event=item.event.type, code="NO_TRANSITION")
                await _persist(sm)
        if not sm.stale:
            self._write_failed(claim.machine_id, sm.write_error)
        if sm.status == "needs_attention" and not sm.stale:
            exits.log_needs_attention(claim, sm)
        await sm.settle_state_timer(datetime.now(UTC))
        deadline = sm.state_deadline
        sm.stop_state_timer()  # the store's wake_at takes over: this object is done
        view.released = True
        if not sm.stale:
            await self.store.release(claim.machine_id, view.token, wake_at=deadline)

    # ------------------------------------------------------------------ leases

    async def _renew_forever(self) -> None:
        interval = self.lease_ms / 3000.0
        while True:
            await asyncio.sleep(interval)
            leases = {mid: view.token for mid, (_, view, _) in self._running.items()}
            if not leases:
                continue
            try:
                lost = await self.store.renew(self.worker_id, leases, self.lease_ms)
            except StateMachineError as e:
                logger.warning("lease renewal failed: %s", e)
                continue
            for mid in lost:
                entry = self._running.get(mid)
                view = entry[1] if entry is not None else None
                if view is not None and view.token == leases[mid] and not view.released:
                    self._abandon(mid)

    def _abandon(self, machine_id: str) -> None:
        entry = self._running.get(machine_id)
        if entry is None:
            return
        task, _, sm = entry
        logger.warning("lost the lease of %s: another worker takes it over", machine_id)
        if sm is not _PENDING:
            sm.abandon()
        task.cancel()

    def _install_signals(self, loop: asyncio.AbstractEventLoop) -> list[int]:
        installed: list[int] = []
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                loop.add_signal_handler(sig, lambda: loop.create_task(self.stop()))
            except (NotImplementedError, RuntimeError, ValueError):
                continue
            installed.append(sig)
        return installed


async def _first(*waits: Awaitable[Any]) -> None:
    """Wait until the first of ``waits`` is done; cancel the others."""
    tasks = [asyncio.ensure_future(w) for w in waits]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def _cancel(sm: StateMachine[Any, Any, Any]) -> None:
    with contextlib.suppress(StateMachineError):  # a failed write is in sm.write_error
        await sm.cancel()


async def _persist(sm: StateMachine[Any, Any, Any]) -> None:
    await sm.persist(bump=True)  # a failure is in sm.write_error


_PENDING: Any = object()
_RETRIED = (ErrorCode.STORE_UNAVAILABLE, ErrorCode.STORE_BUSY, ErrorCode.PERSISTENCE_ERROR)
