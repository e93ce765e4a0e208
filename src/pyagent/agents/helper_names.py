"""Names and one-line docstrings for the helpers the complexity agent extracts.

A reviewer reads a helper's name at its call site, so the name says what the helper hands back or
what it does to its arguments, taken from the block itself, in this order:

* the function the block calls to produce its one result (``rows = _prepend_row_index(rows, i)``
  in every branch: ``_with_row_index``);
* the one container the block fills (``cur_line.append(...)``: ``_fill_cur_line``) or sets items
  of from what it iterates (``aligns[i] = a`` for ``a`` in ``colalign``: ``_set_aligns_from_colalign``);
* what it returns, and for a branch the case it handles (``headers == "firstrow"``:
  ``_headers_and_rows_for_firstrow``; ``isinstance(val, str)``: ``_val_and_intfmt_for_str``);
* for a loop, what one turn processes.

Names never get numeric suffixes: a clash adds the caller's name, and a second clash is a refusal.
A comment right above the block (or opening a branch) becomes the docstring's summary line, since
it is the author's own description of the block.
"""

from __future__ import annotations

import ast
import re
from collections import Counter
from collections.abc import Sequence
from typing import NamedTuple

__all__ = ["HelperName", "helper_name", "unique_name"]

_WRAPPERS = frozenset({"enumerate", "zip", "sorted", "reversed", "list", "tuple", "set", "iter", "range", "len"})
_ADDS = ("prepend_", "append_", "add_", "insert_", "attach_", "with_")
_REMOVES = ("remove_", "drop_", "strip_", "without_")
_FILLS = frozenset({"append", "extend", "insert", "appendleft", "add", "update"})
_MAX_NAME = 40  # characters; past this a name is harder to read than the block
_COMMENT = re.compile(r"^\s*#+\s*(?P<text>.*?)\s*$")
_WORDS = re.compile(r"[A-Za-z][A-Za-z0-9]*")


class HelperName(NamedTuple):
    """A helper's name and the summary line of its docstring."""

    name: str
    doc: str


def _words(expr: ast.AST, limit: int = 3) -> list[str]:
    seen: list[str] = []
    for node in ast.walk(expr):
        if isinstance(node, ast.Name):
            word = node.id
        elif isinstance(node, ast.Attribute):
            word = node.attr
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value.isidentifier():
            word = node.value
        else:
            continue
        word = word.strip("_").lower()
        if word and word not in seen and word not in ("self", "cls"):
            seen.append(word)
    return seen[:limit]


def _iterated(expr: ast.AST) -> ast.AST:
    """What a loop really walks: ``xs`` for ``enumerate(xs)``, ``sorted(xs)``, ``range(len(xs))``."""
    while isinstance(expr, ast.Call) and isinstance(expr.func, ast.Name) and expr.func.id in _WRAPPERS and expr.args:
        expr = expr.args[0]
    return expr


def _short(expr: ast.AST, limit: int = 40) -> str | None:
    text = ast.unparse(expr)
    return text if len(text) <= limit and "\n" not in text else None


def _snake(name: str) -> str:
    return name.strip("_").lower()


def _joined(names: Sequence[str]) -> str:
    return "_and_".join(_snake(n) for n in names[:2])


def _shown(names: Sequence[str]) -> str:
    return ", ".join(f"``{n}``" for n in names)


def _case(test: ast.expr) -> str | None:
    """The case a branch handles, as a name part: a string it compares with (``"firstrow"``), the
    type it checks for (``isinstance(v, str)``: ``str``), or the one name it tests (``if colored``)."""
    if isinstance(test, ast.UnaryOp) and isinstance(test.op, ast.Not):  # `not isinstance(t, str)`: non_str
        inner = _case(test.operand)
        return f"non_{inner}" if inner is not None and "_" not in inner else None
    literals = [
        c.value
        for n in ast.walk(test)
        if isinstance(n, ast.Compare)
        for side in [n.left, *n.comparators]
        for c in (side.elts if isinstance(side, ast.Tuple | ast.List | ast.Set) else [side])
        if isinstance(c, ast.Constant) and isinstance(c.value, str) and c.value.isidentifier()
    ]
    if literals:  # `stage in ("both", "pre")`: both_or_pre
        return "_or_".join(_snake(v) for v in dict.fromkeys(literals)) if len(set(literals)) <= 2 else None
    for n in ast.walk(test):
        if isinstance(n, ast.Call) and isinstance(n.func, ast.Name) and n.func.id == "isinstance" and len(n.args) == 2:
            kinds = n.args[1].elts if isinstance(n.args[1], ast.Tuple) else [n.args[1]]
            names = [_snake(ast.unparse(k).rsplit(".", 1)[-1]) for k in kinds[:2]]
            return "_or_".join(names)
    if isinstance(test, ast.Compare) and len(test.ops) == 1 and isinstance(test.ops[0], ast.Is | ast.Eq):
        other = test.comparators[0]  # `valtype is float`: float
        if isinstance(other, ast.Name | ast.Attribute):
            return _snake(other.id if isinstance(other, ast.Name) else other.attr)
    plain = test.operand if isinstance(test, ast.UnaryOp) and isinstance(test.op, ast.Not) else test
    if isinstance(plain, ast.Name | ast.Attribute):
        word = _snake(plain.id if isinstance(plain, ast.Name) else plain.attr)
        return f"no_{word}" if plain is not test else word
    return None


def _chain_test(stmt: ast.If) -> ast.expr | None:
    """The tests of an ``if``/``elif`` chain as one ``or`` (the cases the whole chain handles);
    None when it ends in ``else`` (then it handles every case, and no one case names it)."""
    tests: list[ast.expr] = []
    node: ast.stmt = stmt
    while isinstance(node, ast.If):
        tests.append(node.test)
        if not node.orelse:
            return tests[0] if len(tests) == 1 else ast.BoolOp(op=ast.Or(), values=tests)
        if len(node.orelse) != 1:
            return None
        node = node.orelse[0]
    return None


def _dominant_callee(stmts: Sequence[ast.stmt], result: str) -> str | None:
    """The one function whose result every assignment to ``result`` in ``stmts`` stores."""
    callees: Counter[str] = Counter()
    for node in (n for s in stmts for n in ast.walk(s)):
        if not isinstance(node, ast.Assign | ast.AugAssign | ast.AnnAssign):
            continue
        targets = node.targets if isinstance(node, ast.Assign) else [node.target]
        if not any(isinstance(t, ast.Name) and t.id == result for t in targets):
            continue
        value = node.value
        if not (isinstance(node, ast.Assign) and isinstance(value, ast.Call)):
            return None
        func = value.func
        callees[func.id if isinstance(func, ast.Name) else ast.unparse(func).rsplit(".", 1)[-1]] += 1
    return next(iter(callees)) if len(callees) == 1 else None


def _filled(stmts: Sequence[ast.stmt], params: Sequence[str]) -> tuple[str, str] | None:
    """(container, how) when the block's only effect on its arguments is filling one of them:
    ``how`` is ``fill`` (``c.append(...)`` and kin) or ``set`` (``c[k] = ...``)."""
    hits: set[tuple[str, str]] = set()
    for node in (n for s in stmts for n in ast.walk(s)):
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and isinstance(node.func.value, ast.Name)
            and node.func.value.id in params
            and node.func.attr in _FILLS
        ):
            hits.add((node.func.value.id, "fill"))
        elif isinstance(node, ast.Assign | ast.AugAssign):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for t in targets:
                if isinstance(t, ast.Subscript) and isinstance(t.value, ast.Name) and t.value.id in params:
                    hits.add((t.value.id, "set"))
    containers = {c for c, _ in hits}
    if len(containers) != 1:
        return None
    container = containers.pop()
    return container, "fill" if (container, "fill") in hits else "set"


def _comment_above(lines: Sequence[str], lineno: int) -> str | None:
    """The comment on the lines right above ``lineno`` (1-based), joined, or None."""
    texts: list[str] = []
    i = lineno - 2
    while i >= 0 and (m := _COMMENT.match(lines[i])) is not None and lines[i].strip():
        texts.insert(0, m.group("text"))
        i -= 1
    text = " ".join(t for t in texts if t).strip()
    if not text or len(text) > 100 or not any(ch.isalpha() for ch in text):
        return None
    return text[0].upper() + text[1:].rstrip(".:")


def helper_name(
    stmts: Sequence[ast.stmt],
    kind: str,
    owner: ast.stmt,
    caller: str,
    returned: Sequence[str],
    params: Sequence[str],
    lines: Sequence[str],
    *,
    returning: bool = False,
) -> HelperName:
    """A name and one-line summary for the helper made of ``stmts`` (see the module docstring).

    ``kind`` is how the block sits in the caller (``loop`` body, ``branch``/``else`` of an ``if``,
    a whole ``statement`` ...), ``owner`` the statement it belongs to, ``returned`` what the helper
    hands back, ``params`` its parameters and ``lines`` the caller's source before extraction.
    """
    short = caller.rsplit(".", 1)[-1]
    gives = f"; return {_shown(returned)}" if returned else ""
    # a comment above a compound first statement of a longer block describes that statement only
    compound = isinstance(stmts[0], ast.If | ast.For | ast.While | ast.Try | ast.With | ast.Match)
    comment = None if compound and len(stmts) > 1 else _comment_above(lines, stmts[0].lineno)
    opens_chain = isinstance(owner, ast.If) and lines[owner.lineno - 1].lstrip().startswith("if")
    if comment is None and kind == "branch" and opens_chain:  # above an `elif` is the last branch's end
        comment = _comment_above(lines, owner.lineno)
    if returning and isinstance(owner, ast.If):  # the caller returns what it returns: its case
        case = _case(owner.test) or "_".join(_words(owner.test, 2)) or "case"
        shown = _short(owner.test)
        if kind == "else":
            name, doc = f"_{_snake(short)}_otherwise", f"What ``{short}`` returns when no earlier case holds."
        else:
            when = f"``{shown}``" if shown else "its case holds"
            name, doc = f"_{_snake(short)}_{case}", f"What ``{short}`` returns when {when}."
        if comment is not None:
            doc = f"{comment}."
        return HelperName(name, doc)
    name, doc = _name(stmts, kind, owner, short, returned, params, comment)
    if comment is not None:
        doc = f"{comment}{gives}."
    elif not doc.endswith("."):
        doc = f"{doc}{gives}."
    return HelperName(name, doc)


def _name(
    stmts: Sequence[ast.stmt],
    kind: str,
    owner: ast.stmt,
    short: str,
    returned: Sequence[str],
    params: Sequence[str],
    comment: str | None,
) -> tuple[str, str]:
    only = stmts[0] if len(stmts) == 1 else None
    if len(returned) == 1 and (callee := _dominant_callee(stmts, returned[0])):
        bare = _snake(callee)
        for prefixes, how in ((_ADDS, "with"), (_REMOVES, "without")):
            prefix = next((p for p in prefixes if bare.startswith(p) and len(bare) > len(p)), None)
            if prefix:
                return (
                    f"_{how}_{bare[len(prefix):]}",
                    f"Return ``{returned[0]}``, through ``{callee}`` in the cases of ``{short}`` that call for it.",
                )
    filled = _filled(stmts, params)
    whole_loop = isinstance(only, ast.For | ast.While)
    if filled is not None and (not returned or (whole_loop and len(returned) == 1)):
        container, how = filled
        loop = only if isinstance(only, ast.For) else owner if kind == "loop" and isinstance(owner, ast.For) else None
        source = _words(_iterated(loop.iter), 1) if loop is not None else []
        if how == "fill":
            return f"_fill_{_snake(container)}", f"Add items to ``{container}`` for ``{short}``"
        if source:
            return (
                f"_set_{_snake(container)}_from_{source[0]}",
                f"Set items of ``{container}`` from ``{ast.unparse(_iterated(loop.iter))}``"  # type: ignore[union-attr]
                f" for ``{short}``",
            )
        return f"_set_{_snake(container)}", f"Set items of ``{container}`` for ``{short}``"
    if kind == "loop" and isinstance(owner, ast.For):
        names = [n.id for n in ast.walk(owner.target) if isinstance(n, ast.Name)]
        if names:
            item = "_".join(_snake(n) for n in names[:2]) or "item"
            targets = ", ".join(f"``{n}``" for n in names[:2])
            return f"_process_{item}", f"Process one {targets} of the loop in ``{short}``"
    test: ast.expr | None = None
    if kind in ("branch", "else") and isinstance(owner, ast.If):
        test = owner.test
    elif isinstance(only, ast.If):
        test = _chain_test(only)
    if returned:
        updated = all(r in params for r in returned)
        case = _case(test) if test is not None else None
        if case is None and kind == "branch" and comment is not None and len(words := _WORDS.findall(comment)) <= 3:
            case = "_".join(w.lower() for w in words)
        if case is not None and kind == "else":
            case = f"not_{case}"
        if case is not None:
            shown = _short(test) if test is not None else None
            when = f"``{shown}``" if shown else "its case"
            what = "not " if kind == "else" else ""
            return f"_{_joined(returned)}_for_{case}", f"Return {_shown(returned)} for ``{short}`` when {what}{when}."
        verb = "update" if updated else "compute"
        return f"_{verb}_{_joined(returned)}", f"{verb.capitalize()} {_shown(returned)} for ``{short}``."
    if test is not None and (words := _words(test)):
        shown = _short(test) or "its condition"
        if kind == "else":
            return "_handle_not_" + "_".join(words), f"Handle ``{short}`` when ``{shown}`` does not hold"
        return "_handle_" + "_".join(words), f"Handle the ``{shown}`` case of ``{short}``"
    if isinstance(only, ast.For) and (words := _words(_iterated(only.iter), 2)):
        return "_process_" + "_".join(words), f"Process each of ``{ast.unparse(only.iter)[:40]}`` for ``{short}``"
    if isinstance(only, ast.While) and (words := _words(only.test, 2)):
        shown = _short(only.test) or "its condition"
        return "_loop_while_" + "_".join(words), f"Run ``{short}``'s loop while ``{shown}`` holds"
    return f"_{_snake(short)}_{kind}_part", f"The ``{kind}`` block of ``{short}``"


def unique_name(name: str, caller: str, taken: set[str]) -> str | None:
    """``name``, else ``name`` + ``_in_<caller>`` when that is free; None when both are taken (a
    numbered ``_2`` tells a reader nothing) or the name would be too long to read."""
    name = re.sub(r"[^0-9A-Za-z_]", "_", name)
    if len(name) > _MAX_NAME:  # cut at a word boundary
        name = name[: name.rfind("_", 0, _MAX_NAME + 1)] or name[:_MAX_NAME]
    for candidate in (name, f"{name}_in_{_snake(caller.rsplit('.', 1)[-1])}"):
        if candidate not in taken and candidate.isidentifier():
            return candidate
    return None
