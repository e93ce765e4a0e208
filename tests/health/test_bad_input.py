"""Bad input never crashes or hangs the audit, and every problem is reported per file."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from radon.metrics import mi_visit
from radon.raw import analyze

from pyagent.health import CodeHealthAuditor, FileHealth


def _by_path(root: Path) -> dict[str, FileHealth]:
    return {f.path: f for f in CodeHealthAuditor().audit_path(root).files}


def test_syntax_error_reports_position_and_audit_goes_on(tmp_path: Path) -> None:
    broken = "def ok():\n    pass\n\n\ndef broken(:\n    pass\n"
    (tmp_path / "broken.py").write_text(broken)
    (tmp_path / "good.py").write_text("def g(a):\n    if a:\n        return 1\n")
    files = _by_path(tmp_path)
    with pytest.raises(SyntaxError) as cpython:
        compile(broken, "broken.py", "exec")
    err = files["broken.py"].error
    assert err is not None and err.startswith(f"syntax error at line {cpython.value.lineno}, column ")
    assert files["broken.py"].functions == () and files["broken.py"].mi is None
    assert files["good.py"].error is None
    assert [(f.name, f.complexity) for f in files["good.py"].functions] == [("g", 2)]


def test_binary_file_is_skipped_with_reason(tmp_path: Path) -> None:
    (tmp_path / "blob.py").write_bytes(b"\x00\x01\x02binary\x00")
    (tmp_path / "ok.py").write_text("x = 1\n")
    files = _by_path(tmp_path)
    assert files["blob.py"].skipped and "binary" in (files["blob.py"].error or "")
    assert files["ok.py"].error is None


def test_non_utf8_file_is_skipped_with_reason(tmp_path: Path) -> None:
    (tmp_path / "latin.py").write_bytes(b"# comment\nname = '\xe9t\xe9'\n")
    files = _by_path(tmp_path)
    reason = files["latin.py"].error or ""
    assert files["latin.py"].skipped and "UTF-8" in reason and "line 2" in reason


@pytest.mark.parametrize(
    "source",
    ["", "\n\n", "# only a comment\n# and another\n", "#!/usr/bin/env python\n# -*- coding: utf-8 -*-\n"],
    ids=["empty", "blank-lines", "comments", "shebang-and-cookie"],
)
def test_empty_and_comment_only_files_match_radon(tmp_path: Path, source: str) -> None:
    (tmp_path / "m.py").write_text(source)
    fh = _by_path(tmp_path)["m.py"]
    assert fh.error is None and fh.functions == ()
    assert fh.raw is not None and tuple(analyze(source)) == (
        fh.raw.loc, fh.raw.lloc, fh.raw.sloc, fh.raw.comments, fh.raw.multi, fh.raw.blank, fh.raw.single_comments,
    )  # fmt: skip
    assert fh.mi == mi_visit(source, True)


@pytest.mark.timeout(30)
def test_symlink_loops_are_not_followed(tmp_path: Path) -> None:
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "mod.py").write_text("def f():\n    pass\n")
    os.symlink(".", pkg / "self_loop")
    os.symlink("..", pkg / "parent_loop")
    os.symlink(pkg / "mod.py", pkg / "alias.py")
    report = CodeHealthAuditor().audit_path(tmp_path)
    assert [f.path for f in report.files] == ["pkg/mod.py"]


def test_five_megabyte_generated_file(tmp_path: Path) -> None:
    chunk = "def f{i}(a, b):\n    if a and b:\n        return a + {i}\n    for x in b:\n        a -= x\n    return a\n\n\n"
    parts = []
    size = 0
    n = 0
    while size < 5 * 1024 * 1024:
        part = chunk.format(i=n)
        parts.append(part)
        size += len(part)
        n += 1
    text = "".join(parts)
    (tmp_path / "generated.py").write_text(text)
    fh = _by_path(tmp_path)["generated.py"]
    assert fh.error is None
    assert len(fh.functions) == n
    assert {f.complexity for f in fh.functions} == {3}
    assert fh.raw is not None and fh.raw.sloc == sum(1 for line in text.splitlines() if line.strip())
    assert fh.mi is not None


@pytest.mark.parametrize("shape", ["data_literal", "docstring"])
def test_five_megabyte_single_statement(tmp_path: Path, shape: str) -> None:
    """One statement spanning ~200k lines: radon's own tokenizer loop is quadratic here, ours is not.

    Expected values follow from radon's definitions: a statement is one logical line; a string
    statement spanning lines counts each non-empty line as ``multi``, anything else as ``sloc``.
    """
    n = 5 * 1024 * 1024 // 26
    if shape == "data_literal":
        text = "DATA = [\n" + "".join(f"    ({i:>8}, 'abcdefgh'),\n" for i in range(n)) + "]\n"
    else:
        text = '"""Generated.\n\n' + "".join(f"line {i:>8} of the text......\n" for i in range(n)) + '"""\n'
    (tmp_path / "big.py").write_text(text)
    fh = _by_path(tmp_path)["big.py"]
    assert fh.error is None and fh.raw is not None and fh.mi is not None
    nonblank = sum(1 for line in text.splitlines() if line.strip())
    if shape == "data_literal":
        assert (fh.raw.sloc, fh.raw.multi, fh.raw.lloc, fh.raw.blank) == (nonblank, 0, 1, 0)
    else:
        assert (fh.raw.sloc, fh.raw.multi, fh.raw.lloc, fh.raw.blank) == (0, nonblank, 1, 1)


def test_line_endings_and_bom_do_not_change_results(tmp_path: Path) -> None:
    source = '"""Doc.\n\nMore.\n"""\n\n\ndef f(a):\n    if a:  # why\n        return a + 1\n    return 0\n'
    (tmp_path / "lf.py").write_text(source)
    (tmp_path / "crlf.py").write_bytes(source.replace("\n", "\r\n").encode())
    (tmp_path / "bom.py").write_bytes(b"\xef\xbb\xbf" + source.encode())
    files = _by_path(tmp_path)
    base = files["lf.py"]
    assert base.mi == mi_visit(source, True)
    for name in ("crlf.py", "bom.py"):
        other = files[name]
        assert (other.mi, other.raw, other.halstead, other.functions) == (base.mi, base.raw, base.halstead, base.functions)


def test_deeply_nested_code_does_not_crash(tmp_path: Path) -> None:
    depth = 90
    lines = [f"{'    ' * (i + 1)}if a{i}:" for i in range(depth)]
    source = "def f():\n" + "\n".join(lines) + "\n" + "    " * (depth + 1) + "pass\n"
    (tmp_path / "deep.py").write_text(source)
    (tmp_path / "parens.py").write_text("x = " + "(" * 180 + "1" + ")" * 180 + "\n")
    files = _by_path(tmp_path)
    assert [f.complexity for f in files["deep.py"].functions] == [depth + 1]
    assert files["parens.py"].raw is not None


def test_missing_path_raises(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        CodeHealthAuditor().audit_path(tmp_path / "nope")
    (tmp_path / "a.py").write_text("x = 1\n")
    with pytest.raises(NotADirectoryError):  # the kind the OS reported, not FileNotFoundError
        CodeHealthAuditor().audit_path(tmp_path / "a.py" / "b.py")


def test_excludes_and_gitignore(tmp_path: Path) -> None:
    (tmp_path / ".gitignore").write_text("build/\n")
    for rel in ("a.py", "build/gen.py", "vendor/x.py", "tests/test_a.py"):
        p = tmp_path / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text("x = 1\n")
    report = CodeHealthAuditor(excludes=["vendor/", "tests/*.py"]).audit_path(tmp_path)
    assert [f.path for f in report.files] == ["a.py"]


def test_report_is_json_serialisable(tmp_path: Path) -> None:
    import json

    (tmp_path / "m.py").write_text("def f(a):\n    return a\n")
    (tmp_path / "bad.py").write_text("def (:\n")
    report = CodeHealthAuditor().audit_path(tmp_path)
    data = json.loads(report.to_json())
    assert [f["path"] for f in data["files"]] == ["bad.py", "m.py"]
    assert data["summary"]["errors"] == 1 and data["summary"]["functions"] == 1
