"""Docstrings seen through the AST: which are missing, whether a change touched only docstrings, and
whether a proposed docstring reads as prose about the code it documents."""

from __future__ import annotations

import ast
import re

__all__ = ["definition_source", "docstring_problem", "missing_docstrings", "strip_docstrings"]


def _has_docstring(node: ast.AST) -> bool:
    body = getattr(node, "body", None)
    return bool(
        body
        and isinstance(body[0], ast.Expr)
        and isinstance(body[0].value, ast.Constant)
        and isinstance(body[0].value.value, str)
    )


def missing_docstrings(source: str) -> list[str]:
    """Public functions and classes (and the module, as ``<module>``) without a docstring."""
    tree = ast.parse(source)
    out = [] if _has_docstring(tree) else ["<module>"]

    def visit(node: ast.AST, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                qual = f"{prefix}{child.name}"
                if not child.name.startswith("_") and not _has_docstring(child):
                    out.append(qual)
                if isinstance(child, ast.ClassDef):
                    visit(child, qual + ".")

    visit(tree, "")
    return out


def strip_docstrings(source: str) -> str:
    """The AST dump with every docstring removed: equal before and after a docstring-only edit."""
    tree = ast.parse(source)
    for node in ast.walk(tree):
        if isinstance(
            node, ast.Module | ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef
        ) and _has_docstring(node):
            node.body = node.body[1:] or [ast.Pass()]
    return ast.dump(tree)


_WORD = re.compile(r"[A-Za-z]+")
_MARKUP = set("{}<>\\|")
#: fewest words of prose a docstring must have
MIN_WORDS = 3


def _parts(identifier: str) -> set[str]:
    """``load_CSVFile`` -> {"load", "csv", "file"}: the lowercase words of an identifier."""
    return {w.lower() for w in re.findall(r"[A-Z]?[a-z]+|[A-Z]+(?![a-z])|[a-z]+", identifier)}


def _definition(tree: ast.Module, qualname: str) -> ast.AST | None:
    """The function or class ``qualname`` names (the module for ``<module>``), or None."""
    if qualname == "<module>":
        return tree
    node: ast.AST = tree
    for name in qualname.split("."):
        node = next((c for c in ast.iter_child_nodes(node)
                     if isinstance(c, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef) and c.name == name),
                    ast.Pass())
    return None if isinstance(node, ast.Pass) else node


#: most lines of code shown to the model for one docstring
MAX_LINES = 80


def definition_source(source: str, qualname: str) -> str:
    """The code a docstring for ``qualname`` describes: its definition (the file's head for ``<module>``),
    at most ``MAX_LINES`` lines."""
    node = _definition(ast.parse(source), qualname)
    lines = source.splitlines()
    if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
        first = min([node.lineno, *(d.lineno for d in node.decorator_list)])
        lines = lines[first - 1:node.end_lineno]
    if len(lines) > MAX_LINES:
        lines = [*lines[:MAX_LINES], "    ..."]
    return "\n".join(lines)


def _vocabulary(node: ast.AST) -> set[str]:
    """The words of every identifier (and argument) in a tree."""
    words: set[str] = set()
    for n in ast.walk(node):
        for ident in (getattr(n, "name", None), getattr(n, "id", None), getattr(n, "attr", None),
                      getattr(n, "arg", None), getattr(n, "module", None)):
            if isinstance(ident, str):
                words |= _parts(ident)
    return {w for w in words if len(w) >= 3}


def _related(word: str, vocabulary: set[str]) -> bool:
    """Same word, or the same first four letters for words of four or more (load/loads/loading)."""
    w = word.lower()
    return any(w == v or (len(w) >= 4 and len(v) >= 4 and w[:4] == v[:4]) for v in vocabulary)


def docstring_problem(source: str, qualname: str, text: str) -> str | None:
    """Why ``text`` is not a plausible docstring for ``qualname`` in ``source``, or None.

    A small model under a JSON schema always returns *a* string, often noise ("Commercial, delivered
    to{", "INVACIANACIONES: ANACESIONES"); such a docstring parses and passes every test, so the gate
    would keep it. Prose here means: no markup or control characters, at least three words, and one word
    that names something the file's code uses (a name, an argument, an attribute; the file, not only the
    definition, since a docstring may say what a function is for in its callers' words)."""
    if any(ch in _MARKUP or (not ch.isprintable() and ch not in "\n\t") for ch in text):
        return f"the docstring of {qualname} holds markup or control characters; write plain prose"
    words = _WORD.findall(text)
    if len(words) < MIN_WORDS:
        return f"the docstring of {qualname} is not a sentence; write at least {MIN_WORDS} words"
    if sum(w.isupper() and len(w) > 3 for w in words) * 2 > len(words):
        return f"the docstring of {qualname} is mostly capitals; write ordinary prose"
    tree = ast.parse(source)
    if _definition(tree, qualname) is not None and not any(_related(w, _vocabulary(tree)) for w in words):
        return (f"the docstring of {qualname} names nothing its code uses; say what it is for in terms of "
                f"its name, arguments or what it calls")
    return None
