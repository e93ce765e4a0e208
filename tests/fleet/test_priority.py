"""AgentPriority parsing: names, values, members; clear errors otherwise."""

from __future__ import annotations

import pytest

from pyagent.model.priority import AgentPriority


@pytest.mark.parametrize(
    ("value", "expected"),
    [("low", AgentPriority.LOW), ("Critical", AgentPriority.CRITICAL), (" high ", AgentPriority.HIGH), (1, AgentPriority.STANDARD), (AgentPriority.LOW, AgentPriority.LOW)],
)
def test_parse(value: object, expected: AgentPriority) -> None:
    assert AgentPriority.parse(value) is expected  # type: ignore[arg-type]


def test_order() -> None:
    assert AgentPriority.LOW < AgentPriority.STANDARD < AgentPriority.HIGH < AgentPriority.CRITICAL


@pytest.mark.parametrize(("value", "match"), [("urgent", "unknown priority 'urgent'"), (7, "0..3"), (True, "not a priority"), (None, "not a priority")])
def test_parse_rejects(value: object, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        AgentPriority.parse(value)  # type: ignore[arg-type]
