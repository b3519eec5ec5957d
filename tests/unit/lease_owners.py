"""Lease owner ids for tests that simulate a crashed process in-process."""

from __future__ import annotations

from deploysm.engine._lease import new_owner

__all__ = ["dead_owner"]


def dead_owner() -> str:
    """A lease owner id as a killed process of this host leaves it behind: its
    process no longer exists, so ``resume()`` may take the lease over at once."""
    host, _, nonce = new_owner().rpartition("/")
    prefix, _, _pid = host.rpartition("/")
    with open("/proc/sys/kernel/pid_max", encoding="ascii") as f:
        dead_pid = int(f.read()) + 1  # no process can have it
    return f"{prefix}/{dead_pid}/{nonce}"
