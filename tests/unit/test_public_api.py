"""The public surface: every exported name exists, is documented and sorted."""

from __future__ import annotations

import builtins

import deploysm
import deploysm.stores
import deploysm.testing

SPEC_NAMES = {
    "create_state_machine",
    "effect",
    "EffectBuilder",
    "default_retry_policy",
    "RetryPolicy",
    "TimeoutConfig",
    "Hooks",
    "Transition",
    "StateMachineConfig",
    "StateMachine",
    "State",
    "Event",
    "EffectResult",
    "TransitionResult",
    "StateMetrics",
    "StateMachineMetrics",
    "SerializableState",
    "StateMachineError",
    "TransitionError",
    "EffectError",
    "TimeoutError",
    "RetryExhaustedError",
    "now",
    "sleep",
    "validate",
}


def test_all_holds_every_name_the_spec_promises() -> None:
    missing = SPEC_NAMES - set(deploysm.__all__)
    assert not missing, missing


def test_all_is_sorted_unique_and_resolvable() -> None:
    names = deploysm.__all__
    assert list(names) == sorted(names)
    assert len(set(names)) == len(names)
    for name in names:
        assert hasattr(deploysm, name), name


def test_public_classes_present_themselves_as_deploysm() -> None:
    for name in deploysm.__all__:
        obj = getattr(deploysm, name)
        if isinstance(obj, type):
            assert obj.__module__ == "deploysm", name
            assert obj.__doc__, f"{name} has no docstring"


def test_no_private_module_leaks_into_the_namespace() -> None:
    public = {n for n in dir(deploysm) if not n.startswith("_")}
    # The layer packages (core, durable, engine, runtime, cli) hold private modules only.
    layers = {"core", "durable", "engine", "runtime", "cli"}
    allowed = set(deploysm.__all__) | {"testing", "examples", "stores"} | layers
    assert public <= allowed, public - allowed


def test_error_codes_and_timeout_error_is_builtin_timeout() -> None:
    assert deploysm.TransitionError().code == "TRANSITION_ERROR"
    assert deploysm.EffectError().code == "EFFECT_ERROR"
    assert deploysm.TimeoutError().code == "TIMEOUT_ERROR"
    assert deploysm.RetryExhaustedError(attempts=3).code == "RETRY_EXHAUSTED"
    assert deploysm.RetryExhaustedError(attempts=3).attempts == 3
    assert isinstance(deploysm.TimeoutError("late"), builtins.TimeoutError)
    assert issubclass(deploysm.TimeoutError, deploysm.StateMachineError)
    err = deploysm.StateMachineError("bad", code="INVALID_CONFIG", problems=["a", "b"])
    assert (err.code, err.problems, str(err)) == ("INVALID_CONFIG", ["a", "b"], "bad")


def test_testing_module_exports_virtual_clock() -> None:
    assert "VirtualClock" in deploysm.testing.__all__


def test_guard_type_is_public() -> None:
    """Guards are ``guard(context, event)``; their type is exported for annotations."""
    assert "Guard" in deploysm.__all__
    assert deploysm.Transition.__dataclass_fields__["guard"].type == "Guard | None"


def test_bounded_history_names_are_public() -> None:
    """``StateMachineMetrics.per_state`` holds ``StateTotals``; ``full_history`` reads
    the whole history a machine no longer keeps."""
    assert "StateTotals" in deploysm.__all__
    assert deploysm.StateMachineMetrics.__dataclass_fields__["per_state"].default_factory is dict
    assert "full_history" in deploysm.stores.__all__
    assert deploysm.stores.full_history.__doc__
