"""The ``deploysm`` command.

A layer of deploysm's implementation (see docs/architecture.md); its modules are
private: import from ``deploysm`` and ``deploysm.stores``.
"""
