"""From an audit to a task list: worst code first, one small attributable change per task.

Sources of tasks: ruff findings with a SAFE fix under the project's own rules (one task per rule
and file), files the project's declared formatter would change (none when it declares none), and,
with an LLM, functions over the complexity threshold and files missing
docstrings. The knowledge backend vetoes changes known to fail on the same file content (the
report lists them) and its route weights order the agents.
"""

from __future__ import annotations

import fnmatch
import os
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pyagent.agents.fixers import FAMILIES, agent_for_rule
from pyagent.model.priority import AgentPriority
from pyagent.model.status import SkipReason
from pyagent.model.task import AgentTask, content_hash

if TYPE_CHECKING:
    from pyagent.agents.deprecation import WarningMatch
    from pyagent.agents.ruff import Finding
    from pyagent.health import AuditReport
    from pyagent.model.context import CascadeContext
    from pyagent.model.knowledge import KnowledgeBackend

__all__ = ["AGENT_ORDER", "Candidate", "Plan", "SkippedTask", "TypesRequest", "plan_tasks"]

# Order of agents on one file: cheap mechanical fixes first, formatting after them, LLM work last.
AGENT_ORDER: tuple[str, ...] = (*FAMILIES, "deprecation", "format", "deadcode", "complexity", "types", "docstring", "refactor")


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
    reason: str  # for people, with the details
    why: SkipReason  # for code: which kind of skip this is


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
    from pyagent.agents.impact import is_test_path

    return is_test_path(path)


def _over_threshold(
    audit: AuditReport, agent: str, kind: str, max_complexity: int, *, only: str | None = None
) -> list[Candidate]:
    """One task per function over ``max_complexity`` in the project's own (non-test) code."""
    out: list[Candidate] = []
    for fh in audit.files:
        if fh.error or _is_test_file(fh.path) or (only is not None and fh.path != only):
            continue
        for fn in fh.functions:
            if fn.complexity > max_complexity:
                params = {"function": fn.qualname, "complexity": fn.complexity, "max_complexity": max_complexity}
                out.append(Candidate(agent, kind, f"{agent}:{fn.qualname}", fh.path, params))
    return out


def _dead_code(root: Path) -> list[Candidate]:
    """One task per unused private definition or unreachable block in the project's own code."""
    from pyagent.agents.deadcode import find_dead_code
    from pyagent.pipeline.workspace import project_files

    files = [f for f in project_files(root) if f.endswith(".py")]
    return [
        Candidate("deadcode", "dead-code", f"deadcode:{item.name}@{item.line}", item.path, item.to_params())
        for item in find_dead_code(root, files)
        if not _is_test_file(item.path)
    ]


@dataclass(frozen=True)
class TypesRequest:
    """The types agent's inputs: the project's type checker (None: tests only), what the baseline's
    tracer saw ({path: {qualname: {"args": ..., "returns": ...}}}) and the oldest Python it supports."""

    checker: str | None
    traced: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)
    min_version: tuple[int, int] = (3, 8)


def _type_annotations(root: Path, audit: AuditReport, req: TypesRequest) -> list[Candidate]:
    """One task per project (non-test) file with annotations to add."""
    from pyagent.agents.typehints import infer_annotations

    out: list[Candidate] = []
    for fh in audit.files:
        if fh.error or _is_test_file(fh.path):
            continue
        try:
            source = (root / fh.path).read_text(encoding="utf-8")
            found = infer_annotations(source, req.traced.get(fh.path), min_version=req.min_version)
        except (OSError, SyntaxError, UnicodeDecodeError, ValueError):
            continue
        if found:
            params = {"annotations": {a.qualname: a.to_params() for a in found}, "checker": req.checker}
            out.append(Candidate("types", "type-annotations", "types:annotate", fh.path, params))
    return out


def candidates(
    audit: AuditReport,
    findings: Sequence[Finding],
    unformatted: Sequence[str],
    *,
    llm: bool = False,
    max_complexity: int = 10,
    root: str | os.PathLike[str] | None = None,
    formatter: str | None = "ruff",
    exclude: Sequence[str] = (),
    agents: Sequence[str] | None = None,
    warnings: Sequence[WarningMatch] = (),
    types: TypesRequest | None = None,
) -> list[Candidate]:
    """Every change worth trying, unordered.

    ``unformatted`` files get a format task only when ``formatter`` names the project's formatter;
    paths matching ``exclude`` and agents not in ``agents`` (None: all) are left out; ``types`` (None:
    the project neither type-checks nor opted in) asks for the types agent's tasks.
    """
    out = _candidates(
        audit, findings, unformatted if formatter else (), llm, max_complexity, root, formatter, warnings
    )
    if types is not None and root is not None:
        out.extend(_type_annotations(Path(root), audit, types))
    return [
        c
        for c in out
        if not excluded(c.target, exclude) and (agents is None or c.agent in agents)
    ]


def excluded(path: str, patterns: Sequence[str]) -> bool:
    """``[tool.pyagent] exclude``: a glob on the POSIX path, or a folder the path is under."""
    return any(
        fnmatch.fnmatch(path, p) or path.startswith(p.rstrip("/") + "/") for p in patterns
    )


def _candidates(
    audit: AuditReport,
    findings: Sequence[Finding],
    unformatted: Sequence[str],
    llm: bool,
    max_complexity: int,
    root: str | os.PathLike[str] | None,
    formatter: str | None,
    warnings: Sequence[WarningMatch],
) -> list[Candidate]:
    out: list[Candidate] = []
    deprecations: dict[tuple[str, str], list[WarningMatch]] = defaultdict(list)
    for w in warnings:
        if w.rule is not None:
            deprecations[(w.path, w.rule)].append(w)
    for (path, code), matched in sorted(deprecations.items()):
        params = {"rule": code, "warning": f"{matched[0].category}: {matched[0].message}", "count": len(matched)}
        out.append(Candidate("deprecation", "deprecation-fix", f"deprecation:{code}", path, params))
    by_rule: dict[tuple[str, str], list[Finding]] = defaultdict(list)
    for f in findings:
        if f.fix == "safe" and agent_for_rule(f.code) and (f.path, f.code) not in deprecations:
            by_rule[(f.path, f.code)].append(f)
    for (path, code), group in by_rule.items():
        agent = agent_for_rule(code)
        assert agent is not None
        params = {"rule": code, "message": group[0].message, "count": len(group)}
        out.append(Candidate(agent, "ruff-fix", f"{agent}:{code}", path, params))
    out.extend(
        Candidate("format", "format", "format", path, {"formatter": formatter}) for path in unformatted
    )
    if root is not None:
        out.extend(_dead_code(Path(root)))
    if not llm:  # offline, the complexity agent's structural refactorings; with an LLM, the refactor agent
        out.extend(_over_threshold(audit, "complexity", "offline-refactor", max_complexity))
    if llm:
        from pyagent.agents.docstrings import missing_docstrings

        for fh in audit.files:
            if fh.error or _is_test_file(fh.path):
                continue
            out.extend(_over_threshold(audit, "refactor", "llm-refactor", max_complexity, only=fh.path))
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
                skipped.append(SkippedTask(c.agent, c.action, c.target, f"unreadable: {exc}", SkipReason.UNREADABLE))
                continue
        weight = 1.0
        if knowledge is not None:
            known = knowledge.known_failure(
                agent=c.agent, action=c.action, target=c.target, target_hash=hashes[c.target]
            )
            if known is not None:
                skipped.append(SkippedTask(
                    c.agent, c.action, c.target, f"known to fail (memory): {known}", SkipReason.KNOWN_FAILURE
                ))
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
            skipped.append(SkippedTask(c.agent, c.action, c.target, f"over --max-tasks {limit}", SkipReason.OVER_LIMIT))
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
