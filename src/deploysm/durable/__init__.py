"""The snapshot format: encoding, decoding and the codecs.

A layer of deploysm's implementation (see docs/architecture.md); its modules are
private: import from ``deploysm`` and ``deploysm.stores``.
"""
