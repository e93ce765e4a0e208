"""One snippet per metric rule of ARCHITECTURE.md ("Metric semantics"), checked against the anchors.

The expected values are not written here: they are taken live, in this test run, by running
``ruff check --select C901`` (max-complexity 0) on each snippet written to a file, and radon's own
functions (``ComplexityVisitor.total_complexity``, ``h_visit``, ``analyze``, ``mi_visit``, which
``radon cc/hal/raw/mi`` call) on the same text. A few snippets also carry the value the
architecture document states, to show the anchors still say what the document says.
"""

from __future__ import annotations

import json
import re
import subprocess
import textwrap
from pathlib import Path
from typing import Any

import pytest
from radon.metrics import h_visit, mi_visit
from radon.raw import analyze
from radon.visitors import ComplexityVisitor

from benchmarks.agreement import tool
from pyagent.health import CodeHealthAuditor, FileHealth

# name -> (source, value stated by ARCHITECTURE.md for the function `f`, if any)
C901_RULES: dict[str, tuple[str, int | None]] = {
    "straight_line": ("def f(a):\n    return a\n", 1),
    "if_elif_else": ("def f(a):\n    if a == 1:\n        return 1\n    elif a == 2:\n        return 2\n    else:\n        return 3\n", None),
    "for_and_async_for": ("async def f(a):\n    for x in a:\n        pass\n    async for y in a:\n        pass\n", None),
    "while": ("def f(a):\n    while a:\n        a -= 1\n", None),
    "except_handlers": ("def f():\n    try:\n        g()\n    except KeyError:\n        pass\n    except (TypeError, ValueError):\n        pass\n", None),
    "try_else": ("def f():\n    try:\n        g()\n    except KeyError:\n        pass\n    else:\n        h()\n", None),
    "doc_example_try_finally_if": (
        "def f(a):\n    try:\n        g()\n    except KeyError:\n        pass\n    else:\n        h()\n"
        "    finally:\n        if a:\n            i()\n",
        4,
    ),
    "match_with_catch_all": ("def f(a):\n    match a:\n        case 1:\n            pass\n        case [x, y]:\n            pass\n        case _:\n            pass\n", None),
    "match_capture_last": ("def f(a):\n    match a:\n        case 1:\n            pass\n        case other:\n            pass\n", None),
    "match_guarded_last": ("def f(a):\n    match a:\n        case 1:\n            pass\n        case _ if a:\n            pass\n", None),
    "match_case_bodies": ("def f(a):\n    match a:\n        case 1:\n            if a:\n                pass\n        case _:\n            for x in a:\n                pass\n", None),
    "loop_else_adds_nothing": ("def f(a):\n    for x in a:\n        pass\n    else:\n        pass\n    while a:\n        break\n    else:\n        pass\n", None),
    "with_assert_ifexp_boolops_comprehensions": (
        "def f(a, b):\n    with open(a) as fh:\n        assert a and b or not a\n"
        "        return [x for x in fh if x] if a else {y: 1 for y in b}\n",
        1,
    ),
    "nested_def": ("def f(a):\n    def g(b):\n        if b:\n            return 1\n    if a:\n        return g\n", None),
    "nested_class_in_function": ("def f():\n    class C:\n        def m(self):\n            if self:\n                pass\n    return C\n", None),
    "methods_and_decorators": (
        "import functools\n\n\nclass K:\n    @staticmethod\n    @functools.cache\n    def m(a):\n"
        "        if a:\n            return 1\n\n    async def n(self):\n        pass\n",
        None,
    ),
    "def_inside_if_and_try": ("if True:\n    def f(a):\n        if a:\n            pass\ntry:\n    def g():\n        pass\nexcept ImportError:\n    pass\n", None),
}

# name -> source, for the module-level radon rules (total complexity, Halstead, raw lines, MI)
RADON_RULES: dict[str, str] = {
    "boolops_operands_minus_one": "x = a and b and c or d\n",
    "comprehensions_with_ifs": "x = [i for i in a if i if i > 2]\ny = {k: v for k in a for v in b}\n",
    "conditional_expression": "x = 1 if a else 2\n",
    "assert_counts_one": "assert a and b\n",
    "loop_else_counts": "for x in a:\n    pass\nelse:\n    pass\nwhile a:\n    pass\nelse:\n    pass\n",
    "try_else_counts": "try:\n    pass\nexcept A:\n    pass\nexcept B:\n    pass\nelse:\n    pass\n",
    "nested_functions_not_counted": "def f(a):\n    if a:\n        pass\n    def g(b):\n        if b:\n            pass\n    return g\n",
    "methods_count_one_plus": "class C:\n    if X:\n        y = 1\n    def m(self):\n        if self:\n            pass\n    def n(self):\n        pass\n",
    "decorators_and_defaults_ignored": "@d(a and b)\ndef f(x=1 if a else 2):\n    return x\n",
    "match_catch_all": "match a:\n    case 1:\n        pass\n    case x:\n        pass\n",
    "halstead_operand_keys": "x = a.b + 1\ny = a.b + True\nz = 'b' + b\nif x == y < z:\n    x += 2.0\nw = -x\n",
    "halstead_function_contexts": "def f(a):\n    return a + 1\n\ndef g(a):\n    return a + 1\n",
    "raw_docstrings_and_comments": '"""Module.\n\nDoc.\n"""\n# comment\n\nx = 1  # trailing\n\'\'\'one line\'\'\'\n',
    "raw_logical_lines": "if a: b = 1\nfor x in y: pass\nd = {1: 2}\nx = 1; y = 2\nz: int = 3\n",
    "raw_continuations": "x = (1 +\n     2)\ny = 1 + \\\n    2\ns = '''a\n\nb'''\n",
    "raw_form_feed": "x = 1\n\x0c\ndef f():\n    pass\n",
    "mi_docstring_and_code": '"""Module.\n\nDoc.\n"""\n\n\ndef f(a, b):\n    """Add.\n\n    Really.\n    """\n    return a + b * 2 - (a or b)\n',
    "comment_only": "# just a comment\n# another\n",
    "empty": "",
}


def _functions_by_key(fh: FileHealth) -> dict[tuple[str, int], int]:
    return {(f.name, f.lineno): f.complexity for f in fh.functions}


@pytest.fixture(scope="module")
def ruff_c901(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[tuple[str, int], int]]:
    """ruff's C901 findings for every C901 snippet, keyed by snippet name then (function, line)."""
    root = tmp_path_factory.mktemp("c901")
    for name, (source, _) in C901_RULES.items():
        (root / f"{name}.py").write_text(source)
    out = subprocess.run(
        [tool("ruff"), "check", "--isolated", "--select", "C901", "--config",
         "lint.mccabe.max-complexity=0", "--output-format", "json", "--exit-zero", "."],
        cwd=root, capture_output=True, text=True, check=True, timeout=60,
    )  # fmt: skip
    found: dict[str, dict[tuple[str, int], int]] = {name: {} for name in C901_RULES}
    for d in json.loads(out.stdout):
        m = re.match(r"`(.+)` is too complex \((\d+) > 0\)", d["message"])
        assert m, d["message"]
        found[Path(d["filename"]).stem][(m[1], d["location"]["row"])] = int(m[2])
    return found


@pytest.mark.parametrize("name", sorted(C901_RULES))
def test_c901_rule_matches_ruff(name: str, ruff_c901: dict[str, dict[tuple[str, int], int]]) -> None:
    source, documented = C901_RULES[name]
    theirs = ruff_c901[name]
    assert theirs, "ruff reported nothing; the snippet must contain functions"
    ours = _functions_by_key(CodeHealthAuditor().audit_source(source))
    assert ours == theirs
    if documented is not None:
        assert ours[("f", 1)] == documented


def _radon(source: str, multi: bool = True) -> dict[str, Any]:
    total = h_visit(source).total
    return {
        "complexity": ComplexityVisitor.from_code(source).total_complexity,
        "halstead": (total.h1, total.h2, total.N1, total.N2, total.volume, total.difficulty, total.effort),
        "raw": tuple(analyze(source)),
        "mi": mi_visit(source, multi),
    }


def _ours(fh: FileHealth) -> dict[str, Any]:
    assert fh.halstead is not None and fh.raw is not None and fh.mi is not None, fh.error
    h = fh.halstead
    r = fh.raw
    return {
        "complexity": fh.complexity,
        "halstead": (h.h1, h.h2, h.N1, h.N2, h.volume, h.difficulty, h.effort),
        "raw": (r.loc, r.lloc, r.sloc, r.comments, r.multi, r.blank, r.single_comments),
        "mi": fh.mi,
    }


@pytest.mark.parametrize("name", sorted(RADON_RULES) + sorted(C901_RULES))
def test_module_metrics_match_radon(name: str) -> None:
    source = RADON_RULES[name] if name in RADON_RULES else C901_RULES[name][0]
    ours = _ours(CodeHealthAuditor().audit_source(source))
    theirs = _radon(source)
    assert ours["complexity"] == theirs["complexity"]
    assert ours["halstead"] == pytest.approx(theirs["halstead"], rel=1e-12)
    assert ours["raw"] == theirs["raw"]
    assert ours["mi"] == pytest.approx(theirs["mi"], abs=1e-9)


def test_mi_without_multiline_strings_as_comments() -> None:
    source = RADON_RULES["mi_docstring_and_code"]
    ours = CodeHealthAuditor(multi_as_comments=False).audit_source(source)
    default = CodeHealthAuditor().audit_source(source)
    assert ours.mi == pytest.approx(mi_visit(source, False), abs=1e-9)
    assert ours.mi != default.mi, "the snippet has multi-line strings, so the option must matter"


def test_qualified_names_and_def_lines() -> None:
    source = textwrap.dedent(
        """\
        class Outer:
            class Inner:
                @property
                def prop(self):
                    return 1

            def method(self):
                def helper():
                    class Local:
                        def deep(self):
                            pass
                    return Local
                return helper


        async def top():
            pass
        """
    )
    fh = CodeHealthAuditor().audit_source(source)
    got = [(f.qualname, f.name, f.lineno, f.endline) for f in fh.functions]
    assert got == [
        ("Outer.Inner.prop", "prop", 4, 5),
        ("Outer.method", "method", 7, 13),
        ("Outer.method.<locals>.helper", "helper", 8, 12),
        ("Outer.method.<locals>.helper.<locals>.Local.deep", "deep", 10, 11),
        ("top", "top", 16, 17),
    ]
