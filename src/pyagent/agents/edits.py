"""Structured edits from an LLM, applied with LibCST, and the repair loop around them.

The model is asked for JSON matching a schema (a local model is held to it while decoding; a hosted
one gets ``response_format``/``text.format``), never for free-form patch text: even a small model then
always answers with something we can read. The edit names a node (a function, a class, the module) and
says what it becomes; LibCST puts it there, keeping comments and formatting everywhere else. A reply
that cannot be applied, or that the agent's check refuses, is explained to the model, at most
``max_repairs`` times.
"""

from __future__ import annotations

import json
import textwrap
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import libcst as cst

from pyagent.model.verification import Usage

if TYPE_CHECKING:
    from pyagent.agents.llm.base import LLMClient, LLMReply

__all__ = ["EditError", "add_docstrings", "edit_with_repairs", "parse_reply", "replace_function"]


DOCSTRING_WIDTH = 72


class EditError(ValueError):
    """The reply's edit cannot be read or applied; the message is fed back to the model."""


def parse_reply(text: str) -> dict[str, Any]:
    """The JSON object of a reply (a model that was not held to the schema may wrap it in a fence)."""
    body = text.strip()
    if body.startswith("```"):
        body = body.split("\n", 1)[-1].rsplit("```", 1)[0]
    try:
        data = json.loads(body)
    except json.JSONDecodeError as exc:
        raise EditError(f"the reply is not the JSON object asked for ({exc.msg} at character {exc.pos})") from None
    if not isinstance(data, dict):
        raise EditError("the reply is JSON but not an object")
    return data


def _docstring_literal(text: str, indent: str) -> str:
    """A triple-quoted literal for ``text``, wrapped to PEP 8's docstring width (a project's line-length
    rule must not reject it); continuation lines indented like the body they sit in."""
    clean = text.strip().replace("\\", "\\\\").replace('"""', '\\"\\"\\"')
    width = max(DOCSTRING_WIDTH - len(indent) - 3, 30)  # PEP 8's 72 columns for docstrings, quotes included
    lines = [piece for line in clean.splitlines()
             for piece in (textwrap.wrap(line, width, break_long_words=False, break_on_hyphens=False) or [""])]
    lines = lines or [""]
    if len(lines) == 1:
        one = lines[0][:-1] + '\\"' if lines[0].endswith('"') else lines[0]
        return f'"""{one}"""'
    return '"""' + lines[0] + "\n" + "\n".join(indent + line if line else "" for line in lines[1:]) + \
        "\n" + indent + '"""'


def _qualnames(module: cst.Module) -> dict[str, cst.CSTNode]:
    """Functions and classes by dotted qualname (methods as ``Class.method``), nested classes included."""
    found: dict[str, cst.CSTNode] = {}

    def visit(body: Sequence[cst.BaseStatement | cst.BaseSmallStatement], prefix: str) -> None:
        for stmt in body:
            if isinstance(stmt, cst.FunctionDef | cst.ClassDef):
                qual = prefix + stmt.name.value
                found[qual] = stmt
                if isinstance(stmt, cst.ClassDef) and isinstance(stmt.body, cst.IndentedBlock):
                    visit(stmt.body.body, qual + ".")

    visit(module.body, "")
    return found


def _parse(source: str) -> cst.Module:
    try:
        return cst.parse_module(source)
    except cst.ParserSyntaxError as exc:
        raise EditError(f"the code does not parse: line {exc.raw_line}: {exc.message}") from None


def add_docstrings(source: str, docstrings: Mapping[str, str]) -> str:
    """``source`` with each named function, class or ``<module>`` given its docstring as first statement."""
    module = _parse(source)
    nodes = _qualnames(module)
    unknown = [n for n in docstrings if n != "<module>" and n not in nodes]
    if unknown:
        raise EditError(f"no function or class named {', '.join(unknown)} in the file")
    if any(not text.strip() for text in docstrings.values()):
        raise EditError("a docstring is empty")
    targets = {nodes[n]: text for n, text in docstrings.items() if n != "<module>"}
    default_indent = module.default_indent

    class Insert(cst.CSTTransformer):
        depth = 0

        def visit_IndentedBlock(self, node: cst.IndentedBlock) -> None:
            self.depth += 1

        def leave_IndentedBlock(self, original: cst.IndentedBlock, updated: cst.IndentedBlock) -> cst.IndentedBlock:
            self.depth -= 1
            return updated

        def _with_doc(self, original: cst.FunctionDef | cst.ClassDef,
                      updated: cst.FunctionDef | cst.ClassDef) -> cst.FunctionDef | cst.ClassDef:
            text = targets.get(original)
            if text is None:
                return updated
            indent = default_indent * (self.depth + 1)
            doc = cst.SimpleStatementLine([cst.Expr(cst.SimpleString(_docstring_literal(text, indent)))])
            body = updated.body
            if isinstance(body, cst.IndentedBlock):
                return updated.with_changes(body=body.with_changes(body=[doc, *body.body]))
            # `def f(): return 1` on one line: the docstring and the statement become an indented block
            small = [stmt for stmt in body.body if isinstance(stmt, cst.BaseSmallStatement)]
            return updated.with_changes(body=cst.IndentedBlock([doc, cst.SimpleStatementLine(small)]))

        def leave_FunctionDef(self, original: cst.FunctionDef, updated: cst.FunctionDef) -> cst.FunctionDef:
            result = self._with_doc(original, updated)
            assert isinstance(result, cst.FunctionDef)
            return result

        def leave_ClassDef(self, original: cst.ClassDef, updated: cst.ClassDef) -> cst.ClassDef:
            result = self._with_doc(original, updated)
            assert isinstance(result, cst.ClassDef)
            return result

    out = module.visit(Insert())
    if "<module>" in docstrings:
        doc = cst.SimpleStatementLine([cst.Expr(cst.SimpleString(_docstring_literal(docstrings["<module>"], "")))])
        out = out.with_changes(body=[doc, *out.body])
    return out.code


def _first_docstring(node: cst.FunctionDef) -> cst.SimpleStatementLine | None:
    body = node.body
    if not isinstance(body, cst.IndentedBlock) or not body.body:
        return None
    first = body.body[0]
    if (isinstance(first, cst.SimpleStatementLine) and len(first.body) == 1 and isinstance(first.body[0], cst.Expr)
            and isinstance(first.body[0].value, cst.SimpleString | cst.ConcatenatedString)):
        return first
    return None


def _with_docstring(node: cst.FunctionDef, doc: cst.SimpleStatementLine) -> cst.FunctionDef:
    body = node.body
    if _first_docstring(node) is not None or not isinstance(body, cst.IndentedBlock):
        return node
    return node.with_changes(body=body.with_changes(body=[doc, *body.body]))


_BOUND_DECORATORS = frozenset({"staticmethod", "classmethod", "property"})


def _is_method(stmt: cst.BaseStatement) -> bool:
    """Whether a helper the model wrote beside a method belongs in the class: it takes ``self``/``cls``
    or is a static/class method or property. Anything else is called by its bare name, so in a class
    body it would be a method without ``self`` (a TypeError or NameError when called)."""
    if not isinstance(stmt, cst.FunctionDef):
        return False
    if any((isinstance(d.decorator, cst.Name) and d.decorator.value in _BOUND_DECORATORS)
           or (isinstance(d.decorator, cst.Attribute) and d.decorator.attr.value in ("setter", "getter", "deleter"))
           for d in stmt.decorators):
        return True
    params = stmt.params.params or stmt.params.posonly_params
    return bool(params) and params[0].name.value in ("self", "cls")


_Statement = cst.SimpleStatementLine | cst.BaseCompoundStatement


def _blank_lines(stmt: _Statement, count: int) -> _Statement:
    """``stmt`` preceded by ``count`` blank lines, its own comments above it kept."""
    comments = [line for line in stmt.leading_lines if line.comment is not None]
    return stmt.with_changes(leading_lines=[cst.EmptyLine(indent=False)] * count + comments)


def replace_function(source: str, qualname: str, code: str) -> str:
    """``source`` with the function ``qualname`` replaced by ``code``: its new definition, optionally
    preceded by helpers, placed where the old one was (indented to its level). For a method, helpers
    that take ``self``/``cls`` (or are static/class methods) go into the class beside it, and plain
    functions, classes and constants go to module level just above the top-level class, where the
    method's bare-name calls find them. The old docstring stays when the new definition has none."""
    module = _parse(source)
    target = _qualnames(module).get(qualname)
    if not isinstance(target, cst.FunctionDef):
        raise EditError(f"no function named {qualname} in the file")
    new_body = list(_parse(code.strip("\n") + "\n").body)
    name = qualname.rsplit(".", 1)[-1]
    if not any(isinstance(s, cst.FunctionDef) and s.name.value == name for s in new_body):
        raise EditError(f"the code must define the function {name} (keep its name and signature)")

    old_doc = _first_docstring(target)
    if old_doc is not None:  # a model that rewrites a function often drops its docstring: keep it
        new_body = [_with_docstring(s, old_doc) if isinstance(s, cst.FunctionDef) and s.name.value == name else s
                    for s in new_body]
    hoisted: list[_Statement] = []
    if "." in qualname:  # a method (qualnames descend into classes only)
        def is_target(s: cst.BaseStatement) -> bool:
            return isinstance(s, cst.FunctionDef) and s.name.value == name

        hoisted = [s for s in new_body if not is_target(s) and not _is_method(s)]
        new_body = [s for s in new_body if is_target(s) or _is_method(s)]
        taken = {n.value for stmt in module.body for n in _defined_names(stmt)}
        clash = sorted({n.value for s in hoisted for n in _defined_names(s)} & taken)
        if clash:
            raise EditError(f"the helper {', '.join(clash)} would replace a module-level name of the same name; "
                            "pick another name")
    outer = qualname.split(".", 1)[0]

    class Swap(cst.CSTTransformer):
        def leave_FunctionDef(self, original: cst.FunctionDef, updated: cst.FunctionDef
                              ) -> cst.FunctionDef | cst.FlattenSentinel[cst.BaseStatement]:
            if original is not target:
                return updated
            first, *rest = new_body
            first = first.with_changes(leading_lines=original.leading_lines)
            rest = [_blank_lines(s, 1 if "." in qualname else 2) for s in rest]  # PEP 8's spacing
            return cst.FlattenSentinel([first, *rest])

        def leave_Module(self, original: cst.Module, updated: cst.Module) -> cst.Module:
            if not hoisted:
                return updated
            body = list(updated.body)
            at = next(i for i, s in enumerate(body) if isinstance(s, cst.ClassDef) and s.name.value == outer)
            helpers = [_blank_lines(s, 2 if i or at else 0) for i, s in enumerate(hoisted)]
            body[at:at] = helpers
            body[at + len(helpers)] = _blank_lines(body[at + len(helpers)], 2)
            return updated.with_changes(body=body)

    return module.visit(Swap()).code


def _defined_names(stmt: cst.BaseStatement) -> list[cst.Name]:
    """The names a top-level statement binds: a def's or class's name, simple assignment targets."""
    if isinstance(stmt, cst.FunctionDef | cst.ClassDef):
        return [stmt.name]
    names: list[cst.Name] = []
    if isinstance(stmt, cst.SimpleStatementLine):
        for small in stmt.body:
            if isinstance(small, cst.Assign):
                names += [t.target for t in small.targets if isinstance(t.target, cst.Name)]
            elif isinstance(small, cst.AnnAssign | cst.AugAssign) and isinstance(small.target, cst.Name):
                names.append(small.target)
    return names


async def edit_with_repairs(
    llm: LLMClient,
    messages: list[dict[str, str]],
    schema: dict[str, Any],
    apply: Callable[[dict[str, Any]], str],
    validate: Callable[[str], str | None],
    *,
    max_repairs: int = 3,
    max_tokens: int = 1024,
) -> tuple[str | None, str, Usage]:
    """Ask for a structured edit, apply it, validate; feed each failure back (at most ``max_repairs`` times).

    Returns ``(new_source or None, last error or "", usage)``. ``apply`` turns the reply's JSON into the
    new source (raising ``EditError``); ``validate`` returns an error message or ``None``.
    """
    history = list(messages)
    usage = Usage()
    error = ""
    for _round in range(max_repairs + 1):
        reply: LLMReply = await llm.complete(history, max_tokens=max_tokens, schema=schema)
        usage += Usage(reply.tokens, reply.cost, 1)
        try:
            new = apply(parse_reply(reply.text))
            problem = validate(new)
            if problem:
                raise EditError(problem)
            return new, "", usage
        except EditError as exc:
            error = str(exc)
            history += [
                {"role": "assistant", "content": reply.text},
                {"role": "user", "content": f"That edit was rejected: {error}\nReply again with a corrected edit."},
            ]
    return None, error, usage
