"""SPEC 2 rules 11 (hooks never break the machine), 12 (logging, redaction), 14 (validation)."""

from __future__ import annotations

import inspect
import logging
from typing import Any

import pytest

import deploysm
from deploysm import (
    ErrorCode,
    Hooks,
    RetryPolicy,
    StateMachineError,
    TimeoutConfig,
    Transition,
    create_state_machine,
    effect,
)
from deploysm.testing import VirtualClock

HOOK_NAMES = [
    "on_state_enter",
    "on_state_exit",
    "on_transition",
    "on_error",
    "on_retry",
    "on_complete",
    "on_cancel",
    "on_metric",
    "on_log",
]

# --- rule 11: hooks never break the machine ---------------------------------------------


def _scenario_config(make_config: Any, hooks: Hooks, persisted: Any) -> Any:
    flaky = effect().execute(lambda c, s: {"success": s.attempts > 1}).set_idempotent(True).build()
    broken = (
        effect()
        .execute(lambda c, s: {"success": False, "message": "rollout stalled"})
        .rollback(lambda c, s: None)
        .build()
    )
    return make_config(
        clock=VirtualClock(),
        effects={"validating": flaky, "deploying": broken},
        retry_policy=RetryPolicy(2, 100, 1000, 2.0, 0.0),
        hooks=hooks,
        persist_state=persisted,
    )


async def _run_scenarios(cfg: Any) -> list[Any]:
    """Every hook fires: retry, commit, failure, completion, cancel."""
    one = create_state_machine(cfg, {"id": 1})
    outcomes: list[Any] = []
    for ev in ("START", "VALIDATED", "FAIL"):
        result = await one.dispatch(ev)
        outcomes.append((result.success, result.new_state.name))
    two = create_state_machine(cfg, {"id": 2})
    await two.dispatch("START")
    await two.cancel()
    outcomes.append((one.get_state().name, two.get_state().name, one.version, two.version))
    three = create_state_machine(cfg, {"id": 3})  # "failed" fails: complete one by hand
    await three.complete()
    outcomes.append((one.status, three.status, three.version))
    return outcomes


def _recording_hooks(
    calls: dict[str, int], failing: str | None = None, is_async: bool = False
) -> Hooks:
    def make(name: str) -> Any:
        def hook(*args: Any) -> None:
            calls[name] = calls.get(name, 0) + 1
            if name == failing:
                raise RuntimeError(f"{name} exploded")

        async def async_hook(*args: Any) -> None:
            hook(*args)

        return async_hook if is_async else hook

    return Hooks(**{name: make(name) for name in HOOK_NAMES})


@pytest.mark.parametrize("is_async", [False, True], ids=["sync", "async"])
@pytest.mark.parametrize("failing", HOOK_NAMES)
async def test_a_raising_hook_changes_nothing_and_is_logged(
    make_config: Any, make_persisted: Any, failing: str, is_async: bool, caplog: Any
) -> None:
    Persisted = make_persisted
    base_calls: dict[str, int] = {}
    base_store = Persisted()
    baseline = await _run_scenarios(
        _scenario_config(make_config, _recording_hooks(base_calls, None, is_async), base_store)
    )
    assert set(base_calls) == set(HOOK_NAMES), "the scenario must fire every hook"

    calls: dict[str, int] = {}
    store = Persisted()
    logs: list[tuple[str, str, Any]] = []
    hooks = _recording_hooks(calls, failing, is_async)
    if failing != "on_log":
        inner = hooks.on_log

        async def on_log(level: str, message: str, metadata: Any) -> None:
            logs.append((level, message, metadata))
            if inner is not None:
                done = inner(level, message, metadata)
                if inspect.isawaitable(done):
                    await done

        hooks = Hooks(**{**{n: getattr(hooks, n) for n in HOOK_NAMES}, "on_log": on_log})
    caplog.set_level(logging.INFO, logger="deploysm")
    outcomes = await _run_scenarios(_scenario_config(make_config, hooks, store))

    assert outcomes == baseline
    assert store.snapshots == base_store.snapshots  # no data lost, nothing changed
    assert calls[failing] >= 1
    stdlib = [r for r in caplog.records if r.name == "deploysm" and r.levelno == logging.ERROR]
    assert any(f"hook {failing}" in r.getMessage() for r in stdlib)
    if failing != "on_log":
        assert any(lv == "error" and f"hook {failing}" in msg for lv, msg, _ in logs)


# --- rule 12: logging and redaction -----------------------------------------------------

SECRETS = ["hunter2", "tok-123", "ak-999", "AKIA42", "sess-77", "pw-in-dict"]
SECRET_TEXT = (
    'deploy failed: password=hunter2 token: tok-123 {"api_key": "ak-999"} apiKey=AKIA42 '
    "cookie=sess-77 {'password': 'pw-in-dict'}"
)


def _capture(make_config: Any, **kw: Any) -> tuple[Any, list[tuple[str, str, Any]]]:
    logs: list[tuple[str, str, Any]] = []

    async def on_log(level: str, message: str, metadata: Any) -> None:
        logs.append((level, message, metadata))

    hooks = kw.pop("hooks", {})
    return make_config(hooks={**hooks, "on_log": on_log}, **kw), logs


def _leaks(texts: list[str], secrets: list[str]) -> list[str]:
    return [s for s in secrets for t in texts if s in t]


async def test_secrets_in_effect_errors_are_redacted_everywhere(
    make_config: Any, persisted: Any, caplog: Any
) -> None:
    def run(c: Any, s: Any) -> None:
        raise RuntimeError(SECRET_TEXT)

    eff = effect().execute(run).set_idempotent(True).build()
    cfg, logs = _capture(
        make_config,
        effects={"validating": eff},
        retry_policy=RetryPolicy(2, 100, 1000, 2.0, 0.0),
        persist_state=persisted,
    )
    caplog.set_level(logging.DEBUG, logger="deploysm")
    sm = create_state_machine(cfg, {})
    result = await sm.dispatch("START")
    assert result.success is False
    texts = [f"{lv} {msg} {meta!r}" for lv, msg, meta in logs]
    texts += [r.getMessage() for r in caplog.records]
    texts += [str(result.error), repr(persisted.last["last_error"])]
    assert any(lv == "error" for lv, _, _ in logs)
    assert any(r.name == "deploysm" and r.levelno == logging.ERROR for r in caplog.records)
    assert _leaks(texts, SECRETS) == []
    assert any("[REDACTED]" in t for t in texts)
    assert any("deploy failed" in t for t in texts)  # the rest of the message survives


async def test_secrets_in_hook_errors_are_redacted(make_config: Any, caplog: Any) -> None:
    def on_enter(state: Any, ctx: Any) -> None:
        raise ValueError("registry login: password=hunter2")

    cfg, logs = _capture(make_config, hooks={"on_state_enter": on_enter})
    caplog.set_level(logging.DEBUG, logger="deploysm")
    await create_state_machine(cfg, {}).dispatch("START")
    texts = [msg for _, msg, _ in logs] + [r.getMessage() for r in caplog.records]
    assert any("hook on_state_enter" in t for t in texts)
    assert _leaks(texts, ["hunter2"]) == []


async def test_redact_keys_add_to_the_defaults(make_config: Any, caplog: Any) -> None:
    def run(c: Any, s: Any) -> None:
        raise RuntimeError("signing failed: deploy_pin=4321 password=hunter2")

    eff = effect().execute(run).set_idempotent(True).build()
    cfg, logs = _capture(make_config, effects={"validating": eff}, redact_keys=["deploy_pin"])
    caplog.set_level(logging.DEBUG, logger="deploysm")
    result = await create_state_machine(cfg, {}).dispatch("START")
    texts = [msg for _, msg, _ in logs] + [r.getMessage() for r in caplog.records]
    texts.append(str(result.error))
    assert _leaks(texts, ["4321", "hunter2"]) == []
    assert any("signing failed" in t for t in texts)


async def test_the_context_is_never_logged(make_config: Any, caplog: Any) -> None:
    ctx = {"marker": "CTX-MARKER-7", "db_password": "pw-in-ctx", "notes": ["CTX-NOTE-8"]}

    def run(c: Any, s: Any) -> None:
        if s.attempts == 1:
            raise RuntimeError("transient")

    def on_enter(state: Any, c: Any) -> None:
        raise RuntimeError("hook failure")

    eff = effect().execute(run).set_idempotent(True).build()
    cfg, logs = _capture(
        make_config,
        effects={
            "validating": eff,
            "deploying": effect().execute(lambda c, s: {"success": False}).build(),
        },
        retry_policy=RetryPolicy(2, 100, 1000, 2.0, 0.0),
        hooks={"on_state_enter": on_enter},
    )
    caplog.set_level(logging.DEBUG, logger="deploysm")
    sm = create_state_machine(cfg, ctx)
    await sm.dispatch("DEPLOYED")  # refused
    await sm.dispatch("START")  # retried, committed, hook fails
    await sm.dispatch("VALIDATED")  # fails
    await sm.fail("given up")
    assert len(logs) >= 4
    texts = [f"{msg} {meta!r}" for _, msg, meta in logs] + [r.getMessage() for r in caplog.records]
    assert _leaks(texts, ["CTX-MARKER-7", "pw-in-ctx", "CTX-NOTE-8"]) == []


# --- rule 14: validation ----------------------------------------------------------------


def _raises_invalid_config(cfg: Any) -> StateMachineError:
    with pytest.raises(StateMachineError) as info:
        create_state_machine(cfg, {})
    assert info.value.code == ErrorCode.INVALID_CONFIG
    return info.value


async def test_a_bad_config_is_rejected_with_every_problem_listed() -> None:
    eff = effect().execute(lambda c, s: None).set_idempotent(True).build()
    cfg: dict[str, Any] = {
        "id": "bad",
        "initial_state": "nowhere",
        "states": ["idle", "idle", "done"],
        "events": ["GO", "GO"],
        "transitions": [
            Transition("ghost", "done", "GO"),
            Transition("idle", "phantom", "GO"),
            Transition("idle", "done", "NOPE"),
        ],
        "effects": {"limbo": eff},
        "retry_policy": RetryPolicy(max_attempts=0, initial_delay_ms=-1, jitter_factor=2.0),
        "timeout": TimeoutConfig(effect_timeout_ms=-5, state_timeout_ms=0, timeout_event="NEVER"),
    }
    err = _raises_invalid_config(cfg)
    with pytest.raises(StateMachineError) as built:  # the dataclass is checked when built
        deploysm.StateMachineConfig(**cfg)
    assert (built.value.code, built.value.problems) == (err.code, err.problems)
    expected = [
        "'idle'",
        "'GO'",
        "nowhere",
        "ghost",
        "phantom",
        "NOPE",
        "limbo",
        "max_attempts",
        "initial_delay_ms",
        "jitter_factor",
        "effect_timeout_ms",
        "state_timeout_ms",
        "NEVER",
    ]
    missing = [f for f in expected if not any(f in p for p in err.problems)]
    assert missing == []
    assert all(f in str(err) for f in expected)
    assert len(err.problems) >= len(expected)


async def test_missing_fields_are_listed_together() -> None:
    err = _raises_invalid_config({})
    for name in ("id", "initial_state", "states", "events", "transitions"):
        assert any(name in p for p in err.problems), name


async def test_missing_fields_do_not_hide_the_other_problems() -> None:
    cfg = {"id": "x", "initial_state": "nowhere", "states": ["a", "a"], "transitions": []}
    err = _raises_invalid_config(cfg)
    for fragment in ("events", "nowhere", "'a'"):
        assert any(fragment in p for p in err.problems), (fragment, err.problems)


def _clean(**kw: Any) -> dict[str, Any]:
    cfg: dict[str, Any] = {
        "id": "clean",
        "initial_state": "idle",
        "states": ["idle", "busy", "done"],
        "events": ["GO", "END"],
        "transitions": [Transition("idle", "busy", "GO"), Transition("busy", "done", "END")],
    }
    cfg.update(kw)
    return cfg


async def test_validate_reports_warnings_for_likely_mistakes() -> None:
    assert deploysm.validate(_clean()).warnings == []
    base = _clean()
    cases = {
        "orphan": _clean(states=[*base["states"], "orphan"]),
        "stuck": _clean(
            states=[*base["states"], "stuck"],
            transitions=[*base["transitions"], Transition("busy", "stuck", "GO")],
            final_states=["done"],
        ),
        "GO": _clean(transitions=[*base["transitions"], Transition("idle", "done", "GO")]),
        "busy": _clean(effects={"busy": effect().execute(lambda c, s: None).build()}),
    }
    for culprit, cfg in cases.items():
        report = deploysm.validate(cfg)
        assert report.errors == [], culprit
        assert any(culprit in w for w in report.warnings), (culprit, report.warnings)
        create_state_machine(cfg, {})  # warnings do not refuse the config


async def test_validate_reports_errors_without_raising() -> None:
    report = deploysm.validate(_clean(initial_state="nowhere"))
    assert not report.ok
    assert any("nowhere" in e for e in report.errors)
