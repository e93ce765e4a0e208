"""``pyagent audit`` and ``pyagent demo`` as real subprocesses."""

from __future__ import annotations

import ctypes
import json
import os
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from radon.metrics import mi_visit

MESSY = """\
def tangled(a, b, c):
    if a:
        if b:
            for x in c:
                while x:
                    x -= 1
                    if x == 3:
                        break
        elif c:
            try:
                return a / b
            except ZeroDivisionError:
                return 0
            except TypeError:
                return None
    return a and b or c
"""

CLEAN = '''\
"""A small, documented module."""


def add(a, b):
    """Sum of two numbers."""
    return a + b
'''


def _audit(cmd: list[str], env: dict[str, str], *args: str, **kw: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*cmd, "audit", *args], capture_output=True, text=True, env=env, timeout=120, **kw)


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "messy.py").write_text(MESSY)
    (tmp_path / "pkg" / "clean.py").write_text(CLEAN)
    return tmp_path


def test_json_contract(tree: Path, pyagent_cmd: list[str], clean_env: dict[str, str]) -> None:
    out = _audit(pyagent_cmd, clean_env, str(tree), "--format", "json")
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    assert set(data) >= {"files", "summary"}
    assert [f["path"] for f in data["files"]] == ["pkg/clean.py", "pkg/messy.py"]
    for f in data["files"]:
        assert set(f) >= {"path", "mi", "mi_rank", "halstead", "raw", "functions", "error"}
        assert f["error"] is None and isinstance(f["mi"], float) and f["mi_rank"] in "ABC"
        assert set(f["halstead"]) >= {"h1", "h2", "N1", "N2", "vocabulary", "length", "volume", "difficulty", "effort", "bugs"}
        assert set(f["raw"]) >= {"loc", "lloc", "sloc", "comments", "multi", "blank"}
        for fn in f["functions"]:
            assert set(fn) == {"name", "qualname", "lineno", "endline", "complexity"}
    messy = data["files"][1]
    assert messy["mi"] == pytest.approx(mi_visit(MESSY, True), abs=1e-9)
    assert messy["functions"] == [
        {"name": "tangled", "qualname": "tangled", "lineno": 1, "endline": 16, "complexity": 9}
    ]
    assert data["summary"]["files"] == 2 and data["summary"]["functions"] == 2


def test_table_lists_worst_first(tree: Path, pyagent_cmd: list[str], clean_env: dict[str, str]) -> None:
    out = _audit(pyagent_cmd, {**clean_env, "COLUMNS": "200"}, str(tree))
    assert out.returncode == 0, out.stderr
    assert out.stdout.index("pkg/messy.py") < out.stdout.index("pkg/clean.py")
    assert "tangled" in out.stdout


def test_html_report_is_self_contained(tmp_path: Path, pyagent_cmd: list[str], clean_env: dict[str, str]) -> None:
    (tmp_path / "<script>x.py").write_text(MESSY)
    report = tmp_path / "out" / "report.html"
    report.parent.mkdir()
    out = _audit(pyagent_cmd, clean_env, str(tmp_path), "--format", "html", "--output", str(report), "--exclude", "out/")
    assert out.returncode == 0, out.stderr
    page = report.read_text()
    assert page.startswith("<!DOCTYPE html>") and "<table" in page and "<script>" in page
    assert "http://" not in page and "https://" not in page and "<link" not in page and " src=" not in page
    assert "&lt;script&gt;x.py" in page and "<script>x.py" not in page


def test_gates_fail_and_list_offenders(tree: Path, pyagent_cmd: list[str], clean_env: dict[str, str]) -> None:
    out = _audit(pyagent_cmd, clean_env, str(tree), "--format", "json", "--max-complexity", "5")
    assert out.returncode == 1
    assert "pkg/messy.py:1: tangled complexity 9 > 5" in out.stderr
    json.loads(out.stdout)  # the report is still written
    mi = mi_visit(CLEAN, True)
    out = _audit(pyagent_cmd, clean_env, str(tree), "--min-mi", f"{mi + 1:.2f}", "--top", "1")
    assert out.returncode == 1
    assert "pkg/clean.py: maintainability index" in out.stderr
    out = _audit(pyagent_cmd, clean_env, str(tree), "--max-complexity", "9", "--min-mi", "1")
    assert out.returncode == 0, out.stderr


def test_exclude_is_repeatable(tree: Path, pyagent_cmd: list[str], clean_env: dict[str, str]) -> None:
    (tree / "vendor").mkdir()
    (tree / "vendor" / "lib.py").write_text(MESSY)
    out = _audit(pyagent_cmd, clean_env, str(tree), "--format", "json", "--exclude", "vendor/", "--exclude", "*/clean.py")
    assert out.returncode == 0, out.stderr
    assert [f["path"] for f in json.loads(out.stdout)["files"]] == ["pkg/messy.py"]


def test_no_multi_as_comments(tree: Path, pyagent_cmd: list[str], clean_env: dict[str, str]) -> None:
    doc = '"""Module.\n\nLong docstring.\n"""\n\n\ndef f(a, b):\n    return a + b * 2 - (a or b)\n'
    (tree / "doc.py").write_text(doc)
    out = _audit(pyagent_cmd, clean_env, str(tree / "doc.py"), "--format", "json", "--no-multi-as-comments")
    assert out.returncode == 0, out.stderr
    (f,) = json.loads(out.stdout)["files"]
    assert f["path"] == "doc.py"
    assert f["mi"] == pytest.approx(mi_visit(doc, False), abs=1e-9) and f["mi"] != pytest.approx(mi_visit(doc, True))


def test_missing_path_is_a_clean_error(tmp_path: Path, pyagent_cmd: list[str], clean_env: dict[str, str]) -> None:
    out = _audit(pyagent_cmd, clean_env, str(tmp_path / "missing"))
    assert out.returncode == 2
    assert "no such file or directory" in out.stderr and "Traceback" not in out.stderr


def _without_root_privileges() -> Callable[[], None] | None:
    """Let permission bits apply even when the tests run as root: drop the DAC override capabilities."""
    if os.geteuid() != 0:
        return None

    def drop() -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        for cap in (1, 2):  # CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH
            if libc.prctl(24, cap, 0, 0, 0) != 0:  # PR_CAPBSET_DROP
                raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP)")

    return drop


def test_permission_denied(tree: Path, pyagent_cmd: list[str], clean_env: dict[str, str]) -> None:
    secret = tree / "pkg" / "secret.py"
    secret.write_text("x = 1\n")
    secret.chmod(0)
    try:
        # The root itself unreadable: a clean CLI error.
        out = _audit(pyagent_cmd, clean_env, str(secret), preexec_fn=_without_root_privileges())
        assert out.returncode == 2
        assert "permission denied" in out.stderr and "Traceback" not in out.stderr
        # One unreadable file in a tree: reported for that file, the rest is audited.
        out = _audit(pyagent_cmd, clean_env, str(tree), "--format", "json", preexec_fn=_without_root_privileges())
        assert out.returncode == 0, out.stderr
        files = {f["path"]: f for f in json.loads(out.stdout)["files"]}
        assert "Permission denied" in files["pkg/secret.py"]["error"]
        assert files["pkg/messy.py"]["error"] is None and files["pkg/messy.py"]["functions"]
    finally:
        secret.chmod(0o644)


def test_no_progress_output_without_a_terminal(tmp_path: Path, pyagent_cmd: list[str], clean_env: dict[str, str]) -> None:
    for i in range(600):
        (tmp_path / f"m{i}.py").write_text(f"def f{i}(a):\n    return a\n")
    out = _audit(pyagent_cmd, clean_env, str(tmp_path), "--format", "json")
    assert out.returncode == 0
    assert out.stderr == ""
    assert len(json.loads(out.stdout)["files"]) == 600


def test_progress_bar_on_a_terminal(tmp_path: Path, pyagent_cmd: list[str], clean_env: dict[str, str]) -> None:
    import pty

    for i in range(600):
        (tmp_path / f"m{i}.py").write_text(f"def f{i}(a):\n    return a\n")
    primary, secondary = pty.openpty()
    try:
        proc = subprocess.run(
            [*pyagent_cmd, "audit", str(tmp_path), "--format", "json"],
            stdout=subprocess.PIPE, stderr=secondary, env=clean_env, timeout=120,
        )  # fmt: skip
        os.close(secondary)
        secondary = -1
        chunks = []
        while True:
            try:
                data = os.read(primary, 65536)
            except OSError:
                break
            if not data:
                break
            chunks.append(data)
    finally:
        os.close(primary)
        if secondary != -1:
            os.close(secondary)
    assert proc.returncode == 0
    assert b"auditing" in b"".join(chunks)
