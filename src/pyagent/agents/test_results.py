"""What one test run found: per-test outcomes, how the run ended, its warnings and sandbox, and (for
the baseline) the test-impact map. The test agent's outcome carries it; the gate compares it."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pyagent.agents.impact import TestImpact

__all__ = ["TestResults"]


def _family(test_id: str) -> str:
    """The test function a parametrized id belongs to: ``mod::test_f[3-x]`` -> ``mod::test_f``."""
    return test_id.split("[", 1)[0]


@dataclass(frozen=True)
class TestResults:
    """Outcome of one test run: per-test status plus how the run itself ended."""

    __test__ = False  # not a pytest test class despite the name

    outcomes: dict[str, str]  # test id -> passed | failed | error | skipped
    command: tuple[str, ...]
    exit_code: int | None
    duration: float
    timed_out: bool = False
    output_tail: str = ""
    note: str = ""
    # (path, line, category, message) of deprecation warnings the run printed, as the runner reported them
    warnings: tuple[tuple[str, int, str, str], ...] = ()
    # what the sandbox enforced, then the refusals the run printed (pyagent.shell.confine.refusals)
    sandbox: tuple[str, ...] = ()
    # a run under coverage (the baseline): which test files exercise which project files. It stays
    # with the machine that recorded it (not in ``to_dict``).
    impact: TestImpact | None = field(default=None, compare=False, repr=False)

    @property
    def passed(self) -> int:
        return sum(1 for s in self.outcomes.values() if s == "passed")

    @property
    def failed(self) -> int:
        return sum(1 for s in self.outcomes.values() if s in ("failed", "error"))

    def passing(self) -> set[str]:
        return {t for t, s in self.outcomes.items() if s == "passed"}

    def regressions(self, baseline: TestResults) -> list[str]:
        """Tests that passed in ``baseline`` and did not pass here (failed, errored or vanished).

        A parametrized case whose id changed between runs (ids built from reprs, dates or memory
        addresses) is not lost: vanished ``test_f[...]`` ids are matched by count against ``test_f``'s
        passing ids that are new here, and only the vanished ids beyond those count.
        """
        mine = self.passing()
        lost = sorted(t for t in baseline.passing() if t not in mine)
        renamed: dict[str, int] = {}
        for t in mine:
            if "[" in t and t not in baseline.outcomes:
                renamed[_family(t)] = renamed.get(_family(t), 0) + 1
        out: list[str] = []
        for t in lost:
            family = _family(t)
            if t not in self.outcomes and "[" in t and renamed.get(family, 0) > 0:
                renamed[family] -= 1
                continue
            out.append(t)
        return out

    def selected_regressions(self, baseline: TestResults) -> list[str]:
        """Baseline passes among the tests that ran which fail now, and new failures.

        For a run narrowed to some tests, and for the final full run: a test that did not run is not
        counted (a collection error shows up as a new failing entry instead).
        """
        lost = [t for t in baseline.passing() if t in self.outcomes and self.outcomes[t] != "passed"]
        new = [t for t, s in self.outcomes.items() if s in ("failed", "error") and t not in baseline.outcomes]
        if not self.outcomes and self.exit_code not in (0, 5):
            new.append(f"the selected tests did not run (exit {self.exit_code})")
        return sorted({*lost, *new})

    def summary(self) -> dict[str, Any]:
        return {"passed": self.passed, "failed": self.failed, "total": len(self.outcomes)}

    def to_dict(self) -> dict[str, Any]:
        return {
            **self.summary(),
            "outcomes": dict(sorted(self.outcomes.items())),
            "command": list(self.command),
            "exit_code": self.exit_code,
            "duration": round(self.duration, 3),
            "timed_out": self.timed_out,
            "note": self.note,
            "warnings": [list(w) for w in self.warnings],
            "sandbox": list(self.sandbox),
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> TestResults:
        return cls(
            outcomes={str(k): str(v) for k, v in dict(d["outcomes"]).items()},
            command=tuple(d.get("command", ())),
            exit_code=d.get("exit_code"),
            duration=float(d.get("duration", 0.0)),
            timed_out=bool(d.get("timed_out", False)),
            note=str(d.get("note", "")),
            sandbox=tuple(str(x) for x in d.get("sandbox", ())),
        )
