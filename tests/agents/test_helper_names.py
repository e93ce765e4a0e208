"""Helper names from the block itself, on code adapted from tabulate 0.10.0 (where the first real
run named helpers `_update_rows` and `_update_headers_and_rows_2`), and the elif-pass cleanup."""

from __future__ import annotations

import ast
import textwrap
from typing import Any

import pytest

from pyagent.agents.complexity import refactor_function
from pyagent.agents.helper_names import unique_name
from pyagent.health import CodeHealthAuditor

AUDITOR = CodeHealthAuditor()

SHOWINDEX = """
def normalize(rows, index, showindex="default"):
    showindex_is_a_str = type(showindex) in [str, bytes]
    if showindex == "default" and index is not None:
        rows = _prepend_row_index(rows, index)
    elif isinstance(showindex, list) and not showindex_is_a_str:
        rows = _prepend_row_index(rows, list(showindex))
    elif showindex == "always" or (bool(showindex) and not showindex_is_a_str):
        if index is None:
            index = list(range(len(rows)))
        rows = _prepend_row_index(rows, index)
    elif showindex == "never":
        pass
    if rows and len(rows[0]) > 3:
        rows = rows[:3]
    return rows


def _prepend_row_index(rows, index):
    return [[i, *r] for i, r in zip(index, rows)]
"""

WRAP_CHUNKS = """
class Wrap:
    def _len(self, s):
        return len(s)

    def wrap_chunks(self, chunks, width, lines):
        while chunks:
            cur_line = []
            cur_len = 0
            if lines and width > 2:
                width -= 1
            while chunks:
                chunk_len = self._len(chunks[-1])

                # Can at least squeeze this chunk onto the current line.
                if cur_len + chunk_len <= width:
                    cur_line.append(chunks.pop())
                    cur_len += chunk_len

                # Nope, this line is full.
                else:
                    break
            if cur_len == 0 and chunks:
                cur_line.append(chunks.pop())
            lines.append("".join(cur_line))
        return lines
"""

COLALIGN = """
def aligned(colalign, headers, aligns):
    if colalign is not None:
        if isinstance(colalign, str):
            colalign = [colalign]
        for idx, align in enumerate(colalign):
            if not idx < len(aligns):
                break
            elif align != "global":
                aligns[idx] = align
    if headers:
        aligns = aligns[: len(headers)]
    return aligns
"""

COLORED_INT = r'''
import re


def fmt(val, valtype, intfmt):
    if valtype is str:
        return f"{val}"
    elif valtype is int:
        if isinstance(val, str):
            val_striped = val.encode("unicode_escape").decode("utf-8")
            colored = re.search(r"(\\[xX]+[0-9a-fA-F]+\[\d+[mM]+)([0-9.]+)(\\.*)$", val_striped)
            if colored:
                total_groups = len(colored.groups())
                if total_groups == 3:
                    digits = colored.group(2)
                    if digits.isdigit():
                        val_new = colored.group(1) + format(int(digits), intfmt) + colored.group(3)
                        val = val_new.encode("utf-8").decode("unicode_escape")
            intfmt = ""
        return format(val, intfmt)
    return f"{val}"
'''

FIRSTROW = """
def first_row(headers, rows, index):
    if rows and headers == "keys":
        headers = list(range(len(rows[0])))
    # take headers from the first row if necessary
    if headers == "firstrow" and len(rows) > 0:
        if index is not None:
            headers = [index[0]] + list(rows[0])
            index = index[1:]
        else:
            headers = rows[0]
        headers = list(map(str, headers))
        rows = rows[1:]
    elif headers == "firstrow":
        headers = []
    return headers, rows, index
"""

DICT_ROWS = """
def keyed(headers, rows, strict):
    if headers is None:
        headers = ()
    if rows is None:
        rows = []
    if strict is None:
        strict = False
    if strict and not rows:
        raise ValueError("no rows")
    elif rows and hasattr(rows[0], "keys"):
        # dict-like object
        keys = []
        for row in rows:
            for k in row.keys():
                if k not in keys:
                    keys.append(k)
        if headers == "keys":
            headers = keys
        rows = [[row.get(k) for k in keys] for row in rows]
    return headers, rows
"""


def _refactor(source: str, qualname: str) -> tuple[str, Any]:
    result = refactor_function(textwrap.dedent(source), qualname, "m.py", max_complexity=4, auditor=AUDITOR)
    return result.source, result


def _summary(source: str, helper: str) -> str:
    fn = next(n for n in ast.walk(ast.parse(source)) if isinstance(n, ast.FunctionDef) and n.name == helper)
    return " ".join((ast.get_docstring(fn) or "").split("\n\n")[0].split())


@pytest.mark.parametrize(
    ("source", "qualname", "name", "summary"),
    [
        # every branch stores `rows = _prepend_row_index(...)`: the helper is rows with the row index
        (
            SHOWINDEX,
            "normalize",
            "_with_row_index",
            "Return ``rows``, through ``_prepend_row_index`` in the cases of ``normalize`` that call for it.",
        ),
        # a loop that moves chunks onto `cur_line` (and counts them): it fills cur_line
        (
            WRAP_CHUNKS,
            "Wrap.wrap_chunks",
            "_fill_cur_line",
            "Add items to ``cur_line`` for ``wrap_chunks``; return ``cur_len``.",
        ),
        # a loop that sets items of `aligns` from what it iterates
        (
            COLALIGN,
            "aligned",
            "_set_aligns_from_colalign",
            "Set items of ``aligns`` from ``colalign`` for ``aligned``.",
        ),
        # a branch: what it returns and the case it tests
        (
            COLORED_INT,
            "fmt",
            "_val_and_intfmt_for_str",
            "Return ``val``, ``intfmt`` for ``fmt`` when ``isinstance(val, str)``.",
        ),
        # an if/elif chain on one literal; the author's comment above it is the summary
        (
            FIRSTROW,
            "first_row",
            "_headers_and_rows_for_firstrow",
            "Take headers from the first row if necessary; return ``headers``, ``rows``, ``index``.",
        ),
        # a branch whose test names no case: the comment opening it does
        (
            DICT_ROWS,
            "keyed",
            "_headers_and_rows_for_dict_like_object",
            "Dict-like object; return ``headers``, ``rows``.",
        ),
    ],
)
def test_helpers_are_named_for_what_they_return_test_fill_or_call(
    source: str, qualname: str, name: str, summary: str
) -> None:
    new, result = _refactor(source, qualname)
    assert result.helpers[0] == name, result.steps
    assert _summary(new, name) == summary
    assert not any(h[-1].isdigit() for h in result.helpers)


def test_a_clash_takes_the_callers_name_never_a_number() -> None:
    twice = textwrap.dedent(COLALIGN) + textwrap.dedent(COLALIGN).replace("def aligned(", "def aligned_again(")
    first, _ = _refactor(twice, "aligned")
    second, result = _refactor(first, "aligned_again")
    assert result.helpers == ("_set_aligns_from_colalign_in_aligned_again",)
    namespace: dict[str, Any] = {}
    exec(compile(second, "m.py", "exec"), namespace)
    for fn in ("aligned", "aligned_again"):
        assert namespace[fn](["l", "global", "r", "c"], ["a", "b"], ["x", "y", "z"]) == ["l", "y"]
    # both taken: no name (that block is refused and another one tried), never `_fill_rows_2`
    assert unique_name("_fill_rows", "f", {"_fill_rows", "_fill_rows_in_f"}) is None


def test_an_empty_trailing_elif_goes_only_when_its_test_cannot_run_code() -> None:
    new, result = _refactor(SHOWINDEX, "normalize")
    assert 'dropped the empty trailing `elif showindex == "never": pass`' in result.steps
    assert "never" not in new
    old_ns: dict[str, Any] = {}
    new_ns: dict[str, Any] = {}
    exec(compile(textwrap.dedent(SHOWINDEX), "old.py", "exec"), old_ns)
    exec(compile(new, "new.py", "exec"), new_ns)
    rows = [[1, 2], [3, 4]]
    for args in ((None, "default"), ([7, 8], "default"), (None, [5, 6]), (None, "always"), (None, "never"), (None, "")):
        assert old_ns["normalize"](rows, *args) == new_ns["normalize"](rows, *args), args
    # a call in the test may do something (and here does): that elif stays
    impure = SHOWINDEX.replace('elif showindex == "never":', "elif _log(showindex):")
    kept, result = _refactor(impure + "\n\ndef _log(x):\n    print(x)\n", "normalize")
    assert "elif _log(showindex):\n        pass" in kept
    assert not any("dropped" in s for s in result.steps)
