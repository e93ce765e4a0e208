"""From an audit to a task list: worst code first, one small attributable change per task.

Sources of tasks: ruff findings with a SAFE fix (one task per rule and file), files ``ruff format``
would change, and, with an LLM, functions over the complexity threshold and files missing
docstrings. The knowledge backend vetoes changes known to fail on the same file content (the
report lists them) and its route weights order the agents.
"""

from __future__ import annotations

import os
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pyagent.agents.fixers import FAMILIES, agent_for_rule
from pyagent.model.priority import AgentPriority
from pyagent.model.task import AgentTask, content_hash

if TYPE_CHECKING:
    from pyagent.agents.ruff import Finding
    from pyagent.health import AuditReport
    from pyagent.model.context import CascadeContext
    from pyagent.model.knowledge import KnowledgeBackend

__all__ = ["AGENT_ORDER", "Candidate", "Plan", "SkippedTask", "plan_tasks"]

# Order of agents on one file: cheap mechanical fixes first, formatting after them, LLM work last.
AGENT_ORDER: tuple[str, ...] = (*FAMILIES, "format", "docstring", "refactor")
FIX_RULES: tuple[str, ...] = ("F", "E", "W", "B", "I", "PIE", "UP", "SIM", "C4", "RET")


@dataclass(frozen=True)
class Candidate:
    """A change the planner could ask for, before memory and limits are applied."""

    agent: str
    kind: str
    action: str  # what knowledge is keyed by, e.g. "lint:F401" or "refactor:pkg.mod.f"
    target: str
    params: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class SkippedTask:
    agent: str
    action: str
    target: str
    reason: str


@dataclass
class Plan:
    tasks: list[AgentTask]
    skipped: list[SkippedTask]
    file_rank: dict[str, int]


def _badness(files: Iterable[Any]) -> dict[str, tuple[float, int]]:
    """Per file: (MI, -worst complexity); sorting ascending puts the worst code first."""
    out: dict[str, tuple[float, int]] = {}
    for fh in files:
        if fh.error:
            continue
        worst = max((f.complexity for f in fh.functions), default=0)
        out[fh.path] = (fh.mi if fh.mi is not None else 100.0, -worst)
    return out


def _is_test_file(path: str) -> bool:
    """Tests are the gate's reference; LLM agents leave them alone."""
    p = Path(path)
    return (
        any(part in ("tests", "test", "testing") for part in p.parts[:-1])
        or p.name.startswith("test_")
        or p.name.endswith("_test.py")
        or p.name == "conftest.py"
    )


def candidates(
    audit: AuditReport,
    findings: Sequence[Finding],
    unformatted: Sequence[str],
    *,
    llm: bool = False,
    max_complexity: int = 10,
    root: str | os.PathLike[str] | None = None,
) -> list[Candidate]:
    """Every change worth trying, unordered."""
    out: list[Candidate] = []
    by_rule: dict[tuple[str, str], list[Finding]] = defaultdict(list)
    for f in findings:
        if f.fix == "safe" and agent_for_rule(f.code):
            by_rule[(f.path, f.code)].append(f)
    for (path, code), group in by_rule.items():
        agent = agent_for_rule(code)
        assert agent is not None
        params = {"rule": code, "message": group[0].message, "count": len(group)}
        out.append(Candidate(agent, "ruff-fix", f"{agent}:{code}", path, params))
    out.extend(Candidate("format", "format", "format", path) for path in unformatted)
    if llm:
        from pyagent.agents.docstrings import missing_docstrings

        for fh in audit.files:
            if fh.error or _is_test_file(fh.path):
                continue
            for fn in fh.functions:
                if fn.complexity > max_complexity:
                    params = {
                        "function": fn.qualname,
                        "complexity": fn.complexity,
                        "max_complexity": max_complexity,
                    }
                    out.append(
                        Candidate("refactor", "llm-refactor", f"refactor:{fn.qualname}", fh.path, params)
                    )
            if root is not None:
                try:
                    names = missing_docstrings((Path(root) / fh.path).read_text(encoding="utf-8"))
                except (OSError, SyntaxError, UnicodeDecodeError):
                    names = []
                if names:
                    out.append(
                        Candidate("docstring", "llm-docstring", "docstring", fh.path, {"names": names[:20]})
                    )
    return out


def plan_tasks(
    root: str | os.PathLike[str],
    audit: AuditReport,
    cands: Sequence[Candidate],
    *,
    context: CascadeContext,
    knowledge: KnowledgeBackend | None = None,
    max_tasks: int | None = None,
    params: dict[str, Any] | None = None,
) -> Plan:
    """Order candidates worst file first, interleaving files so concurrent slots work on different ones."""
    root = Path(root)
    badness = _badness(audit.files)
    # Worst first, but the project's own code before its tests (the tests are the gate's reference).
    ranked_files = sorted(
        {c.target for c in cands}, key=lambda p: (_is_test_file(p), badness.get(p, (100.0, 0)), p)
    )
    rank = {p: i for i, p in enumerate(ranked_files)}
    hashes: dict[str, str] = {}
    skipped: list[SkippedTask] = []
    per_file: dict[str, list[tuple[float, int, Candidate]]] = defaultdict(list)
    for c in cands:
        if c.target not in hashes:
            try:
                hashes[c.target] = content_hash((root / c.target).read_bytes())
            except OSError as exc:
                skipped.append(SkippedTask(c.agent, c.action, c.target, f"unreadable: {exc}"))
                continue
        weight = 1.0
        if knowledge is not None:
            known = knowledge.known_failure(
                agent=c.agent, action=c.action, target=c.target, target_hash=hashes[c.target]
            )
            if known is not None:
                skipped.append(SkippedTask(c.agent, c.action, c.target, f"known to fail (memory): {known}"))
                continue
            weight = knowledge.route_weight(c.agent, c.kind)
        order = AGENT_ORDER.index(c.agent) if c.agent in AGENT_ORDER else len(AGENT_ORDER)
        per_file[c.target].append((-weight, order, c))
    ordered: list[tuple[float, Candidate]] = []
    for tests in (False, True):
        group = [p for p in ranked_files if per_file[p] and _is_test_file(p) == tests]
        queues = [sorted(per_file[p], key=lambda t: (t[0], t[1], t[2].action)) for p in group]
        while any(queues):
            for q in queues:
                if q:
                    w, _o, c = q.pop(0)
                    ordered.append((-w, c))
    limit = len(ordered) if max_tasks is None else max(0, max_tasks)
    tasks: list[AgentTask] = []
    top = max(1, len(ranked_files) // 4)
    for n, (weight, c) in enumerate(ordered):
        if n >= limit:
            skipped.append(SkippedTask(c.agent, c.action, c.target, f"over --max-tasks {limit}"))
            continue
        if weight < 0.25:
            priority = AgentPriority.LOW
        elif rank[c.target] < top and c.agent != "format":
            priority = AgentPriority.HIGH
        else:
            priority = AgentPriority.STANDARD
        ctx = context.next_level(c.agent, f"{c.action}@{c.target}")
        tasks.append(
            AgentTask(
                id=f"t{n + 1:03d}",
                agent=c.agent,
                kind=c.kind,
                target=c.target,
                files=(c.target,),
                priority=priority,
                context=ctx,
                params={**(params or {}), **c.params, "action": c.action, "target_hash": hashes[c.target]},
            )
        )
    return Plan(tasks, skipped, rank)
