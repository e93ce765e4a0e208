"""The types agent: inference, the baseline tracer (a real pytest run under it), mypy as the judge."""

from __future__ import annotations

import ast
import asyncio
import subprocess
import sys
import textwrap
from pathlib import Path

from pyagent.agents.typehints import (
    Annotation,
    TypesAgent,
    annotate,
    annotated_functions,
    infer_annotations,
    min_python,
    type_checker,
)
from pyagent.agents.typetrace import read_trace, traced_argv
from pyagent.model.context import CascadeContext
from pyagent.model.priority import AgentPriority
from pyagent.model.task import AgentTask
from tests.improve_helpers import NO_PLUGINS

SOURCE = '''\
"""Shapes."""
from __future__ import annotations


class Shape:
    def __init__(self, sides):
        self.sides = sides  # kept: comments stay

    def describe(self, prefix="a"):
        return f"{prefix} {self.sides}-gon"

    @property
    def name(self):
        return "shape"


def log(msg):
    print(msg)


def is_ready():
    if log:
        return True
    return False


def maybe(x):
    if x:
        return 1


def stub():
    ...


def gen():
    yield 1


def scale(shape, k):
    return Shape(shape.sides * k)
'''


def _by_name(anns: list[Annotation]) -> dict[str, Annotation]:
    return {a.qualname: a for a in anns}


def test_safe_inference_adds_none_and_literal_returns_only() -> None:
    anns = _by_name(infer_annotations(SOURCE))
    assert anns["log"].returns == "None" and anns["log"].source == "inferred"
    assert anns["is_ready"].returns == "bool"
    assert anns["Shape.__init__"].returns == "None"
    # falls off its end (implicit None), a stub, a generator, a decorated method, a computed return
    for left_alone in ("maybe", "stub", "gen", "Shape.name", "Shape.describe", "scale"):
        assert left_alone not in anns, left_alone
    new, done = annotate(SOURCE, list(anns.values()))
    assert "def log(msg) -> None:" in new and "def is_ready() -> bool:" in new
    assert "self.sides = sides  # kept: comments stay" in new
    assert sorted(done) == sorted(anns)


def test_traced_types_fill_parameters_and_returns_where_the_file_can_write_them() -> None:
    traced = {
        "scale": {"args": {"shape": "Shape", "k": "int"}, "returns": "Shape"},
        "Shape.describe": {"args": {"prefix": "str"}, "returns": "str"},
        "Shape.__init__": {"args": {"sides": "int | None"}, "returns": None},
    }
    anns = _by_name(infer_annotations(SOURCE, traced))
    assert anns["scale"].args == (("shape", "Shape"), ("k", "int")) and anns["scale"].returns == "Shape"
    assert anns["Shape.describe"].args == (("prefix", "str"),)
    new, _ = annotate(SOURCE, list(anns.values()))
    assert "def describe(self, prefix: str = \"a\") -> str:" in new
    assert "def __init__(self, sides: int | None) -> None:" in new
    # without `from __future__ import annotations` and on Python < 3.10, a union would break the import
    old_style = SOURCE.replace("from __future__ import annotations\n", "")
    anns = _by_name(infer_annotations(old_style, traced, min_version=(3, 8)))
    assert "Shape.__init__" in anns and anns["Shape.__init__"].args == ()
    assert anns["scale"].args == (("shape", "Shape"), ("k", "int"))  # Shape is defined above scale
    assert _by_name(infer_annotations(old_style, traced, min_version=(3, 10)))["Shape.__init__"].args
    # a default that is not a literal (found on tabulate: `? | str`) leaves the parameter alone
    computed = "def pad(s, fill=FILL):\n    return s\n"
    anns = infer_annotations(computed, {"pad": {"args": {"s": "str", "fill": "str"}, "returns": "str"}})
    assert anns[0].args == (("s", "str"),)
    # a nested union merged with a literal default stays one valid annotation (tabulate)
    nested = "def cell(v, missing=None):\n    return v\n"
    traced2 = {"cell": {"args": {"missing": "list[str | None] | str"}, "returns": None}}
    ann = infer_annotations(nested, traced2, min_version=(3, 10))[0]
    assert ann.args == (("missing", "list[str | None] | str | None"),)
    new, _ = annotate(nested, [ann])
    assert "missing: list[str | None] | str | None = None" in new


def test_annotated_functions_counts_fully_annotated_ones() -> None:
    assert annotated_functions(SOURCE) == (0, 9)
    anns = infer_annotations(SOURCE, {"Shape.describe": {"args": {"prefix": "str"}, "returns": "str"}})
    new, _ = annotate(SOURCE, anns)
    # is_ready (no parameters) and describe; log and Shape.__init__ keep an unannotated parameter
    assert annotated_functions(new) == (2, 9)
    assert annotated_functions("def broken(:\n") == (0, 0)


def test_checker_and_python_version_come_from_the_project(tmp_path: Path) -> None:
    assert type_checker(tmp_path) is None and min_python(tmp_path) == (3, 8)
    (tmp_path / "setup.cfg").write_text("[mypy]\nstrict = True\n")
    assert type_checker(tmp_path) == "mypy"
    (tmp_path / "setup.cfg").unlink()
    (tmp_path / "pyproject.toml").write_text('[project]\nrequires-python = ">=3.10"\n[tool.pyright]\n')
    assert type_checker(tmp_path) == "pyright" and min_python(tmp_path) == (3, 10)


CODE = '''\
class Box:
    def __init__(self, v):
        self.v = v


def add(a, b):
    return a + b


def first(items):
    if not items:
        raise ValueError("empty")
    return items[0]


def shout(s):
    print(s.upper())
'''

TESTS = '''\
import pytest

from pkg import Box, add, first, shout


def test_all():
    assert add(1, 2) == 3 and add(1.5, 2) == 3.5
    assert Box(3).v == 3
    with pytest.raises(ValueError):
        first([])
    assert first(["x"]) == "x"
    shout("hi")
'''


def _pkg(root: Path) -> Path:
    (root / "pkg").mkdir(parents=True)
    (root / "tests").mkdir()
    (root / "pkg" / "__init__.py").write_text(CODE)
    (root / "tests" / "test_pkg.py").write_text(TESTS)
    return root


def test_the_tracer_records_what_a_real_test_run_passes_and_returns(tmp_path: Path) -> None:
    root = _pkg(tmp_path / "proj")
    out = tmp_path / "types.json"
    argv = traced_argv([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"], out, root)
    assert argv is not None
    assert traced_argv(["pytest"], out, root) is None  # not our interpreter: cannot be wrapped
    done = subprocess.run(argv, cwd=root, capture_output=True, text=True, env={**NO_PLUGINS, "PATH": "/usr/bin:/bin"})
    assert done.returncode == 0, done.stdout + done.stderr
    seen = read_trace(out, root)["pkg/__init__.py"]
    assert seen["add"].args == {"a": "float", "b": "int"} and seen["add"].returns == "float"
    assert seen["Box.__init__"].args == {"self": "Box", "v": "int"}  # the annotator skips `self`
    # `first([])` raised: its unwinding is no return, so only the real return (a str) counts
    # `[]` has no element to name, so `items` (list[str] on the other call) is left out
    assert seen["first"].args == {}
    assert seen["first"].returns == "str"
    assert seen["shout"].returns == "None"
    assert "tests/test_pkg.py" in read_trace(out, root)  # the planner leaves test files out


def _task(target: str, anns: list[Annotation], checker: str | None) -> AgentTask:
    return AgentTask(
        id="t1",
        agent="types",
        kind="type-annotations",
        target=target,
        files=(target,),
        priority=AgentPriority.STANDARD,
        context=CascadeContext.root("test"),
        params={"annotations": {a.qualname: a.to_params() for a in anns}, "checker": checker},
    )


MYPY_PROJECT = '''\
def parse(text):
    return int(text)


def caller():
    return parse(b"12")


def note(msg):
    print(msg)
'''


def test_mypy_rejects_a_traced_annotation_and_the_inferred_ones_are_kept(tmp_path: Path) -> None:
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "__init__.py").write_text("")
    (tmp_path / "pkg" / "mod.py").write_text(MYPY_PROJECT)
    (tmp_path / "mypy.ini").write_text("[mypy]\ncheck_untyped_defs = True\n")
    # the tests only ever passed str; the project's own caller passes bytes, which mypy sees
    traced = {"parse": {"args": {"text": "str"}, "returns": "int"}}
    anns = infer_annotations(MYPY_PROJECT, traced, min_version=(3, 11))
    assert {a.qualname for a in anns} == {"parse", "note"}
    agent = TypesAgent()
    out = asyncio.run(agent.run(_task("pkg/mod.py", anns, "mypy"), tmp_path))
    assert out.error is None, out.error
    new = (tmp_path / "pkg" / "mod.py").read_text()
    assert "def parse(text):" in new  # the traced `str` would have made mypy flag caller()
    assert "def note(msg) -> None:" in new
    assert "mypy: no new errors" in out.note and "1 function(s)" in out.note


def test_without_a_checker_the_annotations_are_written_for_the_tests_to_judge(tmp_path: Path) -> None:
    root = _pkg(tmp_path / "proj")
    anns = infer_annotations(CODE, {"add": {"args": {"a": "float", "b": "int"}, "returns": "float"}})
    out = asyncio.run(TypesAgent().run(_task("pkg/__init__.py", anns, None), root))
    assert out.error is None, out.error
    new = (root / "pkg" / "__init__.py").read_text()
    assert "def add(a: float, b: int) -> float:" in new and "def shout(s) -> None:" in new
    assert "tests only" in out.note


def test_a_file_that_does_not_parse_is_skipped_with_a_reason(tmp_path: Path) -> None:
    (tmp_path / "bad.py").write_text("def f(:\n    pass\n")
    ann = Annotation("f", (), "None", "inferred")
    out = asyncio.run(TypesAgent().run(_task("bad.py", [ann], None), tmp_path))
    assert out.error is not None and out.error.startswith("skipped:")
    assert (tmp_path / "bad.py").read_text() == "def f(:\n    pass\n"


def test_pyproject_tools_mypy_section_is_configuration(tmp_path: Path) -> None:
    (tmp_path / "pyproject.toml").write_text(textwrap.dedent("""\
        [tool.mypy]
        strict = true
        """))
    assert type_checker(tmp_path) == "mypy"


def test_the_tracer_takes_itself_out_after_its_time_budget(tmp_path: Path) -> None:
    import sys as _sys
    import time

    from pyagent.agents.typetrace import _Recorder

    recorder = _Recorder(str(tmp_path))
    _sys.setprofile(recorder)
    try:
        recorder.deadline = time.monotonic() - 1  # the budget is spent
        for _ in range(5000):  # each loop turn is a C call: profile events
            len("x")
        still_hooked = _sys.getprofile() is recorder
    finally:
        _sys.setprofile(None)
    assert recorder.stopped and not still_hooked


def test_a_header_that_would_pass_79_characters_is_folded_one_parameter_a_line() -> None:
    # on tabulate the gate rolled back a file whose annotated headers broke its E501 limit
    header = "def render_table(rows_to_render, separator_between, maximum_width_allowed):"
    assert len(header) <= 79 < len(header) + len(" -> None")
    long_method = "    def choose_padfn(self, strings, alignment, has_invisible, preserve_whitespace=False):"
    assert len(long_method) > 79  # already over 79 before: annotating it must not make it longer
    src = (
        header
        + "\n    print(rows_to_render)\n\n\ndef short(x):\n    print(x)\n\n\nclass K:\n"
        + long_method
        + "\n        return 1\n"
    )
    traced = {
        "render_table": {"args": {"rows_to_render": "list[str]"}, "returns": None},
        "K.choose_padfn": {"args": {"strings": "list[str]", "preserve_whitespace": "bool"}, "returns": "int"},
    }
    new, done = annotate(src, infer_annotations(src, traced, min_version=(3, 10)))
    assert sorted(done) == ["K.choose_padfn", "render_table", "short"]
    assert max(len(line) for line in new.splitlines()) <= 79
    assert "def render_table(\n    rows_to_render: list[str],\n    separator_between,\n" in new
    assert "    maximum_width_allowed,\n) -> None:\n" in new
    assert "        preserve_whitespace: bool = False,\n    ) -> int:\n" in new
    assert "def short(x) -> None:" in new
    ast.parse(new)


def test_parameters_the_author_laid_over_several_lines_are_not_refolded() -> None:
    src = (
        "def render(rows_to_render,\n"
        "           separator_between_the_cells_of_each_row, maximum_width_allowed_for_the_table):\n"
        "    print(rows_to_render)\n"
    )
    traced = {"render": {"args": {"rows_to_render": "list[str]"}, "returns": None}}
    new, done = annotate(src, infer_annotations(src, traced, min_version=(3, 10)))
    assert done == [] and new == src  # annotating would push its second line past 79


def test_a_class_not_yet_defined_where_the_def_runs_is_written_only_when_annotations_are_deferred() -> None:
    # tabulate (Python >= 3.10, no __future__ import): `-> JupyterHTMLStr` on a function above the
    # class was F821 and a NameError at import; `-> Node` inside class Node is the same
    src = (
        "def render(rows):\n    return Html(rows)\n\n\n"
        "class Html(str):\n    pass\n\n\n"
        "class Node:\n    def copy(self, other):\n        return Node()\n\n\n"
        "def again(rows):\n    return Html(rows)\n"
    )
    traced = {
        "render": {"args": {"rows": "list[str]"}, "returns": "Html"},
        "Node.copy": {"args": {"other": "Node"}, "returns": "Node"},
        "again": {"args": {"rows": "list[str]"}, "returns": "Html"},
    }
    anns = _by_name(infer_annotations(src, traced, min_version=(3, 10)))
    assert anns["render"].args == (("rows", "list[str]"),) and anns["render"].returns is None
    assert "Node.copy" not in anns
    assert anns["again"].returns == "Html"  # defined above it
    new, _ = annotate(src, list(anns.values()))
    exec(compile(new, "m.py", "exec"), {})  # imports cleanly
    deferred = _by_name(infer_annotations("from __future__ import annotations\n" + src, traced, min_version=(3, 10)))
    assert deferred["render"].returns == "Html" and deferred["Node.copy"].returns == "Node"
