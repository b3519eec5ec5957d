"""Three deployment workflows, written with deploysm.

* :mod:`deploysm.examples.simple` - validate, deploy, complete (or fail).
* :mod:`deploysm.examples.blue_green` - prepare green, shift traffic 10%..100%,
  monitor five health checks; on a bad health check route all traffic back to blue
  and tear green down.
* :mod:`deploysm.examples.canary` - 10%, 50%, 100% canary steps judged against
  error-rate and latency thresholds; abort back to 0% on bad metrics.

Each module offers a config factory (``*_config(...)``) whose sources of
randomness and outside effects are injectable, a ``new_*_context(...)``
helper, and an async driver (``run_*``) that takes a machine and advances it to
a final state as an operator would. Sleeps go through :func:`deploysm.sleep`, so
they run on the machine's clock (virtual time under
:class:`deploysm.testing.VirtualClock`).
"""

from ._support import Progress

__all__ = ["Progress"]
