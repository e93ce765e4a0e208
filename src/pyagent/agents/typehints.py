"""The types agent: annotations from what the tests observed and from safe inference, one file per task.

Where annotations come from:

* **safe inference** (autotyping-style): ``-> None`` for a function with no ``return <value>``,
  ``yield`` or ``await``-free generator tricks, that is not a stub (``pass``/``...``/``raise``
  only); ``-> int``/``str``/``bool``/... when every return hands back a literal of that one type;
* **the baseline test run** (:mod:`pyagent.agents.typetrace`): parameter and return types seen on
  every call, when each is a builtin, a container of builtins or a class of the same module.

Only where the project type-checks (a mypy or pyright configuration) or opts in (``--agents types``
or ``agents = [..., "types"]`` in ``[tool.pyagent]``). With a checker configured, the agent runs it
before and after its edit and keeps nothing that brings a new error: first all annotations, then
the inferred ones alone. The gate's tests judge the rest. Annotations are added, never changed:
an existing annotation, ``*args``/``**kwargs``, overloads and decorated functions (other than
``staticmethod``/``classmethod``) are left alone. Unions and generics are written only where the
file can evaluate them (``from __future__ import annotations`` or a minimum Python of 3.10).
"""

from __future__ import annotations

import ast
import re
import sys
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import libcst as cst

from pyagent.agents._config_files import has_ini_section, pyproject
from pyagent.agents.base import BaseAgent
from pyagent.agents.worker import AgentOutcome

if TYPE_CHECKING:
    from pyagent.model.knowledge import KnowledgeBackend
    from pyagent.model.task import AgentTask
    from pyagent.shell import SecureShell

__all__ = [
    "Annotation",
    "TypeCheckUnavailable",
    "TypesAgent",
    "annotate",
    "annotated_functions",
    "infer_annotations",
    "min_python",
    "type_checker",
    "type_errors",
]

_ALLOWED_DECORATORS = frozenset({"staticmethod", "classmethod"})
_SCALARS = frozenset({"int", "float", "str", "bytes", "bool", "complex", "None"})
_LITERAL_TYPES: dict[type, str] = {bool: "bool", int: "int", float: "float", str: "str", bytes: "bytes"}
_MYPY_LINE = re.compile(r"^(?P<path>[^:\n]+\.pyi?):(?P<line>\d+):(?:\d+:)? error: (?P<msg>.*)$", re.MULTILINE)
CHECK_TIMEOUT = 300.0
LINE_LIMIT = 79  # a header we lengthen stays within every project's line-length rule


@dataclass(frozen=True)
class Annotation:
    """What to add to one function: parameter annotations by name and the return annotation."""

    qualname: str
    args: tuple[tuple[str, str], ...]
    returns: str | None
    source: str  # where ``returns`` came from: inferred (from the body) | traced (the tests); args are traced

    def to_params(self) -> dict[str, Any]:
        return {"args": dict(self.args), "returns": self.returns, "source": self.source}

    @classmethod
    def from_params(cls, qualname: str, d: Mapping[str, Any]) -> Annotation:
        args = tuple((str(k), str(v)) for k, v in dict(d.get("args") or {}).items())
        returns = d.get("returns")
        return cls(qualname, args, None if returns is None else str(returns), str(d.get("source", "traced")))


# -- which projects ------------------------------------------------------------------------------


def type_checker(root: str | Path) -> str | None:
    """``mypy`` or ``pyright`` when the project configures one, else None."""
    root = Path(root)
    if (root / "mypy.ini").is_file() or (root / ".mypy.ini").is_file():
        return "mypy"
    if (root / "pyrightconfig.json").is_file():
        return "pyright"
    tool = pyproject(root).get("tool", {})
    if "mypy" in tool:
        return "mypy"
    if "pyright" in tool or "basedpyright" in tool:
        return "pyright"
    if has_ini_section(root, (("setup.cfg", "mypy"), ("tox.ini", "mypy"))):
        return "mypy"
    return None


def min_python(root: str | Path) -> tuple[int, int]:
    """The oldest Python the project supports (``requires-python``), (3, 8) when it does not say."""
    spec = str(pyproject(Path(root)).get("project", {}).get("requires-python", ""))
    m = re.search(r">=?\s*(\d+)\.(\d+)", spec)
    return (int(m.group(1)), int(m.group(2))) if m else (3, 8)


# -- what to add ---------------------------------------------------------------------------------


def _functions(tree: ast.Module) -> list[tuple[str, ast.FunctionDef | ast.AsyncFunctionDef, bool]]:
    """Module-level functions and methods of module-level classes: (qualname, node, is method)."""
    out: list[tuple[str, ast.FunctionDef | ast.AsyncFunctionDef, bool]] = []
    for node in tree.body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            out.append((node.name, node, False))
        elif isinstance(node, ast.ClassDef):
            for item in node.body:
                if isinstance(item, ast.FunctionDef | ast.AsyncFunctionDef):
                    out.append((f"{node.name}.{item.name}", item, True))
    return out


def _own_nodes(fn: ast.AST) -> list[ast.AST]:
    """Nodes of ``fn``'s body, not descending into nested functions, classes or lambdas."""
    out: list[ast.AST] = []
    stack = list(ast.iter_child_nodes(fn))
    while stack:
        node = stack.pop()
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef | ast.Lambda):
            continue
        out.append(node)
        stack.extend(ast.iter_child_nodes(node))
    return out


def _is_stub(fn: ast.FunctionDef | ast.AsyncFunctionDef) -> bool:
    body = list(fn.body)
    if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
        body = body[1:]  # the docstring
    return all(
        isinstance(s, ast.Pass | ast.Raise) or (isinstance(s, ast.Expr) and isinstance(s.value, ast.Constant))
        for s in body
    )


def _ends_in_exit(body: list[ast.stmt]) -> bool:
    return bool(body) and isinstance(body[-1], ast.Return | ast.Raise)


def _decorator_names(fn: ast.FunctionDef | ast.AsyncFunctionDef) -> list[str]:
    return [ast.unparse(d) for d in fn.decorator_list]


def _inferred_return(fn: ast.FunctionDef | ast.AsyncFunctionDef) -> str | None:
    """``None`` or a literal's type when the body proves it; None when it does not."""
    nodes = _own_nodes(fn)
    if any(isinstance(n, ast.Yield | ast.YieldFrom) for n in nodes) or _is_stub(fn):
        return None
    returns = [n for n in nodes if isinstance(n, ast.Return)]
    valued = [r for r in returns if r.value is not None]
    if not valued:
        if any(isinstance(r.value, ast.Constant) and r.value is not None for r in returns):
            return None
        return "None"
    if not _ends_in_exit(fn.body):
        return None  # falling off the end returns None as well
    kinds = set()
    for r in valued:
        value = r.value
        if not isinstance(value, ast.Constant) or value.value is None:
            return None
        kind = _LITERAL_TYPES.get(type(value.value))
        if kind is None:
            return None
        kinds.add(kind)
    return kinds.pop() if len(kinds) == 1 else None


def _union_members(annotation: str) -> list[str]:
    """``int | list[str | None]`` -> ["int", "list[str | None]"]: split only outside brackets."""
    parts, depth, start = [], 0, 0
    for i, ch in enumerate(annotation):
        depth += (ch == "[") - (ch == "]")
        if depth == 0 and annotation.startswith(" | ", i):
            parts.append(annotation[start:i])
            start = i + 3
    return [*parts, annotation[start:]]


def _writable(annotation: str, modern: bool, classes: set[str], before_line: set[str]) -> bool:
    """Whether ``annotation`` can be written in this file as it is: no import needed, and every name
    in it bound when the def runs (``before_line``: the classes that are)."""
    try:
        ast.parse(annotation, mode="eval")
    except SyntaxError:
        return False
    names = re.findall(r"[A-Za-z_][A-Za-z0-9_.]*", annotation)
    generic = "[" in annotation or "|" in annotation
    if generic and not modern:
        return False
    for name in names:
        if name in _SCALARS or name in ("list", "set", "frozenset", "dict", "tuple"):
            continue
        if name not in classes or name not in before_line:
            return False
    return True


def infer_annotations(
    source: str,
    traced: Mapping[str, Mapping[str, Any]] | None = None,
    *,
    min_version: tuple[int, int] = (3, 8),
) -> list[Annotation]:
    """What :func:`annotate` would add to ``source``: inferred returns and the traced types."""
    tree = ast.parse(source)
    # annotations are evaluated when the def runs unless the file defers them: then a class named in
    # one must already exist (defined above, and not the class the method is in), and `X | Y` needs 3.10
    deferred = any(
        isinstance(n, ast.ImportFrom) and n.module == "__future__" and any(a.name == "annotations" for a in n.names)
        for n in tree.body
    )
    modern = min_version >= (3, 10) or deferred
    classes = {n.name for n in tree.body if isinstance(n, ast.ClassDef)}
    out: list[Annotation] = []
    for qualname, fn, is_method in _functions(tree):
        decorators = _decorator_names(fn)
        if any(d not in _ALLOWED_DECORATORS for d in decorators):
            continue
        before = classes if deferred else {
            n.name for n in tree.body if isinstance(n, ast.ClassDef) and (n.end_lineno or n.lineno) < fn.lineno
        }
        positional = [*fn.args.posonlyargs, *fn.args.args]
        skip_first = is_method and "staticmethod" not in decorators
        params = positional[1:] if skip_first and positional else positional
        params = [*params, *fn.args.kwonlyargs]
        seen = traced.get(qualname) if traced else None
        args: list[tuple[str, str]] = []
        if seen is not None:
            observed = dict(seen.get("args") or {})
            defaults = _defaults(fn)
            for a in params:
                name = observed.get(a.arg)
                if a.annotation is not None or name is None:
                    continue
                if a.arg in defaults:  # the default is a value too
                    from pyagent.agents.typetrace import combine

                    if defaults[a.arg] == "?":  # not a literal: its type is unknown here
                        continue
                    merged = combine([*_union_members(name), defaults[a.arg]])
                    if merged is None:
                        continue
                    name = merged
                if _writable(name, modern, classes, before):
                    args.append((a.arg, name))
        returns: str | None = None
        source_kind = "traced"
        if fn.returns is None:
            inferred = _inferred_return(fn)
            if inferred is not None and not (isinstance(fn, ast.AsyncFunctionDef) and inferred != "None"):
                returns, source_kind = inferred, "inferred"
            elif seen is not None and isinstance(seen.get("returns"), str) and not _is_stub(fn):
                candidate = str(seen["returns"])
                if candidate != "None" and not isinstance(fn, ast.AsyncFunctionDef):
                    returns = candidate if _writable(candidate, modern, classes, before) else None
        if fn.name == "__init__" and returns is None and fn.returns is None and _inferred_return(fn) == "None":
            returns = "None"
        if args or returns:
            out.append(Annotation(qualname, tuple(args), returns, source_kind))
    return out


def _defaults(fn: ast.FunctionDef | ast.AsyncFunctionDef) -> dict[str, str]:
    """Parameters whose default is a literal: name -> the literal's type name."""
    out: dict[str, str] = {}
    positional = [*fn.args.posonlyargs, *fn.args.args]
    pairs = list(zip(positional[len(positional) - len(fn.args.defaults) :], fn.args.defaults, strict=True))
    pairs += [(a, d) for a, d in zip(fn.args.kwonlyargs, fn.args.kw_defaults, strict=True) if d is not None]
    for a, d in pairs:
        if isinstance(d, ast.Constant):
            out[a.arg] = "None" if d.value is None else _LITERAL_TYPES.get(type(d.value), "?")
        else:
            out[a.arg] = "?"
    return out


# -- writing them (LibCST: comments and layout stay) ---------------------------------------------


class _Annotator(cst.CSTTransformer):
    def __init__(self, wanted: Mapping[str, Annotation]) -> None:
        super().__init__()
        self.wanted = wanted
        self.scope: list[str] = []
        self.done: list[str] = []

    def visit_ClassDef(self, node: cst.ClassDef) -> None:
        self.scope.append(node.name.value)

    def leave_ClassDef(self, original: cst.ClassDef, updated: cst.ClassDef) -> cst.ClassDef:
        self.scope.pop()
        return updated

    def visit_FunctionDef(self, node: cst.FunctionDef) -> None:
        self.scope.append(node.name.value)

    def leave_FunctionDef(self, original: cst.FunctionDef, updated: cst.FunctionDef) -> cst.FunctionDef:
        qualname = ".".join(self.scope)
        self.scope.pop()
        ann = self.wanted.get(qualname)
        if ann is None:
            return updated
        by_name = dict(ann.args)

        def with_ann(p: cst.Param) -> cst.Param:
            name = by_name.get(p.name.value)
            if name is None or p.annotation is not None:
                return p
            equal = p.equal
            if isinstance(equal, cst.AssignEqual):  # PEP 8: `x: int = 1`, not `x: int=1`
                equal = cst.AssignEqual(
                    whitespace_before=cst.SimpleWhitespace(" "), whitespace_after=cst.SimpleWhitespace(" ")
                )
            return p.with_changes(annotation=cst.Annotation(cst.parse_expression(name)), equal=equal)

        params = updated.params.with_changes(
            params=[with_ann(p) for p in updated.params.params],
            posonly_params=[with_ann(p) for p in updated.params.posonly_params],
            kwonly_params=[with_ann(p) for p in updated.params.kwonly_params],
        )
        changes: dict[str, Any] = {"params": params}
        if ann.returns is not None and updated.returns is None:
            changes["returns"] = cst.Annotation(
                cst.parse_expression(ann.returns),
                whitespace_before_indicator=cst.SimpleWhitespace(" "),
                whitespace_after_indicator=cst.SimpleWhitespace(" "),
            )
        indent = 4 * (len(self.scope))  # the scope left after the pop: enclosing classes
        candidates = [updated.with_changes(**changes)]
        if "returns" in changes:  # the return annotation alone, when all of them do not fit
            candidates.append(updated.with_changes(returns=changes["returns"]))
        new = updated  # a header over the line limit is a lint finding the gate rejects
        for candidate in candidates:
            folded = _fold_params(candidate, indent) if self._too_long(candidate, indent) else candidate
            if folded is not None and not self._too_long(folded, indent):
                new = folded
                break
        if not new.deep_equals(updated):
            self.done.append(qualname)
        return new

    @staticmethod
    def _too_long(fn: cst.FunctionDef, indent: int) -> bool:
        body = cst.IndentedBlock(body=[cst.SimpleStatementLine([cst.Pass()])])
        header = cst.Module(body=[]).code_for_node(fn.with_changes(body=body, decorators=[]))
        lines = header.lstrip("\n").splitlines()[:-1]  # the header, without the `pass`
        return any(indent + len(line) > LINE_LIMIT for line in lines)


def _fold_params(fn: cst.FunctionDef, indent: int) -> cst.FunctionDef | None:
    """``fn`` with one parameter per line and a trailing comma (black's layout for a long header);
    None when its parameters already span lines (their layout is the author's)."""
    params = fn.params
    if "\n" in cst.Module(body=[]).code_for_node(params):
        return None

    def newline(width: int) -> cst.ParenthesizedWhitespace:
        return cst.ParenthesizedWhitespace(
            first_line=cst.TrailingWhitespace(), indent=False, last_line=cst.SimpleWhitespace(" " * width)
        )

    order: list[cst.CSTNode] = [*params.posonly_params]
    if isinstance(params.posonly_ind, cst.ParamSlash):
        order.append(params.posonly_ind)
    order += list(params.params)
    if isinstance(params.star_arg, cst.Param | cst.ParamStar):
        order.append(params.star_arg)
    order += list(params.kwonly_params)
    if params.star_kwarg is not None:
        order.append(params.star_kwarg)
    if not order:
        return None
    replaced: dict[int, cst.CSTNode] = {}
    for i, node in enumerate(order):
        width = indent if i == len(order) - 1 else indent + 4
        comma = cst.Comma(whitespace_after=newline(width))
        replaced[id(node)] = node.with_changes(comma=comma)

    def swap(node: Any) -> Any:
        return replaced.get(id(node), node)

    new_params = params.with_changes(
        posonly_params=[swap(p) for p in params.posonly_params],
        posonly_ind=swap(params.posonly_ind),
        params=[swap(p) for p in params.params],
        star_arg=swap(params.star_arg),
        kwonly_params=[swap(p) for p in params.kwonly_params],
        star_kwarg=swap(params.star_kwarg),
    )
    return fn.with_changes(params=new_params, whitespace_before_params=newline(indent + 4))


def annotate(source: str, annotations: list[Annotation]) -> tuple[str, list[str]]:
    """``source`` with ``annotations`` added; returns (new source, qualnames changed)."""
    if not annotations:
        return source, []
    annotator = _Annotator({a.qualname: a for a in annotations})
    new = cst.parse_module(source).visit(annotator).code
    ast.parse(new)  # our own last check: never hand back a broken file
    return new, annotator.done


def annotated_functions(source: str) -> tuple[int, int]:
    """(fully annotated functions, all functions) among module-level functions and methods."""
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return 0, 0
    total = full = 0
    for _q, fn, is_method in _functions(tree):
        total += 1
        positional = [*fn.args.posonlyargs, *fn.args.args]
        decorators = _decorator_names(fn)
        if is_method and "staticmethod" not in decorators and positional:
            positional = positional[1:]
        params = [*positional, *fn.args.kwonlyargs]
        if fn.returns is not None and all(a.annotation is not None for a in params):
            full += 1
    return full, total


# -- the agent -----------------------------------------------------------------------------------


def _check_target(target: str) -> str:
    """What to check for a change to ``target``: its top-level package (callers in it are checked too)."""
    parts = Path(target).parts
    if len(parts) >= 3 and parts[0] == "src":
        return str(Path(parts[0], parts[1]))
    return parts[0] if len(parts) >= 2 else target


class TypeCheckUnavailable(Exception):
    """The project's type checker could not run here; ``str(exc)`` says what to install."""


async def type_errors(shell: SecureShell | None, checker: str, workspace: Path, target: str) -> Counter[tuple[str, str]]:
    """The checker's errors as a multiset of (path, message): line numbers do not identify an error."""
    from pyagent.shell import SecureShell

    sh = shell or SecureShell(env_allow=("PATH", "HOME", "LANG"), timeout=CHECK_TIMEOUT)
    if checker == "mypy":
        import importlib.util

        if importlib.util.find_spec("mypy") is None:
            raise TypeCheckUnavailable("the project configures mypy, which is not installed here (pip install mypy)")
        argv = [sys.executable, "-m", "mypy", "--cache-dir=/dev/null", "--no-error-summary", "--no-pretty",
                _check_target(target)]
    else:
        import shutil

        exe = shutil.which("pyright")
        if exe is None:
            raise TypeCheckUnavailable("the project configures pyright, which is not installed here")
        argv = [exe, target]
    res = await sh.run(argv, cwd=str(workspace), timeout=CHECK_TIMEOUT)
    if res.timed_out or res.exit_code is None or res.exit_code >= 2:
        tail = (res.stderr or res.stdout or "").strip()[-300:]
        raise TypeCheckUnavailable(f"{checker} did not run (exit {res.exit_code}): {tail}")
    found: Counter[tuple[str, str]] = Counter()
    if checker == "mypy":
        for m in _MYPY_LINE.finditer(res.stdout or ""):
            found[(m["path"], m["msg"].strip())] += 1
    else:
        for line in (res.stdout or "").splitlines():
            if " - error: " in line:
                where, msg = line.split(" - error: ", 1)
                found[(where.strip().split(":", 1)[0], msg.strip())] += 1
    return found


class TypesAgent(BaseAgent):
    """Adds the annotations of ``task.params["annotations"]`` to ``task.target`` (see the module docstring)."""

    name = "types"
    capabilities = frozenset({"type-annotations"})
    commands: tuple[str, ...] = ("mypy", "pyright")

    def __init__(self, shell: SecureShell | None = None, *, knowledge: KnowledgeBackend | None = None) -> None:
        super().__init__(knowledge=knowledge)
        self.shell = shell

    async def run(self, task: AgentTask, workspace: Path) -> AgentOutcome:
        file = workspace / task.target
        try:
            source = file.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            return AgentOutcome(note="", error=f"cannot read {task.target}: {exc}")
        wanted = [Annotation.from_params(q, d) for q, d in dict(task.params.get("annotations") or {}).items()]
        checker = task.params.get("checker")
        inferred = [Annotation(a.qualname, (), a.returns, "inferred") for a in wanted if a.source == "inferred"]
        attempts = [wanted, inferred] if any(a.args for a in wanted) else [wanted]
        why = ""
        before: Counter[tuple[str, str]] | None = None
        for attempt in attempts:
            try:
                new, done = annotate(source, attempt)
            except (cst.ParserSyntaxError, SyntaxError, ValueError) as exc:
                return AgentOutcome(note="", error=f"skipped: {task.target} cannot be annotated ({exc})")
            if not done:
                continue
            if not checker:
                file.write_text(new, encoding="utf-8")
                return AgentOutcome(note=self._note(attempt, done, None))
            try:
                if before is None:
                    before = await type_errors(self.shell, str(checker), workspace, task.target)
                file.write_text(new, encoding="utf-8")
                after = await type_errors(self.shell, str(checker), workspace, task.target)
            except TypeCheckUnavailable as exc:
                file.write_text(source, encoding="utf-8")
                return AgentOutcome(note="", error=f"skipped: {exc}")
            added = after - before
            if not added:
                return AgentOutcome(note=self._note(attempt, done, str(checker)))
            file.write_text(source, encoding="utf-8")
            path, msg = next(iter(added))
            why = f"{checker} reports a new error with them ({path}: {msg})"
        return AgentOutcome(note="", error=f"skipped: no annotation could be added to {task.target}"
                            + (f": {why}" if why else ""))

    @staticmethod
    def _note(attempt: list[Annotation], done: list[str], checker: str | None) -> str:
        traced = sum(1 for a in attempt if a.qualname in done and (a.args or a.source == "traced"))
        inferred = len(done) - traced
        shown = ", ".join(done[:6]) + (f" and {len(done) - 6} more" if len(done) > 6 else "")
        verified = f"; {checker}: no new errors" if checker else "; no type checker configured (tests only)"
        return (
            f"annotated {len(done)} function(s) ({traced} from types the test run observed, {inferred} inferred "
            f"from their returns): {shown}{verified}"
        )
