"""The dead code agent: unused private definitions and unreachable statements, removed one per task.

Finding is a whole-project reference analysis: vulture scans every Python file of the project (its
tests included, so a name the tests use is used), and a name is only a candidate when it is private
(``_name``, not a dunder or ``_sunder_`` protocol name), undecorated, and its identifier occurs
nowhere else in the project's text: not in code, strings (``getattr(obj, "_name")``), ``__all__``,
docs or tests, and does not start with a prefix the code builds names from (``f"_process_{kind}"``
looked up with ``getattr``). Public names are never candidates. Unreachable code is vulture's 100%-confidence
finding (statements after ``return``/``raise``/``continue``/``break``).

Removal is a LibCST edit: the definition goes with the comments attached to it; a comment separated
from it by a blank line (a section heading) stays.
"""

from __future__ import annotations

import ast
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import libcst as cst
from libcst.metadata import MetadataWrapper, PositionProvider

from pyagent.agents.base import BaseAgent
from pyagent.agents.worker import AgentOutcome

if TYPE_CHECKING:
    from pyagent.model.task import AgentTask

__all__ = ["DeadCodeAgent", "DeadItem", "find_dead_code", "remove_dead"]

DOC_SUFFIXES = (".rst", ".md", ".txt", ".cfg", ".toml", ".ini")
_BLOCK_ENDERS = frozenset({"return", "raise", "continue", "break"})
_KINDS = frozenset({"function", "class", "method", "unreachable_code"})


@dataclass(frozen=True)
class DeadItem:
    """One removable thing: a private definition by name, or unreachable lines."""

    path: str  # POSIX, relative to the project root
    kind: str  # function | class | method | unreachable_code
    name: str  # the definition's name; for unreachable code, the statement that ends the block
    line: int
    last_line: int

    def to_params(self) -> dict[str, Any]:
        return {"kind": self.kind, "name": self.name, "line": self.line, "last_line": self.last_line}


def _private(name: str) -> bool:
    return (
        name.startswith("_")
        and not (name.startswith("__") and name.endswith("__"))
        and not name.endswith("_")  # _sunder_ names are protocols (enum, IPython, numpy)
    )


def _starts_at(node: ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef, line: int) -> bool:
    """vulture's first line of a definition is its first decorator's line when it has one."""
    return line in (node.lineno, *(d.lineno for d in node.decorator_list[:1]))


def _decorated_or_subclassing(tree: ast.Module, name: str, line: int) -> bool:
    """Decorators may register a definition (a pytest fixture, a route); a method of a class with
    bases may be called by the base."""
    for node in ast.walk(tree):
        if isinstance(node, ast.ClassDef) and node.bases:
            for item in node.body:
                if isinstance(item, ast.FunctionDef | ast.AsyncFunctionDef) and item.name == name and _starts_at(item, line):
                    return True
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef) and node.name == name and _starts_at(node, line):
            return bool(node.decorator_list)
    return False


_PREFIX = re.compile(r"^_?[A-Za-z][A-Za-z0-9]*_\w*$|^_[A-Za-z0-9_]*$")


def _name_prefixes(tree: ast.AST) -> set[str]:
    """Name prefixes code builds at run time: ``f"_process_{kind}"``, ``"_visit_" + kind``,
    ``"_on_{}".format(kind)``, ``"_do_%s" % kind`` (``getattr`` dispatch, as sqlparse's filters do)."""
    out: set[str] = set()
    for node in ast.walk(tree):
        head: ast.AST | None = None
        if isinstance(node, ast.JoinedStr) and node.values:
            head = node.values[0]
        elif isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add | ast.Mod):
            head = node.left
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr == "format"
        ):
            head = node.func.value
        if isinstance(head, ast.Constant) and isinstance(head.value, str):
            text = re.split(r"[{%]", head.value, maxsplit=1)[0]
            if len(text) > 1 and _PREFIX.match(text):
                out.add(text)
    return out


def find_dead_code(root: str | os.PathLike[str], files: Sequence[str]) -> list[DeadItem]:
    """Dead code in ``files`` (POSIX, relative to ``root``: the project's Python files, tests included)."""
    import vulture

    root = Path(root)
    scanner = vulture.Vulture(verbose=False)
    scanner.scavenge([str(root / f) for f in files if f.endswith(".py")])
    texts: list[str] = []
    for rel in files:
        if rel.endswith((".py", *DOC_SUFFIXES)):
            try:
                texts.append((root / rel).read_text(encoding="utf-8", errors="replace"))
            except OSError:
                continue
    corpus = "\n".join(texts)
    trees: dict[str, ast.Module] = {}
    prefixes: set[str] | None = None  # built on the first candidate (most projects have none)
    out: list[DeadItem] = []
    for item in scanner.get_unused_code(min_confidence=60):
        if item.typ not in _KINDS:
            continue
        try:
            rel = Path(item.filename).resolve().relative_to(root.resolve()).as_posix()
        except ValueError:
            continue
        if item.typ == "unreachable_code":
            # only whole statements after a block-ending one; vulture also flags dead branches of
            # expressions (``a if False else b``), which are not statements we could delete
            if item.confidence >= 100 and str(item.name) in _BLOCK_ENDERS:
                out.append(DeadItem(rel, item.typ, str(item.name), item.first_lineno, item.last_lineno))
            continue
        name = str(item.name)
        if not _private(name) or len(re.findall(rf"\b{re.escape(name)}\b", corpus)) != 1:
            continue
        if prefixes is None:
            prefixes = set()
            for py in (f for f in files if f.endswith(".py")):
                try:
                    prefixes |= _name_prefixes(ast.parse((root / py).read_text(encoding="utf-8")))
                except (OSError, SyntaxError, UnicodeDecodeError, ValueError):
                    continue
        if any(name.lower().startswith(p.lower()) for p in prefixes):
            continue  # the name may be built at run time and looked up with getattr
        if rel not in trees:
            try:
                trees[rel] = ast.parse((root / rel).read_text(encoding="utf-8"))
            except (OSError, SyntaxError, UnicodeDecodeError):
                continue
        if _decorated_or_subclassing(trees[rel], name, item.first_lineno):
            continue
        out.append(DeadItem(rel, item.typ, name, item.first_lineno, item.last_lineno))
    return out


def _split_comments(lines: Sequence[cst.EmptyLine]) -> tuple[list[cst.EmptyLine], list[cst.EmptyLine]]:
    """(lines that stay, lines that go with the definition): attached comments go, headings stay."""
    last_blank = max((i for i, ln in enumerate(lines) if ln.comment is None), default=-1)
    return list(lines[: last_blank + 1]), list(lines[last_blank + 1 :])


class _Remover(cst.CSTTransformer):
    METADATA_DEPENDENCIES = (PositionProvider,)

    def __init__(self, kind: str, name: str, line: int, last_line: int) -> None:
        super().__init__()
        self.kind, self.name, self.line, self.last_line = kind, name, line, last_line
        self.removed = 0

    def _doomed(self, node: cst.CSTNode) -> bool:
        if self.kind == "unreachable_code":
            start = self.get_metadata(PositionProvider, node).start.line
            return self.line <= start <= self.last_line
        if isinstance(node, cst.FunctionDef | cst.ClassDef) and node.name.value == self.name:
            span = self.get_metadata(PositionProvider, node)
            want_class = self.kind == "class"
            return (
                isinstance(node, cst.ClassDef) == want_class and span.start.line <= self.line <= span.end.line
            )
        return False

    def _filter(
        self, original: Sequence[cst.BaseStatement], updated: Sequence[cst.BaseStatement]
    ) -> tuple[list[cst.BaseStatement], list[cst.EmptyLine]] | None:
        """The statements that stay (and comments left over at the end), or None when nothing goes."""
        out: list[cst.BaseStatement] = []
        carry: list[cst.EmptyLine] = []
        removed = 0
        for o, u in zip(original, updated, strict=True):
            if not isinstance(u, cst.SimpleStatementLine | cst.BaseCompoundStatement):
                out.append(u)
                continue
            if self._doomed(o):
                stays, _goes = _split_comments(u.leading_lines)
                while stays and stays[-1].comment is None:
                    stays.pop()
                carry.extend(stays)
                removed += 1
                continue
            if carry:
                u = u.with_changes(leading_lines=[*carry, *u.leading_lines])
                carry = []
            out.append(u)
        if not removed or not out:  # never leave an empty block behind
            return None
        self.removed += removed
        return out, carry

    def leave_IndentedBlock(
        self, original: cst.IndentedBlock, updated: cst.IndentedBlock
    ) -> cst.IndentedBlock:
        kept = self._filter(original.body, updated.body)
        if kept is None:
            return updated
        body, rest = kept
        return updated.with_changes(body=body, footer=[*rest, *updated.footer])

    def leave_Module(self, original: cst.Module, updated: cst.Module) -> cst.Module:
        kept = self._filter(original.body, updated.body)
        if kept is None:
            return updated
        body, rest = kept
        return updated.with_changes(body=body, footer=[*rest, *updated.footer])


def remove_dead(source: str, kind: str, name: str, line: int, last_line: int) -> tuple[str, int]:
    """``source`` without the dead item, and how many statements went (0: not found, nothing changed)."""
    wrapper = MetadataWrapper(cst.parse_module(source))
    remover = _Remover(kind, name, line, last_line)
    new = wrapper.visit(remover).code
    if remover.removed == 0:
        return source, 0
    return new, remover.removed


class DeadCodeAgent(BaseAgent):
    """Removes one :class:`DeadItem` (``task.params``) from ``task.target``."""

    name = "deadcode"
    capabilities = frozenset({"dead-code"})
    commands: tuple[str, ...] = ()

    async def run(self, task: AgentTask, workspace: Path) -> AgentOutcome:
        p = task.params
        kind, name = str(p.get("kind", "")), str(p.get("name", ""))
        if kind not in _KINDS:
            return AgentOutcome(note="", error=f"unknown dead code kind {kind!r}")
        file = workspace / task.target
        try:
            source = file.read_text(encoding="utf-8")
            new, removed = remove_dead(source, kind, name, int(p.get("line", 0)), int(p.get("last_line", 0)))
        except (OSError, UnicodeDecodeError, cst.ParserSyntaxError) as exc:
            return AgentOutcome(note="", error=f"skipped: {task.target} cannot be edited ({exc})")
        if not removed:
            return AgentOutcome(note="", error=f"skipped: {kind} {name} not found in {task.target}")
        file.write_text(new, encoding="utf-8")
        lines = source.count("\n") - new.count("\n")
        what = (
            f"unreachable code after `{name}`"
            if kind == "unreachable_code"
            else f"unused private {kind} {name}"
        )
        return AgentOutcome(note=f"removed {what} ({lines} line(s); no reference anywhere in the project)")
