"""The offline complexity agent: structural, behaviour-preserving refactorings of one function.

Three moves, tried in this order on the function a task names:

* **guard clauses** - ``if c: ...exit`` followed by ``else: rest`` loses its ``else`` (the rest is
  dedented), and ``if c: long else: short-exit`` becomes ``if not c: short-exit`` + ``long``;
* **merged conditions** - ``if a:`` whose whole body is ``if b:`` (no ``else`` on either) becomes
  ``if a and b:``;
* **extract helper** - while the function is still over the threshold, the block (loop body or
  branch) that splits its complexity best becomes a helper next to it.

LibCST does the first two (a concrete syntax tree: comments and layout around an edit survive).
Extraction uses rope's extract-method, which computes the helper's parameters and return values
from the block's data flow; we chose it over a hand-written data-flow pass on LibCST because rope
already handles reads-before-writes, values used after the block and methods (``self.`` helpers,
``@staticmethod`` kept). A block is offered to rope only when nothing in it escapes the block
(``return``, ``yield``, ``await``, ``break``/``continue`` of an outer loop, ``global``/``nonlocal``,
nested definitions, frame introspection), and rope's result is rejected when a value it returns may
be unassigned. Anything we cannot do safely is a :class:`RefactorSkipped` with the reason; the
source is never half-changed.
"""

from __future__ import annotations

import ast
import re
import tempfile
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import libcst as cst

from pyagent.agents.base import BaseAgent
from pyagent.agents.helper_names import helper_name, unique_name
from pyagent.agents.mixins.auditor import AuditorMixin
from pyagent.agents.typehints import TypeCheckUnavailable, type_checker, type_errors
from pyagent.agents.worker import AgentOutcome

if TYPE_CHECKING:
    from pyagent.health import CodeHealthAuditor
    from pyagent.model.knowledge import KnowledgeBackend
    from pyagent.model.task import AgentTask
    from pyagent.shell import SecureShell

__all__ = ["ComplexityAgent", "RefactorSkipped", "Refactoring", "refactor_function"]

MAX_EXTRACTIONS = 10  # helpers per task, the further splits of a helper included
MAX_HELPER_PARAMS = 5  # beyond this a helper is harder to read than the block it replaced
LINE_LIMIT = 79  # lines we write stay under every line-length setting (PEP 8's 79)
MAX_MERGED_TEST = 60  # characters; a longer ``a and b`` header is worse to read than the nesting (and long)
_TEMP_NAME = "_pyagent_extracted_helper_"
_ESCAPES = (ast.Return, ast.Yield, ast.YieldFrom, ast.Await, ast.Global, ast.Nonlocal, ast.NamedExpr)
_DEFS = (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Lambda)
_INTROSPECTION = frozenset({"locals", "vars", "exec", "eval", "globals", "super", "sys._getframe"})
_TAB_INDENT = re.compile(r"^[ ]*\t", re.MULTILINE)


class RefactorSkipped(Exception):
    """The function was left alone; ``str(exc)`` says why."""


@dataclass(frozen=True)
class Refactoring:
    """A refactored module and what was done to the function."""

    source: str
    steps: tuple[str, ...]
    before: int
    after: int
    helpers: tuple[str, ...]


# -- LibCST rewrites ---------------------------------------------------------------------------


def _has_comment(lines: Sequence[cst.EmptyLine]) -> bool:
    return any(line.comment is not None for line in lines)


def _is_exit(stmt: cst.BaseStatement) -> bool:
    """The statement always leaves the block (return, raise, continue, break as its last action)."""
    if isinstance(stmt, cst.SimpleStatementLine) and stmt.body:
        return isinstance(stmt.body[-1], cst.Return | cst.Raise | cst.Continue | cst.Break)
    return False


def _block_exits(block: cst.BaseSuite) -> bool:
    return isinstance(block, cst.IndentedBlock) and bool(block.body) and _is_exit(block.body[-1])


def _parenthesize(expr: cst.BaseExpression) -> cst.BaseExpression:
    """``expr`` safe to use as an operand of ``and``/``not`` (lower-precedence forms get parentheses)."""
    loose = isinstance(expr, cst.IfExp | cst.Lambda | cst.NamedExpr | cst.Yield) or (
        isinstance(expr, cst.BooleanOperation) and isinstance(expr.operator, cst.Or)
    )
    if loose and not expr.lpar:
        return expr.with_changes(lpar=[cst.LeftParen()], rpar=[cst.RightParen()])
    return expr


def _negate(expr: cst.BaseExpression) -> cst.BaseExpression:
    """``not expr``, using the inverse operator only where the inversion is exact."""
    if isinstance(expr, cst.UnaryOperation) and isinstance(expr.operator, cst.Not) and not expr.lpar:
        return expr.expression
    inverse: dict[type[cst.BaseCompOp], Callable[[], cst.BaseCompOp]] = {
        cst.Is: cst.IsNot,
        cst.IsNot: cst.Is,
        cst.In: cst.NotIn,
        cst.NotIn: cst.In,
    }
    if isinstance(expr, cst.Comparison) and len(expr.comparisons) == 1 and not expr.lpar:
        target = expr.comparisons[0]
        make = inverse.get(type(target.operator))
        if make is not None:
            return expr.with_changes(comparisons=[target.with_changes(operator=make())])
    operand = expr
    loose = isinstance(expr, cst.BooleanOperation | cst.Comparison | cst.IfExp | cst.Lambda | cst.NamedExpr)
    if loose and not expr.lpar:
        operand = expr.with_changes(lpar=[cst.LeftParen()], rpar=[cst.RightParen()])
    return cst.UnaryOperation(operator=cst.Not(), expression=operand)


def _only_pass(block: cst.BaseSuite) -> bool:
    """The block is ``pass`` and nothing else, not even a comment."""
    if isinstance(block, cst.SimpleStatementSuite):
        return all(isinstance(s, cst.Pass) for s in block.body) and block.trailing_whitespace.comment is None
    if not isinstance(block, cst.IndentedBlock) or block.header.comment is not None or _has_comment(block.footer):
        return False
    return all(
        isinstance(st, cst.SimpleStatementLine)
        and not _has_comment(st.leading_lines)
        and st.trailing_whitespace.comment is None
        and all(isinstance(s, cst.Pass) for s in st.body)
        for st in block.body
    )


_PURE_ATOMS = (cst.Name, cst.Integer, cst.Float, cst.SimpleString)


def _pure(expr: cst.BaseExpression) -> bool:
    """Evaluating ``expr`` cannot do anything: names, literals, ``not``/``and``/``or`` of them, and
    ``is``/``==``/``!=`` between a name and a literal (no call, attribute or item access, whose
    evaluation may run code). Only then may an ``elif c: pass`` with nothing after it go."""
    if isinstance(expr, _PURE_ATOMS):
        return True
    if isinstance(expr, cst.UnaryOperation) and isinstance(expr.operator, cst.Not):
        return _pure(expr.expression)
    if isinstance(expr, cst.BooleanOperation):
        return _pure(expr.left) and _pure(expr.right)
    if isinstance(expr, cst.Comparison):
        operands = [expr.left, *(c.comparator for c in expr.comparisons)]
        identity = all(isinstance(c.operator, cst.Is | cst.IsNot) for c in expr.comparisons)
        equality = all(isinstance(c.operator, cst.Equal | cst.NotEqual) for c in expr.comparisons)
        literal = any(isinstance(o, cst.Integer | cst.Float | cst.SimpleString) for o in operands)
        return all(isinstance(o, _PURE_ATOMS) for o in operands) and (identity or (equality and literal))
    return False


class _FunctionRewriter(cst.CSTTransformer):
    """Guard clauses and merged conditions, only inside the function named ``qualname``."""

    def __init__(self, qualname: str) -> None:
        super().__init__()
        self.qualname = qualname
        self.scope: list[str] = []
        self.inside = 0
        self.steps: list[str] = []
        self._module = cst.Module(body=[])

    def _name(self, name: str) -> str:
        return ".".join([*self.scope, name])

    def visit_ClassDef(self, node: cst.ClassDef) -> None:
        self.scope.append(node.name.value)

    def leave_ClassDef(self, original: cst.ClassDef, updated: cst.ClassDef) -> cst.ClassDef:
        self.scope.pop()
        return updated

    def visit_FunctionDef(self, node: cst.FunctionDef) -> None:
        if self.inside or self._name(node.name.value) == self.qualname:
            self.inside += 1
        self.scope.extend([node.name.value, "<locals>"])

    def leave_FunctionDef(self, original: cst.FunctionDef, updated: cst.FunctionDef) -> cst.FunctionDef:
        del self.scope[-2:]
        if self.inside:
            self.inside -= 1
        return updated

    def leave_If(self, original: cst.If, updated: cst.If) -> cst.If:
        if not self.inside:
            return updated
        tail = updated.orelse
        empty_tail = isinstance(tail, cst.If) and tail.orelse is None and _only_pass(tail.body)
        if isinstance(tail, cst.If) and empty_tail and _pure(tail.test) and not _has_comment(tail.leading_lines):
            rendered = self._module.code_for_node(tail.test)
            self.steps.append(f"dropped the empty trailing `elif {rendered}: pass`")
            return updated.with_changes(orelse=None)
        if updated.orelse is not None:
            return updated
        body = updated.body
        if not isinstance(body, cst.IndentedBlock) or len(body.body) != 1 or _has_comment(body.footer):
            return updated
        inner = body.body[0]
        if not isinstance(inner, cst.If) or inner.orelse is not None or _has_comment(inner.leading_lines):
            return updated
        if not isinstance(inner.body, cst.IndentedBlock):
            return updated
        outer_comment, inner_comment = body.header.comment, inner.body.header.comment
        if outer_comment is not None and inner_comment is not None:
            return updated
        test = cst.BooleanOperation(
            left=_parenthesize(updated.test), operator=cst.And(), right=_parenthesize(inner.test)
        )
        rendered = self._module.code_for_node(test)
        if len(rendered) > MAX_MERGED_TEST or "\n" in rendered:
            return updated
        header = body.header if outer_comment is not None else inner.body.header
        self.steps.append(f"merged nested conditions into `if {rendered}:`")
        return updated.with_changes(test=test, body=inner.body.with_changes(header=header))

    def leave_IndentedBlock(
        self, original: cst.IndentedBlock, updated: cst.IndentedBlock
    ) -> cst.IndentedBlock:
        if not self.inside:
            return updated
        out: list[cst.BaseStatement] = []
        changed = False
        for stmt in updated.body:
            flattened = self._guard(stmt)
            changed = changed or flattened is not None
            out.extend(flattened if flattened is not None else [stmt])
        return updated.with_changes(body=out) if changed else updated

    def _guard(self, stmt: cst.BaseStatement) -> list[cst.BaseStatement] | None:
        """``stmt`` as guard clause + dedented rest, or None when it is not that shape."""
        if not isinstance(stmt, cst.If) or not isinstance(stmt.orelse, cst.Else):
            return None
        orelse = stmt.orelse
        if not isinstance(orelse.body, cst.IndentedBlock) or not isinstance(stmt.body, cst.IndentedBlock):
            return None
        if _has_comment(orelse.leading_lines) or orelse.body.header.comment is not None:
            return None
        if _has_comment(orelse.body.footer) or _has_comment(stmt.body.footer):
            return None
        if _block_exits(stmt.body):
            self.steps.append("early exit: dropped the `else` after a branch that always leaves")
            return [stmt.with_changes(orelse=None), *orelse.body.body]
        if _block_exits(orelse.body) and len(orelse.body.body) < len(stmt.body.body):
            if stmt.body.header.comment is not None:
                return None
            guard = stmt.with_changes(test=_negate(stmt.test), body=orelse.body, orelse=None)
            self.steps.append("guard clause: the short exiting branch first, the main path dedented")
            return [guard, *stmt.body.body]
        return None


def _rewrite(source: str, qualname: str) -> tuple[str, list[str]]:
    """Guard clauses and merged conditions in ``qualname`` until nothing changes."""
    steps: list[str] = []
    for _ in range(10):
        module = cst.parse_module(source)
        rewriter = _FunctionRewriter(qualname)
        new = module.visit(rewriter).code
        if new == source:
            break
        steps.extend(rewriter.steps)
        source = new
    return source, steps


# -- extraction --------------------------------------------------------------------------------


def _decisions(nodes: Sequence[ast.AST]) -> int:
    """C901 decision points inside ``nodes`` (what moving them out takes away from the caller)."""
    count = 0
    for top in nodes:
        for node in ast.walk(top):
            branches = isinstance(node, ast.If | ast.For | ast.AsyncFor | ast.While | ast.ExceptHandler)
            try_else = isinstance(node, ast.Try | ast.TryStar) and bool(node.orelse)
            if branches or try_else or isinstance(node, ast.match_case):
                count += 1
    return count


def _escape_reason(block: Sequence[ast.stmt], *, returns_ok: bool = False) -> str | None:
    """Why ``block`` cannot move into a helper unchanged, or None (``returns_ok``: for a block the
    caller will ``return`` the helper's result of, its own ``return`` statements may stay)."""

    def walk(node: ast.AST, loop_depth: int) -> str | None:
        if returns_ok and isinstance(node, ast.Return):
            pass
        elif isinstance(node, _ESCAPES):
            return f"`{type(node).__name__.lower()}` inside the block"
        if isinstance(node, _DEFS):
            return "a nested definition inside the block"
        if isinstance(node, ast.Break | ast.Continue) and loop_depth == 0:
            return f"`{type(node).__name__.lower()}` of a loop outside the block"
        if isinstance(node, ast.Delete) and any(isinstance(t, ast.Name) for t in node.targets):
            return "`del` of a local name inside the block"
        if isinstance(node, ast.Call):
            func = ast.unparse(node.func)
            if func in _INTROSPECTION:
                return f"`{func}()` inside the block"
        if isinstance(node, ast.AsyncFor | ast.AsyncWith):
            return "async statements inside the block"
        inner = loop_depth + 1 if isinstance(node, ast.For | ast.While) else loop_depth
        for child in ast.iter_child_nodes(node):
            if isinstance(node, ast.For | ast.While) and child in node.orelse:
                why = walk(child, loop_depth)
            else:
                why = walk(child, inner)
            if why:
                return why
        return None

    for stmt in block:
        why = walk(stmt, 0)
        if why:
            return why
    return None


@dataclass(frozen=True)
class _Block:
    stmts: tuple[ast.stmt, ...]
    decisions: int
    kind: str  # loop | branch | else | try | with
    owner: ast.stmt


def _find_function(tree: ast.Module, qualname: str) -> tuple[ast.FunctionDef | ast.AsyncFunctionDef, bool]:
    """The function and whether it is a method of a top-level class (extraction needs either)."""
    parts = qualname.split(".")
    body: list[ast.stmt] = tree.body
    in_class = False
    for i, part in enumerate(parts):
        found = next(
            (
                n
                for n in body
                if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef) and n.name == part
            ),
            None,
        )
        if found is None:
            break
        if i == len(parts) - 1 and isinstance(found, ast.FunctionDef | ast.AsyncFunctionDef):
            return found, in_class
        if not isinstance(found, ast.ClassDef) or i > 0:
            break
        in_class, body = True, found.body
    raise RefactorSkipped(f"{qualname} is not a module-level function or method (nested code is left alone)")


def _blocks(fn: ast.FunctionDef | ast.AsyncFunctionDef, lines: Sequence[str]) -> list[_Block]:
    out: list[_Block] = []

    def add(stmts: list[ast.stmt], kind: str, owner: ast.stmt) -> None:
        if stmts:
            out.append(_Block(tuple(stmts), _decisions(stmts), kind, owner))

    def visit(stmts: list[ast.stmt]) -> None:
        for s in stmts:
            if isinstance(s, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                continue
            if isinstance(s, ast.If | ast.For | ast.While | ast.Try | ast.With):
                is_elif = isinstance(s, ast.If) and lines[s.lineno - 1].lstrip().startswith("elif")
                if not is_elif:  # the whole statement (an if/elif chain, a loop, a try) moves as one
                    add([s], "statement", s)
            if isinstance(s, ast.For | ast.While):
                add(s.body, "loop", s)
            elif isinstance(s, ast.If):
                add(s.body, "branch", s)
                first = s.orelse[0] if s.orelse else None
                is_elif = first is not None and lines[first.lineno - 1].lstrip().startswith("elif")
                if s.orelse and not is_elif:
                    add(s.orelse, "else", s)
            elif isinstance(s, ast.With):
                add(s.body, "with", s)
            elif isinstance(s, ast.Try):
                add(s.body, "try", s)
                for h in s.handlers:
                    add(h.body, "except", s)
            for field_name in ("body", "orelse", "finalbody"):
                visit(getattr(s, field_name, []) or [])
            for h in getattr(s, "handlers", []) or []:
                visit(h.body)

    visit(fn.body)
    return out


def _offset(lines: Sequence[str], lineno: int, col_bytes: int) -> int:
    """Character offset of (1-based line, UTF-8 byte column) in the joined source."""
    before = sum(len(line) for line in lines[: lineno - 1])
    text = lines[lineno - 1]
    return before + len(text.encode("utf-8")[:col_bytes].decode("utf-8", errors="ignore"))


class _Leaves(Exception):
    """Marker: every path through a block leaves it (raise/return), so it assigns "everything"."""


def _definitely_assigned(body: Sequence[ast.stmt]) -> set[str]:
    """Names every path through ``body`` that reaches its end assigns.

    ``if``/``else`` and ``try``/``except`` count when every branch that falls through assigns the
    name (a branch ending in ``raise`` does not fall through); loop bodies may not run at all.
    """
    try:
        return _assigned_on_all_paths(body)
    except _Leaves:
        return set()


def _assigned_on_all_paths(body: Sequence[ast.stmt]) -> set[str]:
    names: set[str] = set()

    def branch(stmts: Sequence[ast.stmt]) -> set[str] | None:
        try:
            return _assigned_on_all_paths(stmts)
        except _Leaves:
            return None  # this branch never falls through

    def meet(options: list[set[str] | None]) -> set[str]:
        live = [o for o in options if o is not None]
        if not live:
            raise _Leaves
        return set.intersection(*live)

    for stmt in body:
        targets: list[ast.expr] = []
        if isinstance(stmt, ast.Raise | ast.Return):
            raise _Leaves
        if isinstance(stmt, ast.Assign):
            targets = list(stmt.targets)
        elif isinstance(stmt, ast.AnnAssign | ast.AugAssign) and stmt.value is not None:
            targets = [stmt.target]
        elif isinstance(stmt, ast.With):
            targets = [i.optional_vars for i in stmt.items if i.optional_vars is not None]
            names |= _assigned_on_all_paths(stmt.body)
        elif isinstance(stmt, ast.Import | ast.ImportFrom):
            names.update((a.asname or a.name).split(".")[0] for a in stmt.names)
        elif isinstance(stmt, ast.If) and stmt.orelse:
            names |= meet([branch(stmt.body), branch(stmt.orelse)])
        elif isinstance(stmt, ast.Try) and not stmt.finalbody:
            main = branch([*stmt.body, *stmt.orelse])
            names |= meet([main, *(branch(h.body) for h in stmt.handlers)])
        for t in targets:
            names.update(n.id for n in ast.walk(t) if isinstance(n, ast.Name))
    return names


def _stored(stmts: Sequence[ast.AST]) -> set[str]:
    """Every name ``stmts`` may bind, on any path."""
    out: set[str] = set()
    for st in stmts:
        for n in ast.walk(st):
            if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store):
                out.add(n.id)
            elif isinstance(n, ast.ExceptHandler) and n.name:
                out.add(n.name)
            elif isinstance(n, ast.Import | ast.ImportFrom):
                out.update((x.asname or x.name).split(".")[0] for x in n.names)
    return out


def _bound_on_entry(
    fn: ast.FunctionDef | ast.AsyncFunctionDef, first: ast.stmt, *, on_some_path: bool = False
) -> set[str]:
    """Names certainly bound when control reaches ``first``: the function's parameters, what every
    path through the statements before it (in each enclosing body) assigns, and the targets of the
    loops, ``with`` items and ``except`` clauses around it.

    ``on_some_path``: names that may be bound there instead (anything the statements before it
    assign on any path, and all a loop around it assigns, as the loop's next turn sees it).
    """
    a = fn.args
    names = {p.arg for p in [*a.posonlyargs, *a.args, *a.kwonlyargs]}
    names.update(p.arg for p in (a.vararg, a.kwarg) if p is not None)
    before = _stored if on_some_path else _definitely_assigned

    def contains(stmts: Sequence[ast.stmt]) -> bool:
        return any(first is node for st in stmts for node in ast.walk(st))

    def search(body: Sequence[ast.stmt]) -> None:
        for i, stmt in enumerate(body):
            if stmt is first:
                names.update(before(body[:i]))
                return
            subs: list[tuple[list[ast.stmt], ast.AST | None]] = []
            for field_name in ("body", "orelse", "finalbody"):
                subs.append((getattr(stmt, field_name, None) or [], None))
            subs += [(h.body, h) for h in getattr(stmt, "handlers", None) or []]
            subs += [(c.body, None) for c in getattr(stmt, "cases", None) or []]
            for sub, handler in subs:
                if not contains(sub):
                    continue
                names.update(before(body[:i]))
                if on_some_path and isinstance(stmt, ast.For | ast.AsyncFor | ast.While):
                    names.update(_stored([stmt]))
                if isinstance(stmt, ast.For | ast.AsyncFor) and sub is stmt.body:
                    names.update(n.id for n in ast.walk(stmt.target) if isinstance(n, ast.Name))
                if isinstance(stmt, ast.With | ast.AsyncWith):
                    for item in stmt.items:
                        if item.optional_vars is not None:
                            names.update(n.id for n in ast.walk(item.optional_vars) if isinstance(n, ast.Name))
                if isinstance(handler, ast.ExceptHandler) and handler.name:
                    names.add(handler.name)
                search(sub)
                return

    search(fn.body)
    return names


def _function_reads(fn: ast.AST) -> list[ast.Name]:
    """Loads of the function's own locals: not names a comprehension or lambda binds for itself."""
    out: list[ast.Name] = []

    def walk(node: ast.AST, bound: frozenset[str]) -> None:
        if isinstance(node, ast.ListComp | ast.SetComp | ast.GeneratorExp | ast.DictComp):
            inner = bound | {
                n.id for g in node.generators for n in ast.walk(g.target) if isinstance(n, ast.Name)
            }
            for g in node.generators:
                walk(g.iter, bound if g is node.generators[0] else inner)
                for cond in g.ifs:
                    walk(cond, inner)
            for part in (node.key, node.value) if isinstance(node, ast.DictComp) else (node.elt,):
                walk(part, inner)
            return
        if isinstance(node, ast.Lambda):
            params = {a.arg for a in [*node.args.posonlyargs, *node.args.args, *node.args.kwonlyargs]}
            walk(node.body, bound | params)
            return
        if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Load) and node.id not in bound:
            out.append(node)
        for child in ast.iter_child_nodes(node):
            walk(child, bound)

    walk(fn, frozenset())
    return out


def _values_used_outside(fn: ast.FunctionDef | ast.AsyncFunctionDef, block: _Block) -> set[str]:
    """Names the block assigns that the rest of the function may read afterwards (the helper must
    return them): reads after the block, and reads anywhere in a loop around it (the next turn)."""
    first = block.stmts[0].lineno
    last = block.stmts[-1].end_lineno or block.stmts[-1].lineno
    assigned = {
        n.id
        for s in block.stmts
        for n in ast.walk(s)
        if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store)
    }
    loops = [
        (n.lineno, n.end_lineno or n.lineno)
        for n in ast.walk(fn)
        if isinstance(n, ast.For | ast.While | ast.AsyncFor) and n.lineno < first and (n.end_lineno or 0) >= last
    ]
    read_outside = {
        n.id
        for n in _function_reads(fn)
        if not first <= n.lineno <= last
        and (n.lineno > last or any(lo <= n.lineno <= hi for lo, hi in loops))
    }
    return assigned & read_outside


def _rope_extract(source: str, start: int, end: int) -> str:
    """rope's extract-method of ``source[start:end]`` as a helper named ``_TEMP_NAME``."""
    from rope.base.exceptions import RopeError
    from rope.base.project import Project
    from rope.refactor.extract import ExtractMethod

    with tempfile.TemporaryDirectory(prefix="pyagent-rope-") as tmp:
        (Path(tmp) / "module_under_refactor.py").write_text(source, encoding="utf-8")
        project = Project(tmp, ropefolder=None)
        try:
            resource = project.get_resource("module_under_refactor.py")
            changes = ExtractMethod(project, resource, start, end).get_changes(_TEMP_NAME)
            for change in changes.changes:
                new = getattr(change, "new_contents", None)
                if isinstance(new, str):
                    return new
        except (RopeError, SyntaxError, ValueError, AttributeError, IndexError, KeyError) as exc:
            raise RefactorSkipped(f"rope could not extract the block: {exc}") from exc
        finally:
            project.close()
    raise RefactorSkipped("rope produced no change")


def _drop_unneeded_returns(
    source: str, tree: ast.Module, helper: ast.FunctionDef, needed: set[str]
) -> str | None:
    """rope returns every name the block assigns that it sees read anywhere later, comprehension
    variables included; keep only the values the caller reads afterwards (``needed``).

    Rewrites the helper's ``return`` and the caller's assignment; None when either spans lines.
    """
    last = helper.body[-1]
    if not (isinstance(last, ast.Return) and last.value is not None):
        return source
    values = last.value.elts if isinstance(last.value, ast.Tuple) else [last.value]
    if not all(isinstance(v, ast.Name) for v in values):
        return source
    names = [v.id for v in values if isinstance(v, ast.Name)]
    keep = [n for n in names if n in needed]
    if keep == names:
        return source
    call = next(
        (
            n
            for n in ast.walk(tree)
            if isinstance(n, ast.Assign)
            and isinstance(n.value, ast.Call)
            and isinstance(n.value.func, ast.Name | ast.Attribute)
            and ast.unparse(n.value.func).endswith(_TEMP_NAME)
        ),
        None,
    )
    if call is None or len(call.targets) != 1:
        return None
    target = call.targets[0]
    targets = target.elts if isinstance(target, ast.Tuple) else [target]
    if [ast.unparse(t) for t in targets] != names:
        return None
    if last.lineno != last.end_lineno or call.lineno != call.end_lineno:
        return None
    lines = source.splitlines(keepends=True)
    pad = lines[last.lineno - 1][: last.col_offset]
    new_return = f"{pad}return {', '.join(keep)}\n" if keep else ""
    call_line = lines[call.lineno - 1]
    value = call_line[call.value.col_offset : call.value.end_col_offset]
    lead = call_line[: call.col_offset]
    new_call = f"{lead}{', '.join(keep)} = {value}\n" if keep else f"{lead}{value}\n"
    for lineno, text in sorted(((last.lineno, new_return), (call.lineno, new_call)), reverse=True):
        lines[lineno - 1] = text
    return "".join(lines)


def _wrap(text: str, pad: str) -> list[str]:
    """``text`` as docstring lines of at most ``LINE_LIMIT`` characters, indented by ``pad``."""
    import textwrap

    width = max(40, LINE_LIMIT - len(pad))
    # a ``code span`` is not broken over lines: its spaces are held as NUL while wrapping
    held = re.sub(r"``[^`]+``", lambda m: m.group(0).replace(" ", "\0"), text)
    wrapped = textwrap.wrap(held, width, break_long_words=False, break_on_hyphens=False)
    return [f"{pad}{line.replace(chr(0), ' ')}\n" for line in wrapped]


def _fold_long_call(line: str) -> str:
    """A helper's header or call line over ``LINE_LIMIT``, its arguments folded onto their own line.

    Every project's line-length rule allows 79 characters, so rope's one-liners are kept under it.
    """
    body = line.rstrip("\n")
    if len(body) <= LINE_LIMIT or "(" not in body:
        return line
    opening = body.index("(")
    closing = body.rfind(")")
    inner = body[opening + 1 : closing]
    if closing < opening or not inner.strip() or "(" in inner or '"' in inner or "'" in inner:
        return line
    indent = body[: len(body) - len(body.lstrip())]
    if len(indent) + 4 + len(inner.strip()) <= LINE_LIMIT:
        return f"{body[: opening + 1]}\n{indent}    {inner.strip()}\n{indent}{body[closing:]}\n"
    args = "".join(f"{indent}    {a.strip()},\n" for a in inner.split(",") if a.strip())
    return f"{body[: opening + 1]}\n{args}{indent}{body[closing:]}\n"


def _drop_params(source: str, tree: ast.Module, helper: ast.FunctionDef, names: set[str]) -> str | None:
    """``source`` with ``names`` taken out of the helper's parameters and its one call; None when
    the header or the call spans lines or passes anything but plain names."""
    call = next(
        (
            n
            for n in ast.walk(tree)
            if isinstance(n, ast.Call)
            and isinstance(n.func, ast.Name | ast.Attribute)
            and ast.unparse(n.func).endswith(_TEMP_NAME)
        ),
        None,
    )
    header_args = helper.args
    simple = not (header_args.vararg or header_args.kwarg or header_args.kwonlyargs or header_args.defaults)
    if call is None or not simple or call.keywords or not all(isinstance(a, ast.Name) for a in call.args):
        return None
    if helper.lineno != (helper.args.args[-1].end_lineno if helper.args.args else helper.lineno):
        return None
    if call.lineno != call.end_lineno:
        return None
    lines = source.splitlines(keepends=True)
    # the call first: it may sit below or above the helper, but never on the helper's header line
    call_line = lines[call.lineno - 1]
    kept_args = [ast.unparse(a) for a in call.args if not (isinstance(a, ast.Name) and a.id in names)]
    func_text = call_line[call.func.col_offset : call.func.end_col_offset]
    lines[call.lineno - 1] = (
        call_line[: call.col_offset] + f"{func_text}({', '.join(kept_args)})" + call_line[call.end_col_offset or 0 :]
    )
    header = lines[helper.lineno - 1]
    opening, closing = header.index("("), header.rindex(")")
    kept_params = [a.arg for a in helper.args.args if a.arg not in names]
    lines[helper.lineno - 1] = header[: opening + 1] + ", ".join(kept_params) + header[closing:]
    return "".join(lines)


def _finish_helper(
    source: str,
    block: _Block,
    caller: str,
    taken: set[str],
    needed: set[str],
    bound: set[str] | None = None,
    bound_somewhere: set[str] | None = None,
    *,
    caller_lines: Sequence[str],
    caller_fn: ast.FunctionDef | ast.AsyncFunctionDef | None = None,
) -> tuple[str, str]:
    """Check rope's helper, give it its name, docstring and blank lines; return (source, name)."""
    tree = ast.parse(source)
    helper: ast.FunctionDef | None = None
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef) and node.name == _TEMP_NAME:
            helper = node
    if helper is None:
        raise RefactorSkipped("rope's helper was not found in its result")
    params = [a.arg for a in helper.args.args if a.arg not in ("self", "cls")]
    if len(params) > MAX_HELPER_PARAMS:
        raise RefactorSkipped(f"the helper would need {len(params)} parameters")
    if bound is not None:
        certain, maybe = bound, bound_somewhere or bound
        unbound = [p for p in params if p not in certain]
        own = _stored(block.stmts)
        if any(p in maybe or p not in own for p in unbound):  # bound on some paths only, or a read of nothing
            first = next(p for p in unbound if p in maybe or p not in own)
            raise RefactorSkipped(f"`{first}` may have no value yet where {caller} would call the helper")
        if unbound:  # bound on no path to the block: rope passes it in, but it is the helper's own local
            dropped_params = _drop_params(source, tree, helper, set(unbound))
            if dropped_params is None:
                raise RefactorSkipped(f"`{unbound[0]}` has no value where {caller} would call the helper")
            source, tree = dropped_params, ast.parse(dropped_params)
            helper = next(n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef) and n.name == _TEMP_NAME)
            params = [p for p in params if p not in unbound]
    rewritten = _drop_unneeded_returns(source, tree, helper, needed)
    if rewritten is None:
        raise RefactorSkipped("rope's helper returns values over several lines")
    if rewritten != source:
        source, tree = rewritten, ast.parse(rewritten)
        helper = next(n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef) and n.name == _TEMP_NAME)
    placed = _as_class_member(source, tree, helper, caller)
    if placed != source:
        source, tree = placed, ast.parse(placed)
        helper = next(n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef) and n.name == _TEMP_NAME)
    module_level = helper in tree.body
    returned: list[str] = []
    last = helper.body[-1]
    if isinstance(last, ast.Return) and last.value is not None:
        values = last.value.elts if isinstance(last.value, ast.Tuple) else [last.value]
        returned = [v.id for v in values if isinstance(v, ast.Name)]
        safe = _definitely_assigned(helper.body[:-1]) | set(params)
        unsafe = [r for r in returned if r not in safe]
        if unsafe:
            raise RefactorSkipped(f"`{unsafe[0]}` is assigned only on some paths through the block")
    dropped = sorted(needed - set(returned))
    if dropped:  # rope's data flow missed a value the caller reads later
        raise RefactorSkipped(f"the helper would not hand back `{dropped[0]}`, which {caller} reads later")
    name, doc = helper_name(block.stmts, block.kind, block.owner, caller, returned, params, caller_lines)
    unique = unique_name(name, caller, taken)
    if unique is None:
        raise RefactorSkipped(f"`{name}` and `{name}_in_...` are taken: no name for the helper a reader could use")
    name = unique
    lines = source.splitlines(keepends=True)
    header = lines[helper.lineno - 1]
    if not header.rstrip().endswith(":"):
        raise RefactorSkipped("rope wrote a helper header over several lines")
    indent = re.match(r"[ \t]*", lines[helper.body[0].lineno - 1])
    pad = indent.group(0) if indent else "    "
    why = f"Split out of ``{caller}`` to keep its complexity under the threshold."
    doc_lines = [
        *_wrap(f'"""{doc}', pad),
        "\n",
        *_wrap(why, pad),
        f'{pad}"""\n',
    ]
    lines[helper.lineno : helper.lineno] = doc_lines
    extra = len(doc_lines) - 4
    if module_level:  # two blank lines around a top-level def, as PEP 8 and formatters want
        h = helper.lineno - 1
        i = h
        while i > 0 and not lines[i - 1].strip():
            i -= 1
        lines[i:h] = ["\n", "\n"]
        end = (helper.end_lineno or helper.lineno) + 4 + extra + 2 - (h - i)  # +4: the docstring
        j = end
        while j < len(lines) and not lines[j].strip():
            j += 1
        if j < len(lines):
            lines[end:j] = ["\n", "\n"]
    if caller_fn is not None:
        # a union-typed value the helper hands back: the caller would see the declared (wider) type
        narrowed = _narrowed_params(caller_fn, block.stmts[0].lineno, params) or _narrowed_params(
            caller_fn, (caller_fn.end_lineno or caller_fn.lineno) + 1, returned
        )
        if narrowed:
            raise RefactorSkipped(
                f"`{narrowed[0]}` may be narrowed from its declared type before the block (a typed helper would lose that)"
            )
        header_at = next(i for i, ln in enumerate(lines) if re.match(rf"\s*def {_TEMP_NAME}\(", ln))
        returns = _helper_returns(caller_fn, helper, returned)
        lines[header_at] = _annotated_header(lines[header_at], caller_fn, returns)
    text = re.sub(rf"\b{_TEMP_NAME}\b", name, "".join(lines))
    folded = (_fold_long_call(ln) if re.search(rf"\b{name}\(", ln) else ln for ln in text.splitlines(keepends=True))
    return "".join(folded), name


_LITERAL_TYPES = {str: "str", int: "int", float: "float", bool: "bool", bytes: "bytes"}


def _local_types(fn: ast.FunctionDef | ast.AsyncFunctionDef) -> dict[str, str]:
    """The declared types of ``fn``'s parameters, and of locals whose first binding is a plain
    literal assignment (``truncated = ''``: ``str``), which is the type mypy gives them too."""
    a = fn.args
    out = {p.arg: ast.unparse(p.annotation) for p in [*a.posonlyargs, *a.args, *a.kwonlyargs] if p.annotation}
    bindings: list[tuple[int, int, str, str | None]] = []
    for node in ast.walk(fn):
        literal: str | None = None
        single = isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name)
        if isinstance(node, ast.Assign) and single and isinstance(node.value, ast.Constant):
            literal = _LITERAL_TYPES.get(type(node.value.value))
        targets: list[ast.AST] = []
        if isinstance(node, ast.Assign):
            targets = list(node.targets)
        elif isinstance(node, ast.AnnAssign | ast.AugAssign | ast.For | ast.AsyncFor | ast.NamedExpr | ast.comprehension):
            targets = [node.target]
        elif isinstance(node, ast.With | ast.AsyncWith):
            targets = [i.optional_vars for i in node.items if i.optional_vars is not None]
        for t in targets:
            for n in ast.walk(t):
                if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store):
                    bindings.append((n.lineno, n.col_offset, n.id, literal))
    first: dict[str, str | None] = {}
    for _line, _col, name, literal in sorted(bindings, key=lambda b: (b[0], b[1])):
        first.setdefault(name, literal)
    for name, literal in first.items():
        if name not in out and literal is not None:
            out[name] = literal
    return out


def _narrowed_params(fn: ast.FunctionDef | ast.AsyncFunctionDef, line: int, names: Sequence[str]) -> list[str]:
    """Annotated parameters of ``fn`` among ``names`` whose type a checker may narrow before ``line``:
    a union reassigned there, or tested with ``isinstance``/``is None``. A helper typed with the declared
    type would lose the narrowing (mypy flagged python-slugify's ``text`` after ``text.decode``)."""
    a = fn.args
    if not any(p.annotation for p in [*a.posonlyargs, *a.args, *a.kwonlyargs]):
        return []
    # only a union (or object) narrows: reassigning a `str` parameter keeps it a `str`
    declared = {
        p.arg
        for p in [*a.posonlyargs, *a.args, *a.kwonlyargs]
        if p.annotation is not None
        and re.search(r"\||\bOptional\b|\bUnion\b|^object$", ast.unparse(p.annotation))
    }
    hit: set[str] = set()
    for node in ast.walk(fn):
        if getattr(node, "lineno", line) >= line:
            continue
        if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            hit.add(node.id)
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "isinstance":
            hit.update(n.id for n in ast.walk(node.args[0]) if isinstance(n, ast.Name) and node.args)
        elif isinstance(node, ast.Compare) and any(isinstance(op, ast.Is | ast.IsNot) for op in node.ops):
            hit.update(n.id for n in [node.left, *node.comparators] if isinstance(n, ast.Name))
    return [n for n in names if n in declared and n in hit]


def _helper_returns(
    caller: ast.FunctionDef | ast.AsyncFunctionDef, helper: ast.FunctionDef, returned: Sequence[str]
) -> str | None:
    """The helper's return type: ``None`` when it returns nothing, else the caller's types of the
    names it hands back, when all are known."""
    types = _local_types(caller)
    if not any(isinstance(n, ast.Return) and n.value is not None for n in ast.walk(helper)):
        return "None"
    if returned and isinstance(helper.body[-1], ast.Return) and all(r in types for r in returned):
        return types[returned[0]] if len(returned) == 1 else f"tuple[{', '.join(types[r] for r in returned)}]"
    return None


def _annotated_header(header: str, caller: ast.FunctionDef | ast.AsyncFunctionDef, returns: str | None) -> str:
    """The helper's one-line header with the types its caller declares for the same names, in a
    caller that annotates anything (a project that type-checks wants its new functions typed too)."""
    a = caller.args
    if caller.returns is None and not any(p.annotation for p in [*a.posonlyargs, *a.args, *a.kwonlyargs]):
        return header
    types = _local_types(caller)
    if not header.rstrip().endswith("):"):
        return header
    opening, closing = header.index("("), header.rindex(")")
    params = [x.strip() for x in header[opening + 1 : closing].split(",") if x.strip()]
    if any(not x.isidentifier() for x in params):
        return header
    written = [f"{x}: {types[x]}" if x in types and x not in ("self", "cls") else x for x in params]
    arrow = f" -> {returns}" if returns else ""
    return f"{header[: opening + 1]}{', '.join(written)}){arrow}:{header[closing + 2 :]}"


def _char_col(line: str, col_bytes: int) -> int:
    """The character index of a UTF-8 byte column (ast's offsets) in ``line``."""
    return len(line.encode("utf-8")[:col_bytes].decode("utf-8", errors="ignore"))


def _decorator_names(fn: ast.FunctionDef | ast.AsyncFunctionDef) -> set[str]:
    return {ast.unparse(d).rsplit(".", 1)[-1] for d in fn.decorator_list}


def _as_class_member(source: str, tree: ast.Module, helper: ast.FunctionDef, caller: str) -> str:
    """A helper rope put in a class, made a correct member of it.

    A method whose ``self``/``cls`` the block never uses becomes a ``@staticmethod`` (no unused
    parameter, and it still works through ``self.``); a classmethod helper that uses ``cls`` is
    called through the caller's ``cls``, not the class name (which would drop subclass overrides);
    and a helper in a class body with neither a receiver nor ``@staticmethod`` gets the decorator,
    so it is never a method without ``self``.
    """
    owner = next(
        (c for c in tree.body if isinstance(c, ast.ClassDef) and helper in c.body),
        None,
    )
    if owner is None:
        return source
    decorators = _decorator_names(helper)
    if "staticmethod" in decorators:
        return source
    lines = source.splitlines(keepends=True)
    header_no = helper.lineno - 1
    header = lines[header_no]
    pad = header[: len(header) - len(header.lstrip())]
    params = helper.args.posonlyargs + helper.args.args
    first = params[0].arg if params else None
    if first not in ("self", "cls"):
        lines.insert(header_no, f"{pad}@staticmethod\n")
        return "".join(lines)
    uses_receiver = any(
        isinstance(n, ast.Name) and n.id == first for stmt in helper.body for n in ast.walk(stmt)
    )
    if uses_receiver:
        if "classmethod" not in decorators:
            return source
        try:
            fn, _ = _find_function(tree, caller)
        except RefactorSkipped:
            return source
        receivers = fn.args.posonlyargs + fn.args.args
        if not receivers or "classmethod" not in _decorator_names(fn):
            return source
        receiver = receivers[0]
        call = next(
            (
                n
                for n in ast.walk(fn)
                if isinstance(n, ast.Call)
                and isinstance(n.func, ast.Attribute)
                and n.func.attr == _TEMP_NAME
                and isinstance(n.func.value, ast.Name)
            ),
            None,
        )
        if call is None or call.lineno != call.end_lineno or call.keywords:
            raise RefactorSkipped("rope's call of a classmethod helper is not a one-line call")
        # rope calls a classmethod helper through the class name and passes ``cls`` again as an
        # argument; call it through the caller's ``cls`` with the parameters the helper declares
        args = [ast.unparse(a) for a in call.args]
        if len(args) == len(params) and receiver.arg in args:
            args.remove(receiver.arg)
        if len(args) != len(params) - 1:
            raise RefactorSkipped("rope's call of a classmethod helper does not match its parameters")
        text = lines[call.lineno - 1]
        start, end = _char_col(text, call.col_offset), _char_col(text, call.end_col_offset or 0)
        lines[call.lineno - 1] = f"{text[:start]}{receiver.arg}.{_TEMP_NAME}({', '.join(args)}){text[end:]}"
        return "".join(lines)
    if not header.rstrip().endswith(":"):
        return source  # a header over several lines: leave rope's (correct) method as it is
    dropped = re.sub(rf"\(\s*{first}\s*(,\s*|(?=\)))", "(", header, count=1)
    if dropped == header:
        return source
    lines[header_no] = dropped
    if "classmethod" in decorators:
        for d in helper.decorator_list:
            if ast.unparse(d).rsplit(".", 1)[-1] == "classmethod":
                lines[d.lineno - 1] = lines[d.lineno - 1].replace(ast.unparse(d), "staticmethod", 1)
    else:
        lines.insert(header_no, f"{pad}@staticmethod\n")
    return "".join(lines)


# -- the whole refactoring ---------------------------------------------------------------------


def _complexities(auditor: CodeHealthAuditor, source: str, path: str) -> dict[str, int]:
    health = auditor.audit_source(source, path)
    if health.error:
        raise RefactorSkipped(f"unreadable after the edit: {health.error}")
    return {f.qualname: f.complexity for f in health.functions}


def _mi(auditor: CodeHealthAuditor, source: str, path: str) -> float | None:
    return auditor.audit_source(source, path).mi


def _check_input(source: str, path: str) -> None:
    if _TAB_INDENT.search(source):
        raise RefactorSkipped(f"{path} indents with tabs; rewriting its blocks could mix tabs and spaces")
    try:
        ast.parse(source, filename=path)
    except SyntaxError as exc:
        raise RefactorSkipped(f"{path} does not parse (line {exc.lineno}: {exc.msg})") from exc
    try:
        cst.parse_module(source)
    except cst.ParserSyntaxError as exc:
        raise RefactorSkipped(f"{path} uses syntax LibCST does not parse: {exc.message}") from exc


def _extract_once(
    source: str, qualname: str, complexity: int, accept: Callable[[str, str], str | None]
) -> tuple[str, str, str]:
    """One extraction from ``qualname``: (new source, helper name, step description).

    Blocks are tried best split first; ``accept(new_source, helper)`` returns why a result is not
    good enough (complexity not lower, MI worse), and the next block is tried.
    """
    tree = ast.parse(source)
    fn, in_class = _find_function(tree, qualname)
    lines = source.splitlines(keepends=True)
    reasons: list[str] = []
    scored: list[tuple[int, int, _Block, ast.FunctionDef | ast.AsyncFunctionDef]] = []
    # the function's own blocks, and those of functions nested in a module-level function (their
    # complexity counts as the outer one's; the helper is lifted to module level)
    homes: list[ast.FunctionDef | ast.AsyncFunctionDef] = [fn]
    if not in_class:
        homes += [
            n
            for n in fn.body
            if isinstance(n, ast.FunctionDef)
            and not n.decorator_list
            and not any(isinstance(x, ast.Nonlocal | ast.Global) for x in ast.walk(n))
        ]
    for home in homes:
        for block in _blocks(home, lines):
            if block.decisions < 2 or block.decisions >= complexity - 1:
                continue
            why = _escape_reason(block.stmts)
            if why and _returning_ok(fn, home, block, in_class):
                why = None  # every path leaves: the caller returns the helper's result
            if why:
                reasons.append(why)
                continue
            balance = max(complexity - block.decisions, block.decisions + 1)
            scored.append((balance, block.stmts[0].lineno, block, home))
    if not scored:
        detail = f" ({'; '.join(sorted(set(reasons))[:3])})" if reasons else ""
        raise RefactorSkipped(f"no block of {qualname} can be extracted safely{detail}")
    taken = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)} | {
        n.name for n in ast.walk(tree) if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef)
    }
    last_error = ""
    for _balance, _line, block, home in sorted(scored, key=lambda t: (t[0], t[1])):
        first, last = block.stmts[0], block.stmts[-1]
        start = _offset(lines, first.lineno, 0)
        end = _offset(lines, last.end_lineno or last.lineno, last.end_col_offset or 0)
        caller = qualname if home is fn else f"{qualname}.<locals>.{home.name}"
        closure: set[str] = set()
        if home is not fn:  # what the outer function has certainly bound before it defines ``home``
            closure = _bound_on_entry(fn, home)
        try:
            if _escape_reason(block.stmts) is not None:  # a returning block (see _returning_ok)
                new, name = _extract_returning(source, fn, block, qualname, taken, lines)
                refusal = accept(new, name)
                if refusal is not None:
                    last_error = refusal
                    continue
                step = f"extracted the {block.kind} block at line {first.lineno} into `return {name}(...)`"
                return new, name, step
            extracted = _rope_extract(source, start, end)
            if home is not fn:
                extracted = _lift_helper(extracted, qualname, home.name)
            new, name = _finish_helper(
                extracted,
                block,
                caller,
                taken,
                _values_used_outside(home, block),
                _bound_on_entry(home, first) | closure,
                _bound_on_entry(home, first, on_some_path=True) | closure,
                caller_lines=lines,
                caller_fn=home,
            )
            compile(new, "<refactored>", "exec", dont_inherit=True)  # symbol-table errors too
        except (RefactorSkipped, SyntaxError) as exc:
            last_error = str(exc)
            continue
        refusal = accept(new, name)
        if refusal is not None:
            last_error = refusal
            continue
        where = f"line {first.lineno}"
        return new, name, f"extracted the {block.kind} block at {where} into `{name}`"
    raise RefactorSkipped(f"no extraction of {qualname} worked: {last_error}")


def _always_leaves(stmts: Sequence[ast.stmt]) -> bool:
    """Every path through ``stmts`` ends in ``return`` or ``raise`` (no ``with``, whose manager may
    swallow a raise, no loops, whose ``break`` may fall through)."""
    if not stmts:
        return False
    last = stmts[-1]
    if isinstance(last, ast.Return | ast.Raise):
        return True
    if isinstance(last, ast.If):
        return bool(last.orelse) and _always_leaves(last.body) and _always_leaves(last.orelse)
    if isinstance(last, ast.Try) and not last.finalbody:
        return _always_leaves([*last.body, *last.orelse]) and all(_always_leaves(h.body) for h in last.handlers)
    return False


def _returning_ok(
    fn: ast.FunctionDef | ast.AsyncFunctionDef,
    home: ast.FunctionDef | ast.AsyncFunctionDef,
    block: _Block,
    in_class: bool,
) -> bool:
    """``block`` can become ``return helper(...)``: a branch of a plain module-level function
    (not a generator, no nested scopes that could see its locals change) that always leaves, and
    that has nothing but its ``return`` statements escaping it."""
    if home is not fn or in_class or isinstance(fn, ast.AsyncFunctionDef) or block.kind not in ("branch", "else"):
        return False
    inner = [n for st in fn.body for n in ast.walk(st)]
    if any(isinstance(n, (ast.Yield, ast.YieldFrom, *_DEFS)) for n in inner):
        return False
    return _always_leaves(block.stmts) and _escape_reason(block.stmts, returns_ok=True) is None


def _extract_returning(
    source: str,
    fn: ast.FunctionDef | ast.AsyncFunctionDef,
    block: _Block,
    caller: str,
    taken: set[str],
    lines: Sequence[str],
) -> tuple[str, str]:
    """``block`` (which always leaves) as a module-level helper after ``fn`` that the caller returns.

    rope refuses a region with several ``return`` statements; here no data flows out (nothing after
    the block runs), so the helper's parameters are the names it reads that are bound on entry,
    and a name it reads that is bound on no path before it must be its own local.
    """
    first, last = block.stmts[0], block.stmts[-1]
    a = fn.args
    fn_locals = _stored(fn.body) | {p.arg for p in [*a.posonlyargs, *a.args, *a.kwonlyargs]}
    fn_locals.update(p.arg for p in (a.vararg, a.kwarg) if p is not None)
    reads = {n.id for st in block.stmts for n in _function_reads(st)} & fn_locals
    certain, maybe = _bound_on_entry(fn, first), _bound_on_entry(fn, first, on_some_path=True)
    own = _stored(block.stmts)
    params: list[str] = []
    order = [p.arg for p in [*a.posonlyargs, *a.args, *a.kwonlyargs]]
    first_read: dict[str, tuple[int, int]] = {}
    for st in block.stmts:
        for x in _function_reads(st):
            first_read.setdefault(x.id, (x.lineno, x.col_offset))
    # the caller's parameters in its order, then its locals as the block first reads them
    for name in sorted(reads, key=lambda n: (order.index(n) if n in order else len(order), first_read.get(n, (0, 0)))):
        if name in certain:
            params.append(name)
        elif name in maybe or name not in own:
            raise RefactorSkipped(f"`{name}` may have no value yet where {caller} would call the helper")
    if len(params) > MAX_HELPER_PARAMS:
        raise RefactorSkipped(f"the helper would need {len(params)} parameters")
    narrowed = _narrowed_params(fn, first.lineno, params)
    if narrowed:
        raise RefactorSkipped(f"`{narrowed[0]}` may be narrowed from its declared type before the block")
    end_line = last.end_lineno or last.lineno
    body = lines[first.lineno - 1 : end_line]
    cut = first.col_offset
    if any(ln.strip() and (len(ln) - len(ln.lstrip()) < cut) for ln in body) or _TAB_INDENT.search("".join(body)):
        raise RefactorSkipped("the block's lines are not indented as one block")
    after = lines[end_line - 1][_char_col(lines[end_line - 1], last.end_col_offset or 0) :].strip()
    if lines[first.lineno - 1][:cut].strip() or (after and not after.startswith("#")):
        raise RefactorSkipped("the block shares a line with other code")
    name, doc = helper_name(block.stmts, block.kind, block.owner, caller, (), params, lines, returning=True)
    unique = unique_name(name, caller, taken)
    if unique is None:
        raise RefactorSkipped(f"`{name}` and `{name}_in_...` are taken: no name for the helper a reader could use")
    name = unique
    why = f"Split out of ``{caller}`` to keep its complexity under the threshold."
    # it returns what the caller returns
    returns = ast.unparse(fn.returns) if fn.returns is not None else None
    header = _annotated_header(f"def {name}({', '.join(params)}):\n", fn, returns)
    doc_lines = [*_wrap(f'"""{doc}', "    "), "\n", *_wrap(why, "    "), '    """\n']
    moved = ["    " + ln[cut:] if ln.strip() else "\n" for ln in body]
    call = f"{' ' * cut}return {name}({', '.join(params)})\n"
    fn_end = fn.end_lineno or fn.lineno
    out = [*lines[: first.lineno - 1], _fold_long_call(call), *lines[end_line:fn_end]]
    tail = list(lines[fn_end:])
    while tail and not tail[0].strip():
        tail.pop(0)
    helper = [_fold_long_call(header), *doc_lines, *moved]
    new = "".join([*out, "\n\n", *helper, *(["\n\n", *tail] if tail else [])])
    return new, name


def _lift_helper(source: str, outer: str, nested: str) -> str:
    """rope's helper for a block of ``outer``'s nested function ``nested``, moved from ``outer``'s
    body to module level right after ``outer`` (where it no longer counts as ``outer``'s complexity).

    Refused when the helper reads a name of ``outer``'s scope that rope did not pass in (a closure
    variable), since at module level that name would not exist.
    """
    tree = ast.parse(source)
    fn = next(n for n in tree.body if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef) and n.name == outer)
    helper = next(
        (n for n in fn.body if isinstance(n, ast.FunctionDef) and n.name == _TEMP_NAME),
        None,
    )
    if helper is None:
        raise RefactorSkipped(f"rope did not put the helper for {nested}'s block in {outer}")
    a = fn.args
    outer_names = _stored(fn.body) | {p.arg for p in [*a.posonlyargs, *a.args, *a.kwonlyargs]}
    outer_names.update(p.arg for p in (a.vararg, a.kwarg) if p is not None)
    outer_names |= {n.name for n in fn.body if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef)}
    h = helper.args
    own = _stored(helper.body) | {p.arg for p in [*h.posonlyargs, *h.args, *h.kwonlyargs]}
    free = sorted({n.id for n in _function_reads(helper) if n.id not in own and n.id in outer_names})
    lines = source.splitlines(keepends=True)
    if free:  # closure variables the block reads: at module level they come in as parameters
        rebinds = [n for n in ast.walk(fn) if isinstance(n, ast.Nonlocal) and set(n.names) & set(free)]
        call = next(
            (n for n in ast.walk(fn) if isinstance(n, ast.Call) and isinstance(n.func, ast.Name) and n.func.id == _TEMP_NAME),
            None,
        )
        header = lines[helper.lineno - 1]
        if rebinds or call is None or call.lineno != call.end_lineno or call.keywords or h.vararg or h.kwarg or h.kwonlyargs:
            raise RefactorSkipped(f"the block of {nested} reads `{free[0]}` of {outer} (a closure variable)")
        if not header.rstrip().endswith("):"):
            raise RefactorSkipped("rope wrote a helper header over several lines")
        text = lines[call.lineno - 1]
        at = _char_col(text, call.end_col_offset or 0) - 1  # the call's closing parenthesis
        lines[call.lineno - 1] = text[:at] + (", " if call.args else "") + ", ".join(free) + text[at:]
        closing = header.rindex(")")
        lines[helper.lineno - 1] = header[:closing] + (", " if h.args else "") + ", ".join(free) + header[closing:]
    start, stop = helper.lineno - 1, helper.end_lineno or helper.lineno
    while start > 0 and not lines[start - 1].strip():
        start -= 1  # the blank lines before it go with it
    body = lines[helper.lineno - 1 : stop]
    cut = helper.col_offset
    if any(line.strip() and line[:cut].strip() for line in body):
        raise RefactorSkipped("rope's helper is not indented as one block")
    moved = [line[cut:] if line.strip() else "\n" for line in body]
    end = fn.end_lineno or fn.lineno
    if end == stop:  # the helper was the outer function's last statement
        end = start
    rest = lines[:start] + lines[stop:end]
    return "".join([*rest, "\n\n", *moved, *lines[fn.end_lineno or fn.lineno :]])


def refactor_function(
    source: str, qualname: str, path: str, *, max_complexity: int, auditor: CodeHealthAuditor
) -> Refactoring:
    """Lower ``qualname``'s complexity in ``source``; raises :class:`RefactorSkipped` with a reason.

    A helper that is itself still over the threshold is split further (same moves, same checks), so
    the count of functions over the threshold goes down, not just the one function's number.
    """
    _check_input(source, path)
    before_all = _complexities(auditor, source, path)
    if qualname not in before_all:
        raise RefactorSkipped(f"function {qualname} not found in {path}")
    before = before_all[qualname]
    new, steps = _rewrite(source, qualname)
    helpers: list[str] = []
    mi_before = _mi(auditor, source, path)
    extraction_note = ""
    todo = [qualname]
    ceiling = {qualname: before}  # a helper may not be more complex than the function it came from

    def acceptor(target: str, current: int) -> Callable[[str, str], str | None]:
        def accept(candidate: str, helper: str) -> str | None:
            after = _complexities(auditor, candidate, path)
            made = next((q for q in after if q.rsplit(".", 1)[-1] == helper), helper)
            if after.get(target, current) >= current or after.get(made, 0) > max(
                ceiling[target] - 1, max_complexity
            ):
                return f"extracting `{helper}` would not lower {target}"
            mi = _mi(auditor, candidate, path)
            if mi is not None and mi_before is not None and mi < mi_before - 1e-6:
                return f"extracting `{helper}` would lower the file's maintainability index {mi_before:.2f} -> {mi:.2f}"
            return None

        return accept

    while todo and len(helpers) < MAX_EXTRACTIONS:
        target = todo[0]
        current = _complexities(auditor, new, path).get(target, 0)
        if current <= max_complexity:
            todo.pop(0)
            continue
        try:
            candidate, helper, step = _extract_once(new, target, current, acceptor(target, current))
        except RefactorSkipped as exc:
            if target == qualname:
                extraction_note = str(exc)
            todo.pop(0)
            continue
        new = candidate
        helpers.append(helper)
        steps.append(step if target == qualname else f"{step} (from the helper `{target.rsplit('.', 1)[-1]}`)")
        after = _complexities(auditor, new, path)
        made = next((q for q in after if q.rsplit(".", 1)[-1] == helper), None)
        if made is not None and after[made] > max_complexity:
            ceiling[made] = after[made]
            todo.append(made)
    current = _complexities(auditor, new, path)[qualname]
    if current >= before:
        why = extraction_note or "no guard clause, nested condition or extractable block found"
        raise RefactorSkipped(f"{qualname} stays at complexity {before}: {why}")
    try:
        cst.parse_module(new)
        compile(new, path, "exec", dont_inherit=True)  # symbol-table errors too (`nonlocal` at module level)
    except (SyntaxError, cst.ParserSyntaxError) as exc:  # our own last line of defence
        raise RefactorSkipped(f"the refactoring would not parse: {exc}") from exc
    return Refactoring(new, tuple(steps), before, current, tuple(helpers))


class ComplexityAgent(AuditorMixin, BaseAgent):
    """Lowers the complexity of ``task.params["function"]`` without an LLM (see the module docstring)."""

    name = "complexity"
    capabilities = frozenset({"offline-refactor"})
    commands: tuple[str, ...] = ()

    def __init__(
        self,
        shell: SecureShell | None = None,
        *,
        max_complexity: int = 10,
        auditor: CodeHealthAuditor | None = None,
        knowledge: KnowledgeBackend | None = None,
    ) -> None:
        super().__init__(knowledge=knowledge)
        self.shell = shell
        self.max_complexity = max_complexity
        self._auditor = auditor

    async def run(self, task: AgentTask, workspace: Path) -> AgentOutcome:
        qualname = str(task.params.get("function", ""))
        file = workspace / task.target
        try:
            source = file.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            return AgentOutcome(note="", error=f"cannot read {task.target}: {exc}")
        limit = int(task.params.get("max_complexity", self.max_complexity))
        try:
            result = refactor_function(
                source, qualname, task.target, max_complexity=limit, auditor=self.auditor
            )
        except RefactorSkipped as exc:
            return AgentOutcome(note="", error=f"skipped: {exc}")
        checker = type_checker(workspace)
        before: Counter[tuple[str, str]] | None = None
        if checker:  # a project that type-checks: the refactoring may not bring a new error
            try:
                before = await type_errors(self.shell, checker, workspace, task.target)
            except TypeCheckUnavailable as exc:
                return AgentOutcome(note="", error=f"skipped: {exc}")
        file.write_text(result.source, encoding="utf-8")
        if checker and before is not None:
            try:
                added = await type_errors(self.shell, checker, workspace, task.target) - before
            except TypeCheckUnavailable as exc:
                added = Counter({(task.target, str(exc)): 1})
            if added:
                file.write_text(source, encoding="utf-8")
                where, msg = next(iter(added))
                return AgentOutcome(note="", error=f"skipped: {checker} reports a new error after it ({where}: {msg})")
        return AgentOutcome(
            note=f"refactored {qualname}: complexity {result.before} -> {result.after} ("
            + "; ".join(result.steps)
            + ")"
        )
