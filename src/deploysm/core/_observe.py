"""Hooks and logging: called safely, redacted, and free when nobody listens."""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable, Mapping
from typing import Any

from ._config import Hooks
from ._redact import DEFAULT_REDACTOR, Redactor

__all__ = ["Observer"]

logger = logging.getLogger("deploysm")

_LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}


class Observer:
    """One per definition: calls hooks and emits logs for every machine of it."""

    __slots__ = ("hooks", "on_log", "redactor")

    def __init__(self, hooks: Hooks, redact_keys: tuple[str, ...] | None) -> None:
        self.hooks = hooks
        self.on_log = hooks.on_log
        self.redactor = Redactor(extra_keys=redact_keys) if redact_keys else DEFAULT_REDACTOR

    async def call(self, name: str, fn: Callable[..., Any], *args: Any) -> None:
        """Call a hook; an exception from it is logged and goes no further."""
        try:
            result = fn(*args)
            if inspect.isawaitable(result):
                await result
        except Exception as e:
            await self._hook_failed(name, e)

    async def _hook_failed(self, name: str, error: Exception) -> None:
        message = f"hook {name} raised {type(error).__name__}: {self.redactor.redact_error(error)}"
        logger.error(message)
        if self.on_log is not None and name != "on_log":
            try:
                result = self.on_log("error", message, {"hook": name})
                if inspect.isawaitable(result):
                    await result
            except Exception as e2:
                logger.error(
                    "hook on_log raised %s while reporting a hook error", type(e2).__name__
                )

    def enabled(self, level: str) -> bool:
        return self.on_log is not None or logger.isEnabledFor(_LEVELS[level])

    async def log(
        self, level: str, message: str, metadata: Mapping[str, Any] | None = None
    ) -> None:
        """Log through the stdlib logger and ``on_log``; metadata is redacted. A stdlib
        record carries the machine id and the other metadata in its ``extra``
        (``machine_id``, ``fields``; see ``_logsetup``).

        Callers check :meth:`enabled` first so nothing is formatted for nobody."""
        meta = self.redactor.redact_mapping(dict(metadata)) if metadata else {}
        text = self.redactor.redact_text(message)
        lvl = _LEVELS[level]
        if logger.isEnabledFor(lvl):
            machine_id = meta.pop("machine_id", None)
            extra = {"machine_id": machine_id, "fields": meta}
            logger.log(lvl, "%s", text, extra=extra)
            if machine_id is not None:
                meta["machine_id"] = machine_id
        if self.on_log is not None:
            await self.call("on_log", self.on_log, level, text, meta)

    def error_text(self, error: BaseException) -> str:
        text: str = self.redactor.redact_error(error)
        return text
