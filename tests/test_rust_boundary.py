"""The typed boundary of the Rust core: frozen result classes, the error class of a Rust panic."""

from __future__ import annotations

from pathlib import Path

import pytest

from pyagent import _rust
from pyagent.health import CodeHealthAuditor, FileHealth, FunctionHealth, Halstead, RawMetrics

SOURCE = "def f(x):\n    if x:\n        return 1\n    return 2\n\n\nclass C:\n    def m(self):\n        pass\n"


def test_audit_results_are_named_frozen_classes() -> None:
    fh = CodeHealthAuditor().audit_source(SOURCE, "m.py")
    assert type(fh) is FileHealth and type(fh.halstead) is Halstead and type(fh.raw) is RawMetrics
    assert [(type(f), f.qualname, f.lineno, f.endline, f.complexity) for f in fh.functions] == [
        (FunctionHealth, "f", 1, 4, 2),
        (FunctionHealth, "C.m", 8, 9, 1),
    ]
    assert fh.max_complexity == 2 and fh.raw is not None and fh.raw.sloc == 7
    for obj, name in ((fh, "mi"), (fh.functions[0], "complexity"), (fh.halstead, "volume"), (fh.raw, "loc")):
        with pytest.raises(AttributeError):
            setattr(obj, name, 0)
    with pytest.raises(TypeError):
        FileHealth()  # type: ignore[call-arg]  # results come from the core only


def test_equality_ignores_the_time_spent() -> None:
    auditor = CodeHealthAuditor()
    a, b = auditor.audit_source(SOURCE, "m.py"), auditor.audit_source(SOURCE, "m.py")
    assert a == b and a.functions == b.functions and a.halstead == b.halstead
    assert a != auditor.audit_source(SOURCE, "other.py")
    assert a != auditor.audit_source(SOURCE + "x = 1\n", "m.py")


def test_to_dict_is_the_json_shape() -> None:
    d = CodeHealthAuditor().audit_source(SOURCE, "m.py").to_dict()
    assert list(d) == ["path", "mi", "mi_rank", "complexity", "halstead", "raw", "functions", "error", "skipped"]
    assert list(d["halstead"]) == [
        "h1", "h2", "N1", "N2", "vocabulary", "length", "calculated_length", "volume", "difficulty", "effort",
        "time", "bugs",
    ]
    assert d["raw"]["sloc"] == 7 and d["functions"][0] == {
        "name": "f", "qualname": "f", "lineno": 1, "endline": 4, "complexity": 2,
    }
    broken = CodeHealthAuditor().audit_source("def (:\n", "bad.py")
    assert broken.error is not None and broken.error.startswith("syntax error at line 1")
    assert broken.to_dict()["halstead"] is None and broken.functions == ()


def test_replace_result_is_a_frozen_class(tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_text("old\n")
    found = _rust.replace(str(tmp_path), "old", "new")
    assert type(found) is _rust.ReplaceResult and found.scanned == 1
    (change,) = found.changes
    assert (change.path, change.original, change.new, change.matches) == (str(tmp_path / "a.txt"), b"old\n", b"new\n", 1)
    with pytest.raises(AttributeError):
        change.matches = 2  # type: ignore[misc]


def test_a_rust_panic_is_an_ordinary_exception() -> None:
    """pyo3's own PanicException derives from BaseException and would pass ``except Exception``."""
    assert issubclass(_rust.RustPanicError, Exception)
    assert _rust.RustPanicError.__module__ == "pyagent._rust"
