"""The ``deploysm`` command line.

Each subcommand is one small function registered with :func:`command`; it gets
the parsed arguments and returns the exit code. Add a subcommand by writing a
``configure`` function (its arguments) and a ``run`` function. Exit codes: 0 ok,
1 the operation failed (invalid config, a demo deployment that did not finish),
2 usage error (bad arguments, a TARGET that cannot be loaded), 130 interrupted. Every
error is one line on stderr: ``deploysm VERB: error: CODE: message``, CODE an
``ErrorCode`` (``USAGE`` for bad arguments).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import textwrap
from collections.abc import Mapping, Sequence
from typing import Any

from .. import __version__
from ..core._config import StateMachineConfig, coerce_config
from ..core._errors import ErrorCode, StateMachineError
from ..core._printable import printable
from ..core._validation import ValidationReport, validate
from . import _park, _runtime, _store  # noqa: F401  (register their subcommands)
from ._base import COMMANDS, EXAMPLE_TARGET, CliError, command, load_config, one_line, say

__all__ = ["CliError", "main", "say"]  # CliError and say live in _base

# -- demo


DEMO_HELP = (
    "run an example blue/green deployment with live progress, kept in a SQLite file: "
    "interrupt it (Ctrl-C, kill -9) and run it again to resume"
)
DEMO_EPILOG = """\
The deployment is stored as demo-blue-green-N in --db (default .deploysm/demo.db in
the current directory). Each run looks at the newest one: unfinished -> it resumes
from where it stopped (an interrupted traffic switch is rolled back and retried);
finished -> demo-blue-green-N+1 starts. Inspect them with:
  deploysm ls --db .deploysm/demo.db
  deploysm history demo-blue-green-1 --db .deploysm/demo.db

exit status: 0 when the deployment finished: completed, or rolled back (the
deployment failed, and traffic went back to blue and green was torn down, as the
workflow is designed to do; with --fail-health this is the expected end); 1 when it
did not finish (it needs an operator, or the rollback itself failed); 130 when
interrupted.
"""


def _configure_demo(p: argparse.ArgumentParser) -> None:
    from ._demo import DEFAULT_DB, DEFAULT_SEED, DEFAULT_SPEED

    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.description = textwrap.fill(DEMO_HELP, 80)
    p.epilog = DEMO_EPILOG
    p.add_argument(
        "--speed",
        type=_positive_float,
        default=DEFAULT_SPEED,
        metavar="FACTOR",
        help=f"run time FACTOR times faster than real time (default {DEFAULT_SPEED:g}: the "
        "deployment's ~5.5 simulated minutes take ~6.5 s; 1 = real time)",
    )
    p.add_argument(
        "--seed",
        type=int,
        default=DEFAULT_SEED,
        metavar="N",
        help=f"seed the simulated health checks and retry jitter (default {DEFAULT_SEED}, "
        "whose health checks pass; each check fails with 10%% probability)",
    )
    p.add_argument(
        "--fail-health",
        action="store_true",
        help="make the third health check fail: the deployment is rolled back (traffic back "
        "to blue, green torn down) and ends in rolled_back (exit 0)",
    )
    p.add_argument(
        "--db",
        default=DEFAULT_DB,
        metavar="PATH",
        help=f"the SQLite file (or store URL) the deployment is kept in (default {DEFAULT_DB}; "
        "$DEPLOYSM_DB is not used)",
    )
    p.add_argument(
        "--fresh",
        action="store_true",
        help="start a new deployment even if the last one is unfinished (it is cancelled)",
    )
    from ._keys import add_keys_arg

    add_keys_arg(p)


@command("demo", DEMO_HELP, _configure_demo)
def _demo(args: argparse.Namespace) -> int:
    from ..core._errors import StateMachineError
    from ._demo import DEFAULT_DB, DemoOptions, DemoSetupError, run_demo
    from ._keys import codec_from

    options = DemoOptions(
        codec=codec_from(args),
        speed=args.speed,
        seed=args.seed,
        fail_health=args.fail_health,
        db=args.db,
        fresh=args.fresh,
    )
    again = "make demo" if args.db == DEFAULT_DB else f"deploysm demo --db {args.db}"
    try:
        return asyncio.run(run_demo(options))
    except KeyboardInterrupt:
        print(f"\ninterrupted; run `{again}` again to resume", flush=True)
        return 130
    except DemoSetupError as e:
        raise CliError(str(e)) from None
    except StateMachineError as e:
        raise CliError(str(e), exit_code=1, code=e.code) from None


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a finite number > 0, got {text!r}")
    return value


# -- graph


def _configure_graph(p: argparse.ArgumentParser) -> None:
    p.add_argument("target", metavar="TARGET", help=f"module:attribute, e.g. {EXAMPLE_TARGET}")
    p.add_argument("--format", choices=("mermaid", "dot"), default="mermaid", help="the notation")
    p.add_argument(
        "--state", metavar="NAME", help="highlight this state as the current one (default: none)"
    )


@command("graph", "print a workflow as a Mermaid or Graphviz DOT diagram", _configure_graph)
def _graph(args: argparse.Namespace) -> int:
    from ..core._diagram import to_dot, to_mermaid

    config = load_config(args.target)
    report = validate(config)
    if not report.ok:
        raise CliError(
            f"{args.target} is not a valid config ({len(report.errors)} error(s)); "
            f"run: deploysm validate {args.target}",
            exit_code=1,
            code=ErrorCode.INVALID_CONFIG,
        )
    if args.state is not None:
        cfg, _ = coerce_config(config)
        states = list(cfg.states) if cfg is not None else []
        if args.state not in states:
            raise CliError(f"--state {args.state!r} is not one of: {', '.join(states)}")
    render = to_dot if args.format == "dot" else to_mermaid
    say(*render(config, current_state=args.state).removesuffix("\n").split("\n"))
    return 0


# -- validate


def _configure_validate(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "target",
        metavar="TARGET",
        help=f"module:attribute, e.g. {EXAMPLE_TARGET}: a config, a factory of one, or "
        "(as worker --app takes) a mapping of workflow name -> config or factory",
    )


@command(
    "validate",
    "check a workflow config, or each workflow of a mapping: errors (exit 1) and warnings",
    _configure_validate,
)
def _validate(args: argparse.Namespace) -> int:
    try:
        config: Any = load_config(args.target)
    except CliError as e:  # a StateMachineConfig refused as it was built: list why
        problems = _refused(e.__cause__)
        if problems is None:
            raise
        return 0 if _validate_one(args.target, None, "", problems) else 1
    workflows = _workflow_mapping(config)
    if workflows is None:
        return 0 if _validate_one(args.target, config, "") else 1
    if not workflows:
        raise CliError(f"{args.target} is an empty mapping: no workflow to validate")
    ok = True
    for name, source in workflows.items():
        where = f"{args.target}[{name!r}]"
        try:
            made = source() if callable(source) else source
        except Exception as e:
            problems = _refused(e)
            if problems is not None:
                ok = _validate_one(where, None, "  ", problems) and ok
                continue
            say(f"{where}: error: calling its factory failed: {one_line(e)}")
            ok = False
            continue
        ok = _validate_one(where, made, "  ") and ok
    say(f"{args.target}: {'ok' if ok else 'invalid'} ({len(workflows)} workflow(s))")
    return 0 if ok else 1


def _refused(error: BaseException | None) -> list[str] | None:
    """The problems of a ``StateMachineConfig`` that refused to be built, else ``None``."""
    if not isinstance(error, StateMachineError) or error.code != ErrorCode.INVALID_CONFIG:
        return None
    return list(error.problems or [error.message])


def _workflow_mapping(obj: Any) -> Mapping[str, Any] | None:
    """``obj`` as a mapping of workflow name -> config or factory (what ``worker --app``
    takes), or ``None`` when it is one config (a StateMachineConfig or its dict form)."""
    if not isinstance(obj, Mapping) or not obj:
        return None if not isinstance(obj, Mapping) else {}
    if all(isinstance(v, StateMachineConfig) or callable(v) for v in obj.values()):
        return obj
    return None


def _validate_one(name: str, config: Any, indent: str, refused: list[str] | None = None) -> bool:
    """Print the report of ``config`` (or the problems of one ``refused`` as it was built)."""
    report = validate(config) if refused is None else ValidationReport(errors=refused)
    say(*(f"{indent}error: {error}" for error in report.errors))
    say(*(f"{indent}warning: {warning}" for warning in report.warnings))
    if not report.ok:
        say(f"{name}: invalid ({len(report.errors)} error(s))")
        return False
    cfg, _ = coerce_config(config)
    assert cfg is not None
    say(
        f"{name}: ok ({cfg.id!r}: {len(cfg.states)} states, {len(cfg.events)} events, "
        f"{len(cfg.transitions)} transitions, {len(report.warnings)} warning(s))"
    )
    return True


# -- entry point


class _Parser(argparse.ArgumentParser):
    """Usage errors as every other error: ``deploysm VERB: error: USAGE: message``."""

    def error(self, message: str) -> Any:
        self.print_usage(sys.stderr)
        self.exit(2, f"{self.prog}: error: {ErrorCode.USAGE}: {printable(message)}\n")


class _HelpFormatter(argparse.HelpFormatter):
    """Every option's help says its default: ``(default: X)`` is added unless the help
    already names one; a flag's default is off, an option without one says so."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        if "default" in text or not action.option_strings or action.nargs == 0 or action.required:
            return text
        if action.default is None or action.default == argparse.SUPPRESS:
            return f"{text} (default: none)".lstrip()
        return f"{text} (default: %(default)s)".lstrip()


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="deploysm",
        description="Deployment workflows as typed, durable, asyncio-native state machines.",
    )
    parser.add_argument("--version", action="version", version=f"deploysm {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for cmd in COMMANDS.values():
        p = sub.add_parser(
            cmd.name, help=cmd.help, description=cmd.help, formatter_class=_HelpFormatter
        )
        cmd.configure(p)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit code (``raise SystemExit(main())``)."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # --help, --version, usage errors
        return e.code if isinstance(e.code, int) else (0 if e.code is None else 2)
    cmd = COMMANDS.get(args.command) if args.command else None
    if cmd is None:
        parser.print_help(sys.stderr)
        return 2
    try:
        return cmd.run(args)
    except CliError as e:
        _error(cmd.name, e.code, str(e))
        return e.exit_code
    except StateMachineError as e:
        _error(cmd.name, e.code, str(e))
        return 1
    except KeyboardInterrupt:
        print(f"deploysm {cmd.name}: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # a bug; still one line rather than a traceback
        bug = f"unexpected {one_line(e)} (a bug in deploysm: please report it)"
        _error(cmd.name, ErrorCode.INTERNAL_ERROR, bug)
        return 1


def _error(command: str, code: str, message: str) -> None:
    """The one line an error gets on stderr, ``deploysm VERB: error: CODE: message``; the
    message's control characters (and newlines) escaped."""
    print(f"deploysm {command}: error: {code}: {printable(message)}", file=sys.stderr)
