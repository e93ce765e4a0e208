"""Budget: one thread-safe ledger; exhaustion stops the chain with a reason."""

from __future__ import annotations

import threading

import msgpack
import pytest

from pyagent.model.budget import Budget
from pyagent.model.errors import BudgetExceeded, CascadeLimitError, ContextWireError


def test_charge_within_limits_then_exhaust_tokens() -> None:
    b = Budget(tokens=100)
    b.charge(tokens=60)
    b.charge(tokens=40)  # exactly at the limit is still fine
    assert b.remaining()["tokens"] == 0
    with pytest.raises(BudgetExceeded, match="token budget exhausted: used 101 of 100"):
        b.charge(tokens=1)
    assert b.used()["tokens"] == 101  # spend is recorded even when it crosses the limit
    assert isinstance(BudgetExceeded("x"), CascadeLimitError)


@pytest.mark.parametrize(
    ("limits", "charge", "match"),
    [
        ({"cost_usd": 0.5}, {"cost": 0.75}, r"cost budget exhausted: spent \$0.7500 of \$0.5000"),
        ({"steps": 2}, {"steps": 3}, "step budget exhausted: took 3 of 2 steps"),
        ({"tokens": 0}, {"tokens": 1}, "token budget exhausted"),
    ],
)
def test_each_limit_has_its_reason(limits: dict[str, float], charge: dict[str, float], match: str) -> None:
    b = Budget(**limits)  # type: ignore[arg-type]
    with pytest.raises(BudgetExceeded, match=match) as info:
        b.charge(**charge)  # type: ignore[arg-type]
    assert info.value.reason == str(info.value)
    assert b.exhausted() is not None


def test_wall_time_limit() -> None:
    b = Budget(wall_seconds=0.0)
    b._start -= 1.0  # pretend a second passed instead of sleeping
    with pytest.raises(BudgetExceeded, match="wall-time budget exhausted"):
        b.check()


def test_unlimited_budget_never_exhausts() -> None:
    b = Budget()
    b.charge(tokens=10**9, cost=1e6, steps=10**6)
    b.check()
    assert b.remaining() == {"tokens": None, "cost_usd": None, "wall_seconds": None, "steps": None}


def test_thread_safe_charging() -> None:
    b = Budget()

    def work() -> None:
        for _ in range(2000):
            b.charge(tokens=1, steps=1, cost=0.5)

    threads = [threading.Thread(target=work) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    used = b.used()
    assert used["tokens"] == 16000
    assert used["steps"] == 16000
    assert used["cost_usd"] == 8000.0


@pytest.mark.parametrize(
    "kwargs",
    [{"tokens": -1}, {"tokens": 1.5}, {"cost_usd": float("nan")}, {"steps": True}, {"wall_seconds": "10"}],
)
def test_bad_limits_are_rejected(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError, match="budget limit"):
        Budget(**kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize("charge", [{"tokens": -5}, {"cost": -0.1}, {"steps": 1.5}, {"tokens": True}])
def test_bad_charges_are_rejected_and_record_nothing(charge: dict[str, object]) -> None:
    b = Budget(tokens=10)
    with pytest.raises(ValueError):
        b.charge(**charge)  # type: ignore[arg-type]
    assert b.used()["tokens"] == 0 and b.used()["steps"] == 0 and b.used()["cost_usd"] == 0.0


def test_wire_round_trip_through_msgpack_keeps_spend() -> None:
    b = Budget(tokens=1000, cost_usd=2.0, steps=50)
    b.charge(tokens=300, cost=0.25, steps=7)
    wire = msgpack.unpackb(msgpack.packb(b.to_wire()))
    c = Budget.from_wire(wire)
    assert c.limits() == b.limits()
    assert c.used()["tokens"] == 300 and c.used()["steps"] == 7 and c.used()["cost_usd"] == 0.25
    assert c.used()["wall_seconds"] >= wire["used"]["wall_seconds"]  # the clock carries on from the sender
    with pytest.raises(BudgetExceeded):
        c.charge(tokens=701)


@pytest.mark.parametrize(
    "wire",
    [
        None,
        {},
        {"limits": {"tokens": 5}},
        {"limits": {"bogus": 1}, "used": {}},
        {"limits": {"tokens": -3}, "used": {}},
        {"limits": {}, "used": {"tokens": "many"}},
        {"limits": {}, "used": {"tokens": 1.5}},
    ],
)
def test_malformed_wire_budget(wire: object) -> None:
    with pytest.raises(ContextWireError):
        Budget.from_wire(wire)
