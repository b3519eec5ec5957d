"""Types, configuration, the compiled definition, validation, retry math and the
pure rules of a step: no await, no I/O.

A layer of deploysm's implementation (see docs/architecture.md); its modules are
private: import from ``deploysm`` and ``deploysm.stores``.
"""

from . import _config, _validation

_config.CHECKS.append(_validation.check_errors)  # every config is checked as it is built
