"""Degrading honestly: --explain and doctor print what is active; --require-sandbox refuses without it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

PYAGENT = [sys.executable, "-m", "pyagent"]


def test_explain_lists_every_protection_active_here(tmp_path: Path) -> None:
    out = subprocess.run([*PYAGENT, "exec", "--explain", "--cwd", str(tmp_path), "--", "true"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    for name in ("user namespace", "pid namespace", "network namespace", "landlock", "private tmp",
                 "capabilities dropped", "no_new_privs", "memory cap", "timeout"):
        assert f"yes  {name}" in out.stderr, out.stderr


def test_doctor_reports_the_full_set_here() -> None:
    out = subprocess.run([*PYAGENT, "doctor"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "all required protections are active" in out.stdout
    assert "landlock" in out.stdout and "ABI" in out.stdout


# Enters a user namespace of its own (PyAgent's own primitive, no util-linux needed), sets
# user.max_user_namespaces = 0 there and execs the command: the kernel then refuses it any new user
# namespace, a real missing layer rather than a simulated one.
_LIMIT = """
import os, sys
from pyagent.shell._sandbox import enter_user_namespace
enter_user_namespace()
with open("/proc/sys/user/max_user_namespaces", "w") as f:
    f.write("0")
if sys.argv[1:2] == ["--probe"]:
    raise SystemExit(0)
os.execv(sys.argv[1], sys.argv[1:])
"""


def _without_user_namespaces(cmd: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", _LIMIT, *cmd], capture_output=True, text=True, timeout=60,
                          env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})


def _explain_here(tmp_path: Path) -> str:
    out = subprocess.run([*PYAGENT, "exec", "--explain", "--cwd", str(tmp_path), "--", "true"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return out.stderr


def test_explain_reports_the_user_namespace_layer_as_this_machine_has_it(tmp_path: Path) -> None:
    """Whatever the kernel allows, `--explain` tells the truth about the user namespace layer."""
    explain = _explain_here(tmp_path)
    userns = subprocess.run([sys.executable, "-c", "from pyagent.shell._sandbox import enter_user_namespace;"
                             "enter_user_namespace()"], capture_output=True, timeout=30,
                            env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}).returncode == 0
    assert ("yes  user namespace" if userns else "NO   user namespace") in explain, explain


@pytest.fixture
def userns_limit_works() -> None:
    """The refusal test takes the layer away with a nested user namespace limit; some kernels cannot."""
    probe = _without_user_namespaces(["--probe"])
    if probe.returncode != 0:
        pytest.skip(f"this kernel cannot limit user namespaces from inside one: {probe.stderr.strip()[-200:]}")


@pytest.mark.usefixtures("userns_limit_works")
def test_require_sandbox_refuses_when_a_layer_is_missing(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    out = _without_user_namespaces([*PYAGENT, "exec", "--require-sandbox", "--cwd", str(tmp_path), "--",
                                    "touch", str(marker)])
    assert out.returncode == 126, out.stdout + out.stderr
    assert "user namespace" in out.stderr and "refusing" in out.stderr
    assert not marker.exists(), "nothing may run when the sandbox is incomplete"


@pytest.mark.usefixtures("userns_limit_works")
def test_explain_says_which_layers_are_missing(tmp_path: Path) -> None:
    out = _without_user_namespaces([*PYAGENT, "exec", "--explain", "--cwd", str(tmp_path), "--", "true"])
    assert out.returncode == 0, out.stderr
    assert "NO   user namespace" in out.stderr and "NO   pid namespace" in out.stderr, out.stderr
    assert "yes  landlock" in out.stderr, "what still works is still used and said"
    doctor = _without_user_namespaces([*PYAGENT, "doctor"])
    assert doctor.returncode == 1 and "missing: user namespace" in doctor.stdout, doctor.stdout
