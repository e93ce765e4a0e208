"""Degrading honestly: --explain and doctor print what is active; --require-sandbox refuses without it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

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


# Takes the user namespace layer away for real, then execs the command: a seccomp filter under which
# unshare() and clone() with CLONE_NEWUSER fail with EPERM, so the kernel itself refuses every new user
# namespace (PyAgent's sandbox asks for one with unshare). Unlike lowering user.max_user_namespaces
# from inside a namespace, this works on every Linux kernel with seccomp filters, as unprivileged.
_LIMIT = """
import ctypes, os, platform, struct, sys

arch, unshare_nr, clone_nr = {"x86_64": (0xC000003E, 272, 56), "aarch64": (0xC00000B7, 97, 220)}[platform.machine()]
allow, eperm = 0x7FFF0000, 0x00050000 | 1
prog = [(0x20, 0, 0, 4), (0x15, 0, 5, arch),  # the arch word; another arch is let through
        (0x20, 0, 0, 0), (0x15, 1, 0, unshare_nr), (0x15, 0, 2, clone_nr),  # unshare or clone:
        (0x20, 0, 0, 16), (0x45, 1, 0, 0x10000000),  # the flags argument has CLONE_NEWUSER
        (0x06, 0, 0, allow), (0x06, 0, 0, eperm)]
raw = ctypes.create_string_buffer(b"".join(struct.pack("<HBBI", *i) for i in prog))
fprog = ctypes.create_string_buffer(struct.pack("<HxxxxxxQ", len(prog), ctypes.addressof(raw)))
libc = ctypes.CDLL(None, use_errno=True)
if libc.prctl(38, 1, 0, 0, 0) or libc.prctl(22, 2, fprog, 0, 0):  # no_new_privs, then the filter
    raise OSError(ctypes.get_errno(), "the seccomp filter was refused")
if sys.argv[1:2] == ["--probe"]:
    from pyagent.shell._sandbox import enter_user_namespace
    try:
        enter_user_namespace()
    except OSError:
        raise SystemExit(0)
    raise SystemExit("a user namespace was still created under the filter")
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


def test_the_filter_really_takes_user_namespaces_away() -> None:
    probe = _without_user_namespaces(["--probe"])
    assert probe.returncode == 0, probe.stderr


def test_require_sandbox_refuses_when_a_layer_is_missing(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    out = _without_user_namespaces([*PYAGENT, "exec", "--require-sandbox", "--cwd", str(tmp_path), "--",
                                    "touch", str(marker)])
    assert out.returncode == 126, out.stdout + out.stderr
    assert "user namespace" in out.stderr and "refusing" in out.stderr
    assert not marker.exists(), "nothing may run when the sandbox is incomplete"


def test_explain_says_which_layers_are_missing(tmp_path: Path) -> None:
    out = _without_user_namespaces([*PYAGENT, "exec", "--explain", "--cwd", str(tmp_path), "--", "true"])
    assert out.returncode == 0, out.stderr
    assert "NO   user namespace" in out.stderr and "NO   pid namespace" in out.stderr, out.stderr
    assert "yes  landlock" in out.stderr, "what still works is still used and said"
    doctor = _without_user_namespaces([*PYAGENT, "doctor"])
    assert doctor.returncode == 1 and "missing: user namespace" in doctor.stdout, doctor.stdout
