"""The lease of a machine run without a worker, so that two processes never run one
machine's effect at once.

Such a machine writes through its config's store. The save of an intent (a transition
in flight) takes the machine's lease for this machine object (its *owner* id) with
``lease_ms``; the store refuses it (``LEASE_HELD``) while another owner's lease is live,
and returns the fencing token. Every later save carries the token (so once another
owner took the machine over, they are refused with ``LEASE_LOST``); the save that
settles the transition frees the lease. While an effect runs longer than a third of
the lease, a heartbeat renews it. ``resume()`` and ``resolve()`` take the lease before
they touch anything: a live lease of another owner refuses them with ``LEASE_HELD``
and leaves the machine as it was; an expired one is taken over (the token grows).

An owner id names the host, the boot, the PID namespace and the process: a lease held
by a process of this host that no longer exists is taken over at once (the process
was killed; nobody will renew it), without waiting for it to expire.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import uuid
from functools import cache
from typing import TYPE_CHECKING, Any

from ..core._clock import SYSTEM_CLOCK
from ..core._errors import ErrorCode, StateMachineError
from ..durable._json import cache_for
from ..durable._snapshot import SerializableState
from ..stores._base import JournalRecord
from ..stores._runtime import Lease, LeaseHeld, holds_lease
from ._timeouts import uninterrupted

if TYPE_CHECKING:
    from ._machine import Machine

__all__ = ["applies", "new_owner", "owner_is_dead", "save", "stop_heartbeat", "take_over"]

logger = logging.getLogger("deploysm")


@cache
def _host() -> str:
    """This host, boot and PID namespace (``?`` where the system does not say)."""
    try:
        with open("/proc/sys/kernel/random/boot_id", encoding="ascii") as f:
            boot = f.read().strip()
        pidns = os.readlink("/proc/self/ns/pid")
    except OSError:
        boot = pidns = "?"
    return f"{socket.gethostname()}/{boot}/{pidns}"


def new_owner() -> str:
    """A unique owner id: ``host/boot/pidns/pid/nonce``."""
    return f"{_host()}/{os.getpid()}/{uuid.uuid4().hex[:12]}"


def owner_is_dead(owner: str | None) -> bool:
    """Whether ``owner`` was a process of this host (same boot, same PID namespace)
    that no longer exists. Anything unsure (another host, this process, a process
    that exists or may exist) is alive."""
    if owner is None or "?" in _host():
        return False
    prefix, _, _nonce = owner.rpartition("/")
    prefix, _, pid_text = prefix.rpartition("/")
    if prefix != _host() or not pid_text.isdigit():
        return False
    pid = int(pid_text)
    if pid == os.getpid() or pid <= 1:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except (OSError, OverflowError):
        return False
    return False


def applies(m: Machine[Any, Any, Any]) -> bool:
    """Whether ``m`` leases itself: it writes to its config's runtime store (not
    through a worker's claim)."""
    d = m._def
    return d.leases and m._store is d.store


async def save(
    m: Machine[Any, Any, Any],
    snap: SerializableState,
    journal: list[JournalRecord],
    expected: int | None,
    *,
    evict: str | None = None,
) -> None:
    """``store.save`` of ``snap`` with the machine's lease: it holds the lease after the
    write if ``snap`` has a transition in flight, else it no longer does."""
    try:
        token = await m._store.save(
            snap,
            expected_version=expected,
            journal=journal,
            workflow=m._workflow,
            token=m._lease_token,
            lease=lease_for(m, evict),
        )
    except StateMachineError as e:
        if e.code == ErrorCode.LEASE_LOST:  # another owner took the machine over
            settle(m, None, False)
        raise
    settle(m, token, holds_lease(snap))


async def take_over(
    m: Machine[Any, Any, Any], snap: SerializableState, journal: list[JournalRecord]
) -> None:
    """Write ``snap`` (one version past the stored one) taking the machine's lease,
    before ``resume``/``resolve`` touch anything. Another owner's live lease refuses it
    with ``LEASE_HELD`` (a stale version with ``CONFLICT``), nothing written; the lease
    of a process of this host that no longer exists is taken at once."""
    snap._json = cache_for(m)
    try:
        await save(m, snap, journal, snap.version - 1)
    except LeaseHeld as e:
        if not owner_is_dead(e.holder):
            raise
        logger.warning(
            "machine %s: taking over the lease of %s, a process that no longer exists",
            m.machine_id,
            e.holder,
        )
        await save(m, snap, journal, snap.version - 1, evict=e.holder)


def lease_for(m: Machine[Any, Any, Any], evict: str | None = None) -> Lease:
    owner = m._lease_owner
    if owner is None:
        owner = m._lease_owner = new_owner()
    return Lease(owner, m._def.lease_ms, evict)


def settle(m: Machine[Any, Any, Any], token: int | None, holds: bool) -> None:
    """After a save with a lease: hold ``token`` (and keep the heartbeat going) or not."""
    if holds:
        m._lease_token = token
        if m._heartbeat is None:
            d = m._def
            loop = asyncio.get_running_loop()
            if d.clock is SYSTEM_CLOCK:  # a timer costs less than a task, and most
                # effects end before it fires
                m._heartbeat = loop.call_later(d.lease_ms / 3000.0, _first_beat, m, loop)
            else:
                m._heartbeat = loop.create_task(_beat(m, wait=True))
    else:
        m._lease_token = None
        stop_heartbeat(m)


def stop_heartbeat(m: Machine[Any, Any, Any]) -> None:
    beat = m._heartbeat
    if beat is not None:
        m._heartbeat = None
        beat.cancel()


def _first_beat(m: Machine[Any, Any, Any], loop: asyncio.AbstractEventLoop) -> None:
    m._heartbeat = loop.create_task(_beat(m, wait=False))


async def _beat(m: Machine[Any, Any, Any], wait: bool) -> None:
    """Renew the lease every third of it, while it is held; a lost lease makes the
    machine stale (its next save would be refused anyway)."""
    d = m._def
    store = m._store
    interval = d.lease_ms / 3000.0
    while True:
        if wait:
            await d.clock.sleep(interval)
        wait = True
        token, owner = m._lease_token, m._lease_owner
        if token is None or owner is None:
            return
        try:  # not cut short by a stop: a driver may not like a query cancelled
            lost = await uninterrupted(store.renew(owner, {m.machine_id: token}, d.lease_ms))
        except StateMachineError as e:
            logger.warning("machine %s: lease renewal failed: %s", m.machine_id, e)
            continue
        if lost and m._lease_token == token:
            logger.warning("machine %s: lost its lease to another owner", m.machine_id)
            m._stale = True
            m._lease_token = None
            m._heartbeat = None
            return
