"""One attempt of an effect, and the judgement of whether to try again."""

from __future__ import annotations

import asyncio
import builtins
import inspect
from datetime import datetime
from types import CoroutineType
from typing import TYPE_CHECKING, Any

from ..core import _step as step
from ..core._definition import CompiledTransition
from ..core._effects import Effect, call_maybe_async, to_effect_result
from ..core._errors import EffectError, RetryExhaustedError, StateMachineError, TimeoutError
from ..core._step import GiveUp, Retry
from ..core._types import EffectResult, State
from ._timeouts import deadline

if TYPE_CHECKING:
    from ._machine import Machine

__all__ = ["decide_retry", "final_error", "one_attempt"]


async def one_attempt(
    m: Machine[Any, Any, Any], eff: Effect[Any], ctx: Any, target: State[Any], run: Run
) -> BaseException | None:
    d = m._def
    try:
        if d.effect_timeout_s is None:
            raw = eff.execute(ctx, target)
            if raw is not None and (type(raw) is CoroutineType or inspect.isawaitable(raw)):
                raw = await raw
        else:
            cm = deadline(d.clock, d.effect_timeout_s)
            try:
                async with cm:
                    raw = await call_maybe_async(eff.execute, ctx, target)
            except builtins.TimeoutError as e:
                if not cm.expired():
                    raise
                timeout = TimeoutError(
                    f"effect {eff.label} ran past {d.effect_timeout_s * 1000:g} ms "
                    f"(attempt {run.attempt})",
                    state=target.name,
                )
                timeout.__cause__ = e
                run.last_result = None
                return timeout
        result = to_effect_result(raw)
    except asyncio.CancelledError as e:
        owner = m._owner
        if owner is None or owner.cancelling() > 0:
            raise
        run.last_result = None  # the effect raised CancelledError itself: a failed attempt
        err = EffectError(f"effect {eff.label} raised CancelledError", state=target.name)
        err.__cause__ = e
        return err
    except (KeyboardInterrupt, SystemExit):
        raise
    except Exception as e:
        run.last_result = None
        return e
    run.last_result = result
    if result.success:
        return None
    return EffectError(result.message or f"effect {eff.label} reported failure", state=target.name)


async def decide_retry(
    m: Machine[Any, Any, Any],
    eff: Effect[Any],
    error: BaseException,
    run: Run,
    max_attempts: int,
) -> Retry | GiveUp:
    """Ask the retry policy (user code, maybe async) only when the pure rule
    (:func:`._step.after_verdict`) leaves the choice to it, then let the rule decide."""
    result = run.last_result
    can_retry = result.can_retry if result is not None else None
    facts = step.Failed(
        eff.idempotent, eff.rollback is not None, run.attempt, max_attempts, can_retry
    )
    verdict = False
    if step.may_ask_policy(facts):
        verdict = await _policy_verdict(m, error, run.attempt)
    return step.after_verdict(facts, verdict)


async def _policy_verdict(m: Machine[Any, Any, Any], error: BaseException, attempt: int) -> bool:
    policy = m._def.retry
    assert policy is not None
    if policy.retryable_errors is not None and not isinstance(error, policy.retryable_errors):
        return False
    if policy.should_retry is not None:
        try:
            verdict = policy.should_retry(error, attempt)
            if inspect.isawaitable(verdict):
                verdict = await verdict
        except Exception as e:
            obs = m._def.observer
            if obs.enabled("error"):
                await obs.log("error", f"should_retry raised {type(e).__name__}; not retrying")
            return False
        return bool(verdict)
    return True


def final_error(
    m: Machine[Any, Any, Any],
    ct: CompiledTransition,
    error: BaseException,
    run: Run,
    max_attempts: int,
) -> BaseException:
    if run.attempt >= max_attempts and max_attempts > 1:
        err: StateMachineError = RetryExhaustedError(
            f"{ct.source} -> {ct.to}: all {run.attempt} attempts failed; last: "
            f"{m._def.observer.error_text(error)}",
            attempts=run.attempt,
            state=ct.source,
        )
        err.__cause__ = error
        return err
    if isinstance(error, StateMachineError):
        return error
    wrapped = EffectError(
        f"{ct.source} -> {ct.to}: {type(error).__name__}: {m._def.observer.error_text(error)}",
        state=ct.source,
    )
    wrapped.__cause__ = error
    return wrapped


class Run:
    """The bookkeeping of one logical transition across its attempts."""

    __slots__ = (
        "attempt",
        "errors",
        "in_attempt",
        "last_error",
        "last_result",
        "prev_delay_ms",
        "unrolled",
        "wait_until",
    )

    def __init__(self, attempt: int) -> None:
        self.attempt = attempt
        self.errors = 0
        self.last_error: BaseException | None = None
        self.last_result: EffectResult | None = None
        self.prev_delay_ms: float | None = None
        self.unrolled = False  # a non-idempotent attempt started and is not rolled back
        self.in_attempt = False  # an attempt is running right now
        self.wait_until: datetime | None = None  # resume: the recorded retry deadline
