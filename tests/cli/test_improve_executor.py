"""`improve --executor`: a bad choice, a missing Ray extra or an unreachable cluster fail at once, in one
line, before anything is measured or written."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.integration import project_kit as kit

# The CLI in a subprocess where `import ray` fails, as on an install without the extra.
WITHOUT_RAY = "import sys; sys.modules['ray'] = None; from pyagent.cli import main; raise SystemExit(main(sys.argv[1:]))"


def _project(tmp_path: Path) -> Path:
    return kit.write_project(tmp_path / "p", {"pkg/__init__.py": "import os\n"})


def _run(argv: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, env=env, timeout=180)


def test_an_unknown_executor_is_a_usage_error(tmp_path: Path, pyagent_cmd: list[str], clean_env: dict[str, str]) -> None:
    root = _project(tmp_path)
    out = _run([*pyagent_cmd, "improve", str(root), "--executor", "dask"], clean_env)
    assert out.returncode == 2
    assert "expected local, ray or ray:ADDRESS, got 'dask'" in out.stderr
    assert not (root / ".pyagent").exists()


def test_without_the_ray_extra_it_names_the_install_command(tmp_path: Path, clean_env: dict[str, str]) -> None:
    root = _project(tmp_path)
    out = _run([sys.executable, "-c", WITHOUT_RAY, "improve", str(root), "--executor", "ray", "--no-memory"], clean_env)
    assert out.returncode == 2, out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "pip install 'pyagent[ray]'" in lines[0], out.stderr
    assert not (root / ".pyagent").exists()
    assert kit.git(root, "branch", "--list", "pyagent/*").strip() == ""


def test_swarm_and_ray_together_are_refused(tmp_path: Path, pyagent_cmd: list[str], clean_env: dict[str, str]) -> None:
    root = _project(tmp_path)
    out = _run([*pyagent_cmd, "improve", str(root), "--swarm", "--executor", "ray:127.0.0.1:1"], clean_env)
    assert out.returncode == 2
    assert "choose one" in out.stderr


def test_an_unreachable_cluster_fails_before_any_task(
    tmp_path: Path, pyagent_cmd: list[str], clean_env: dict[str, str]
) -> None:
    pytest.importorskip("ray", reason="the Ray extra is not installed; the test above checks what the CLI says then")
    root = _project(tmp_path)
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    start = time.monotonic()
    out = _run([*pyagent_cmd, "improve", str(root), "--executor", f"ray:127.0.0.1:{port}", "--no-memory"], clean_env)
    assert out.returncode == 2, out.stderr[-2000:]
    assert f"cannot join the Ray cluster at 127.0.0.1:{port}" in out.stderr
    assert "Traceback" not in out.stderr
    assert time.monotonic() - start < 150
    assert not (root / ".pyagent").exists()
