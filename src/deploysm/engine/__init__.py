"""The async driver: a machine, its effects, timeouts, hooks, persistence and recovery.

A layer of deploysm's implementation (see docs/architecture.md); its modules are
private: import from ``deploysm`` and ``deploysm.stores``.
"""
