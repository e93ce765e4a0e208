"""CascadeContext: lineage, and each chain limit stopping the chain with a clear reason."""

from __future__ import annotations

import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st

from pyagent.model.budget import Budget
from pyagent.model.context import (
    BudgetExceeded,
    CascadeContext,
    CascadeLimitError,
    CircuitOpen,
    ContextWireError,
    DepthLimitExceeded,
    LoopDetected,
    SecurityScope,
)


def test_lineage_and_shared_budget() -> None:
    root = CascadeContext.root("planner", action="plan")
    child = root.next_level("coder", "fix a.py")
    grandchild = child.next_level("tester", "run tests")
    assert grandchild.root_task_id == root.task_id
    assert [e.agent for e in grandchild.lineage] == ["planner", "coder", "tester"]
    assert grandchild.lineage_ids() == (root.task_id, child.task_id, grandchild.task_id)
    assert grandchild.depth == 2 and grandchild.parent_task_id == child.task_id
    assert len({root.task_id, child.task_id, grandchild.task_id}) == 3
    assert grandchild.budget is root.budget
    grandchild.budget.charge(tokens=5)
    assert root.budget.used()["tokens"] == 5


def test_context_is_immutable() -> None:
    ctx = CascadeContext.root("a")
    with pytest.raises(AttributeError):
        ctx.depth = 3  # type: ignore[misc]
    failed = ctx.record_failure("apply", "boom")
    assert ctx.failures == () and len(failed.failures) == 1


def test_depth_limit_stops_the_chain() -> None:
    ctx = CascadeContext.root("a0", max_depth=3)
    for i in range(1, 4):
        ctx = ctx.next_level(f"a{i}", "step")
    with pytest.raises(DepthLimitExceeded, match=r"depth limit 3 reached: a0 -> a1 -> a2 -> a3 cannot delegate 'step' to 'a4'"):
        ctx.next_level("a4", "step")


def test_default_depth_limit_is_ten() -> None:
    ctx = CascadeContext.root("a0")
    for i in range(1, 11):
        ctx = ctx.next_level(f"a{i}", "x")
    with pytest.raises(DepthLimitExceeded):
        ctx.next_level("a11", "x")


def test_circuit_breaker_after_three_identical_failures() -> None:
    ctx = CascadeContext.root("coder")
    ctx = ctx.record_failure("apply", ValueError("edit did not match at 0x7f00dead"))
    ctx = ctx.record_failure("apply", ValueError("edit did not match at 0x7f00beef"))  # same error, other address
    ctx = ctx.record_failure("verify", "tests failed")  # a different failure does not count
    ctx.next_level("coder", "retry 1")  # two identical failures: still closed
    ctx = ctx.record_failure("apply", ValueError("edit did not match at 0x1"))
    with pytest.raises(CircuitOpen, match=r"circuit open: stage 'apply' failed 3 times with the same error: ValueError: edit did not match"):
        ctx.next_level("coder", "retry 2")
    with pytest.raises(CircuitOpen):
        ctx.check()


def test_loop_detection() -> None:
    ctx = CascadeContext.root("planner", action="plan")
    ctx = ctx.next_level("coder", "fix a.py").next_level("reviewer", "review a.py")
    ctx.next_level("coder", "fix b.py")  # same agent, other action: fine
    with pytest.raises(LoopDetected, match=r"loop detected: 'coder' was already asked to 'fix a.py' in this chain \(planner -> coder -> reviewer\)"):
        ctx.next_level("coder", "fix a.py")


def test_budget_exhaustion_stops_next_level() -> None:
    ctx = CascadeContext.root("a", budget=Budget(tokens=10))
    child = ctx.next_level("b", "x")
    with pytest.raises(BudgetExceeded):
        child.budget.charge(tokens=11)
    with pytest.raises(BudgetExceeded, match="token budget exhausted"):
        ctx.next_level("c", "y")  # the parent sees the child's spend


@pytest.mark.parametrize("exc", [DepthLimitExceeded, CircuitOpen, LoopDetected, BudgetExceeded])
def test_one_base_class(exc: type[CascadeLimitError]) -> None:
    assert issubclass(exc, CascadeLimitError)


def test_scope_narrows_and_never_widens() -> None:
    root = CascadeContext.root("a", scope=SecurityScope(paths=("src",), commands=("pytest", "ruff")))
    child = root.next_level("b", "x", scope=SecurityScope(paths=(".",), commands=("ruff", "rm")))
    assert child.scope.paths == ("src",)
    assert child.scope.commands == ("ruff",)
    assert child.scope.allows_path("src/pkg/mod.py") and not child.scope.allows_path("srcx/mod.py")
    assert not child.scope.allows_command("rm") and child.scope.allows_command("/usr/bin/ruff")
    narrower = child.next_level("c", "y", scope=SecurityScope(paths=("src/pkg", "docs")))
    assert narrower.scope.paths == ("src/pkg",)


@pytest.mark.parametrize("bad", ["/etc", "../x", "a/../../b", ""])
def test_scope_rejects_escaping_paths(bad: str) -> None:
    with pytest.raises(ValueError, match="scope path"):
        SecurityScope(paths=(bad,))


def test_wire_round_trip_via_msgpack() -> None:
    ctx = CascadeContext.root("planner", action="plan", budget=Budget(tokens=500), tenant="acme")
    ctx = ctx.next_level("coder", "fix").record_failure("apply", "nope")
    ctx.budget.charge(tokens=42)
    back = CascadeContext.from_wire(msgpack.unpackb(msgpack.packb(ctx.to_wire())))
    assert back.lineage == ctx.lineage and back.failures == ctx.failures and back.actions == ctx.actions
    assert (back.task_id, back.root_task_id, back.depth, back.tenant) == (ctx.task_id, ctx.root_task_id, 1, "acme")
    assert back.scope == ctx.scope
    assert back.budget.used()["tokens"] == 42 and back.budget.tokens == 500
    with pytest.raises(LoopDetected):
        back.next_level("coder", "fix")  # limits survive the trip
    shared = CascadeContext.from_wire(ctx.to_wire(), budget=ctx.budget)
    assert shared.budget is ctx.budget


def _wire() -> dict[str, object]:
    return CascadeContext.root("a").next_level("b", "x").to_wire()


@pytest.mark.parametrize(
    ("mutate", "match"),
    [
        (lambda w: w.pop("task_id"), "missing field 'task_id'"),
        (lambda w: w.update(v=2), "unsupported context version"),
        (lambda w: w.update(depth=5), "does not match lineage length"),
        (lambda w: w.update(depth=-1), "depth must be a whole number"),
        (lambda w: w.update(lineage=[["a", 1]]), "lineage task id must be a string"),
        (lambda w: w.update(task_id="other"), "lineage does not match"),
        (lambda w: w.update(scope={"paths": ["/etc"]}), "scope path"),
        (lambda w: w.update(budget={"limits": {}}), "budget must be a mapping"),
        (lambda w: w.update(lineage="ab"), "malformed context"),
    ],
)
def test_malformed_wire_context(mutate: object, match: str) -> None:
    wire = _wire()
    mutate(wire)  # type: ignore[operator]
    with pytest.raises(ContextWireError, match=match):
        CascadeContext.from_wire(wire)


def test_wire_rejects_non_mapping() -> None:
    with pytest.raises(ContextWireError, match="must be a mapping"):
        CascadeContext.from_wire([1, 2])


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [({"max_depth": -1}, "max_depth"), ({"tenant": ""}, "tenant"), ({"circuit_threshold": 0}, "circuit_threshold")],
)
def test_bad_root_arguments(kwargs: dict[str, object], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        CascadeContext.root("a", **kwargs)  # type: ignore[arg-type]


@given(st.lists(st.sampled_from(["a", "b", "c", "d"]), min_size=1, max_size=12), st.integers(1, 12))
def test_any_chain_respects_depth_and_loops(agents: list[str], max_depth: int) -> None:
    """Property: a chain either grows by one level or stops with a CascadeLimitError, never beyond limits."""
    ctx = CascadeContext.root("root", max_depth=max_depth)
    seen: set[str] = set()
    for i, agent in enumerate(agents):
        action = f"act{i % 3}"
        try:
            nxt = ctx.next_level(agent, action)
        except DepthLimitExceeded:
            assert ctx.depth == max_depth
            break
        except LoopDetected:
            assert f"{agent}:{action}" in seen
            break
        seen.add(f"{agent}:{action}")
        assert nxt.depth == ctx.depth + 1 <= max_depth
        assert len(nxt.lineage) == nxt.depth + 1
        assert CascadeContext.from_wire(nxt.to_wire()).lineage == nxt.lineage
        ctx = nxt
