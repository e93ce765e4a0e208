"""`pyagent improve` fails before any task, in one line, when it cannot work; the audit table in a pipe."""

from __future__ import annotations

import socket
import subprocess
import time
from pathlib import Path

from tests.integration import project_kit as kit


def _improve(cmd: list[str], env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*cmd, "improve", *args], capture_output=True, text=True, env=env, timeout=120)


def test_no_python_files_is_exit_2_and_nothing_is_written(
    tmp_path: Path, pyagent_cmd: list[str], clean_env: dict[str, str]
) -> None:
    (tmp_path / "README.md").write_text("docs only\n")
    out = _improve(pyagent_cmd, clean_env, str(tmp_path))
    assert out.returncode == 2
    assert "no Python files" in out.stderr and "Traceback" not in out.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["README.md"]


def test_llm_without_key_fails_before_any_task(tmp_path: Path, pyagent_cmd: list[str], clean_env: dict[str, str]) -> None:
    root = kit.write_project(tmp_path / "p", {"pkg/__init__.py": "import os\n"})
    env = {k: v for k, v in clean_env.items() if k not in ("OPENAI_API_KEY", "OPENAI_BASE_URL")}
    start = time.monotonic()
    out = _improve(pyagent_cmd, env, str(root), "--llm", "gpt-4.1-mini", "--no-memory")
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "OPENAI_API_KEY" in lines[0], out.stderr
    assert time.monotonic() - start < 30
    assert not (root / ".pyagent").exists()
    assert kit.git(root, "branch", "--list", "pyagent/*").strip() == ""


def test_llm_endpoint_that_is_not_listening_fails_before_any_task(
    tmp_path: Path, pyagent_cmd: list[str], clean_env: dict[str, str]
) -> None:
    root = kit.write_project(tmp_path / "p", {"pkg/__init__.py": "import os\n"})
    with socket.socket() as s:  # a loopback port that nobody listens on once closed
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = _improve(
        pyagent_cmd, clean_env, str(root), "--llm", "m", "--llm-base-url", f"http://127.0.0.1:{port}/v1", "--no-memory"
    )
    assert out.returncode == 2
    assert len(out.stderr.strip().splitlines()) == 1 and "cannot reach" in out.stderr


def test_outside_git_without_in_place_is_a_dry_run_that_says_how(
    tmp_path: Path, pyagent_cmd: list[str], clean_env: dict[str, str]
) -> None:
    mod = tmp_path / "pkg" / "core.py"
    mod.parent.mkdir()
    mod.write_text("import os\n\n\ndef f():\n    return 1\n")
    (tmp_path / "tests").mkdir()
    (tmp_path / "tests" / "test_core.py").write_text(
        "import unittest\n\nfrom pkg.core import f\n\n\nclass T(unittest.TestCase):\n"
        "    def test_a(self):\n        self.assertEqual(f(), 1)\n\n    def test_b(self):\n        self.assertTrue(f())\n"
    )
    out = _improve(pyagent_cmd, clean_env, str(tmp_path), "--no-memory")
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    assert "--in-place" in out.stdout and "not in a git repository" in out.stdout
    assert mod.read_text().startswith("import os\n")  # nothing was changed
    applied = _improve(pyagent_cmd, clean_env, str(tmp_path), "--no-memory", "--in-place")
    assert applied.returncode == 0, applied.stdout[-2000:]
    assert not mod.read_text().startswith("import os")


def test_audit_in_a_pipe_keeps_every_path_whole(tmp_path: Path, pyagent_cmd: list[str], clean_env: dict[str, str]) -> None:
    deep = tmp_path / "a_rather_long_package_name" / "with_a_deeply_nested_subpackage" / "and_more_levels"
    deep.mkdir(parents=True)
    name = "module_with_an_unusually_long_descriptive_name_for_testing.py"
    (deep / name).write_text("def f(x):\n    return x\n")
    env = {**clean_env, "COLUMNS": "60"}
    out = subprocess.run([*pyagent_cmd, "audit", str(tmp_path)], capture_output=True, text=True, env=env, timeout=60)
    assert out.returncode == 0, out.stderr
    rel = (deep / name).relative_to(tmp_path).as_posix()
    assert any(rel in line for line in out.stdout.splitlines()), out.stdout
