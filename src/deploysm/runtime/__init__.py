"""Many machines at once: the worker, its claims, leases and inboxes.

A layer of deploysm's implementation (see docs/architecture.md); its modules are
private: import from ``deploysm`` and ``deploysm.stores``.
"""
