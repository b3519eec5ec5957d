"""What every ``deploysm`` subcommand shares: the registry of commands, the error a
user can fix, human output, and loading a TARGET (``module:attribute``)."""

from __future__ import annotations

import argparse
import importlib
import inspect
import os
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from ..core._config import StateMachineConfig
from ..core._errors import ErrorCode
from ..core._printable import printable

__all__ = ["COMMANDS", "CliError", "Command", "command", "load_config", "one_line", "say"]

EXAMPLE_TARGET = "deploysm.examples.blue_green:blue_green_config"


class CliError(Exception):
    """A problem the user can fix; printed as one coded line, no traceback."""

    def __init__(self, message: str, exit_code: int = 2, code: str = ErrorCode.USAGE) -> None:
        super().__init__(message)
        self.exit_code = exit_code
        self.code = code


@dataclass(frozen=True, slots=True)
class Command:
    name: str
    help: str
    configure: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]


COMMANDS: dict[str, Command] = {}


def command(
    name: str, help: str, configure: Callable[[argparse.ArgumentParser], None]
) -> Callable[[Callable[[argparse.Namespace], int]], Callable[[argparse.Namespace], int]]:
    """Register ``run`` as the subcommand ``name``; ``configure`` adds its arguments."""

    def register(run: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
        COMMANDS[name] = Command(name, help, configure, run)
        return run

    return register


# -- TARGET: module:attribute naming a config, a mapping or a factory of one


def load_config(target: str) -> StateMachineConfig[Any, Any, Any] | Mapping[str, Any]:
    """Import ``module:attr`` (``attr`` may be dotted) and return the config it names."""
    module_name, sep, attr = target.partition(":")
    if not sep or not module_name or not attr:
        raise CliError(f"TARGET must look like module:attribute, e.g. {EXAMPLE_TARGET}")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())  # like `python -m`: modules next to you load
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        if e.name is not None and module_name.startswith(e.name):
            raise CliError(
                f"module {module_name!r} not found; check the name, and run from its "
                "directory or install it"
            ) from e
        raise CliError(f"importing {module_name!r} failed: {one_line(e)}") from e
    except Exception as e:
        raise CliError(f"importing {module_name!r} failed: {one_line(e)}") from e
    obj: Any = module
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise CliError(
                f"{module_name!r} has no attribute {attr!r}; name a StateMachineConfig, a "
                "mapping, or a zero-argument factory returning one"
            ) from None
    if not isinstance(obj, StateMachineConfig | Mapping) and callable(obj):
        try:
            obj = obj()
        except Exception as e:
            raise CliError(f"calling {target}() failed: {one_line(e)}") from e
        if inspect.iscoroutine(obj):
            obj.close()
            raise CliError(f"{target} is async; name a plain function returning a config")
    if not isinstance(obj, StateMachineConfig | Mapping):
        raise CliError(
            f"{target} is a {type(obj).__name__}, not a StateMachineConfig, a mapping, or a "
            "zero-argument factory returning one"
        )
    return obj


def say(*lines: str, flush: bool = False) -> None:
    """Print each of ``lines`` as one line of human output: whatever a line holds (ids,
    names, messages from the store) is shown with its control characters escaped."""
    for line in lines:
        print(printable(line), flush=flush)


def one_line(error: BaseException) -> str:
    text = " ".join(str(error).split())
    return f"{type(error).__name__}: {text}" if text else type(error).__name__
