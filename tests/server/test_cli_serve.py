"""``pyagent serve`` argument errors: clear message, exit code 2, nothing started."""

from __future__ import annotations

import subprocess
from pathlib import Path


def test_missing_model_dir_is_a_clear_error(pyagent_cmd: list[str], tmp_path: Path) -> None:
    out = subprocess.run([*pyagent_cmd, "serve", "--model", str(tmp_path / "nope")], capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 2
    assert "not a model directory or GGUF file" in out.stderr and "Traceback" not in out.stderr


def test_bad_port_is_a_clear_error(pyagent_cmd: list[str], tmp_path: Path) -> None:
    out = subprocess.run([*pyagent_cmd, "serve", "--model", str(tmp_path), "--port", "70000"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and "--port 70000" in out.stderr
