"""Docstrings seen through the AST: which are missing, and whether a change touched only docstrings."""

from __future__ import annotations

import ast

__all__ = ["missing_docstrings", "strip_docstrings"]


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
