"""`pyagent replace`, `pyagent recover` and `pyagent exec` as real subprocesses."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.timeout(120)


def run(cmd: list[str], env: dict[str, str], **kw: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=60, **kw)  # type: ignore[call-overload, no-any-return]


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "m.py").write_text("import os\nvalue = os.getcwd()\n")
    (tmp_path / "pkg" / "n.py").write_text("print('no match')\n")
    (tmp_path / "data.bin").write_bytes(b"os.getcwd\x00\xff")
    (tmp_path / "legacy.py").write_bytes(b"# \xff os.getcwd()\n")
    return tmp_path


def test_replace_preview_changes_nothing(tree: Path, pyagent_cmd: list[str], clean_env: dict[str, str]) -> None:
    out = run([*pyagent_cmd, "replace", r"os\.getcwd\(\)", "Path.cwd()", str(tree)], clean_env)
    assert out.returncode == 0, out.stderr
    assert "--- a/pkg/m.py\n+++ b/pkg/m.py\n" in out.stdout
    assert "-value = os.getcwd()\n+value = Path.cwd()\n" in out.stdout
    assert "1 match(es) in 1 file(s) of 4 scanned; skipped 1 binary, 1 non-UTF-8" in out.stdout
    assert "Nothing changed" in out.stdout
    assert "\x1b[" not in out.stdout
    assert (tree / "pkg" / "m.py").read_text() == "import os\nvalue = os.getcwd()\n"
    colored = run([*pyagent_cmd, "replace", "--color", "always", "getcwd", "cwd", str(tree)], clean_env)
    assert "\x1b[31m-value = os.getcwd()\x1b[0m" in colored.stdout
    assert "\x1b[32m+value = os.cwd()\x1b[0m" in colored.stdout


def test_replace_yes_applies(tree: Path, pyagent_cmd: list[str], clean_env: dict[str, str]) -> None:
    out = run([*pyagent_cmd, "replace", "--yes", r"os\.(\w+)\(\)", "os_$1()", str(tree)], clean_env)
    assert out.returncode == 0, out.stderr
    assert "Applied to 1 file(s) in one transaction" in out.stdout
    assert (tree / "pkg" / "m.py").read_text() == "import os\nvalue = os_getcwd()\n"
    assert (tree / "data.bin").read_bytes() == b"os.getcwd\x00\xff"
    assert (tree / "legacy.py").read_bytes() == b"# \xff os.getcwd()\n"


def test_replace_bad_input(tree: Path, pyagent_cmd: list[str], clean_env: dict[str, str]) -> None:
    bad = run([*pyagent_cmd, "replace", "--yes", "(oops", "x", str(tree)], clean_env)
    assert bad.returncode == 2
    assert "invalid regex" in bad.stderr and "unclosed group" in bad.stderr
    assert "Traceback" not in bad.stderr
    missing = run([*pyagent_cmd, "replace", "a", "b", str(tree / "nowhere")], clean_env)
    assert missing.returncode == 2 and "no such file or directory" in missing.stderr
    assert (tree / "pkg" / "m.py").read_text() == "import os\nvalue = os.getcwd()\n"


def test_replace_permission_denied_is_reported(tree: Path, pyagent_cmd: list[str],
                                               clean_env: dict[str, str]) -> None:
    secret = tree / "pkg" / "locked.py"
    secret.write_text("os.getcwd()\n")
    os.chmod(secret, 0)
    cmd = [*pyagent_cmd, "replace", "--yes", "getcwd", "cwd", str(tree)]
    if os.geteuid() == 0:  # root reads anything: drop the capabilities that bypass file permissions
        cmd = ["setpriv", "--bounding-set", "-dac_override,-dac_read_search", *cmd]
    out = run(cmd, clean_env)
    os.chmod(secret, 0o644)
    assert out.returncode == 1, out.stdout + out.stderr
    assert "skipped unreadable pkg/locked.py" in out.stderr and "ermission denied" in out.stderr
    assert secret.read_text() == "os.getcwd()\n"
    assert (tree / "pkg" / "m.py").read_text() == "import os\nvalue = os.cwd()\n"


def test_recover_cli_rolls_back_a_killed_commit(tmp_path: Path, pyagent_cmd: list[str],
                                                clean_env: dict[str, str]) -> None:
    for i in range(10):
        (tmp_path / f"f{i}.txt").write_text(f"original {i}\n")
    child = (
        "import os, sys\nfrom pyagent.state import StateTransaction\n"
        "real = os.rename\ncalls = [0]\n"
        "def boom(*a, **k):\n    calls[0] += 1\n    real(*a, **k)\n    if calls[0] == 5: os._exit(9)\n"
        "os.rename = boom\n"
        "with StateTransaction(sys.argv[1]) as tx:\n"
        "    for i in range(10): tx.write_text(f'f{i}.txt', 'changed\\n')\n"
    )
    assert subprocess.run([sys.executable, "-c", child, str(tmp_path)]).returncode == 9
    assert (tmp_path / "f0.txt").read_text() == "changed\n"
    out = run([*pyagent_cmd, "recover", str(tmp_path)], clean_env)
    assert out.returncode == 0, out.stderr
    assert "4 file(s) restored" in out.stdout
    assert all((tmp_path / f"f{i}.txt").read_text() == f"original {i}\n" for i in range(10))
    again = run([*pyagent_cmd, "recover", str(tmp_path)], clean_env)
    assert "nothing to do" in again.stdout
    missing = run([*pyagent_cmd, "recover", str(tmp_path / "gone")], clean_env)
    assert missing.returncode == 2 and "no such file" in missing.stderr


def test_exec_exit_codes_and_streaming(tmp_path: Path, pyagent_cmd: list[str], clean_env: dict[str, str]) -> None:
    env = dict(clean_env, OPENAI_API_KEY="sk-should-not-leak")
    out = run([*pyagent_cmd, "exec", "--cwd", str(tmp_path), "--", sys.executable, "-c",
               "import os, sys; print(os.getcwd()); print('oops', file=sys.stderr); "
               "print('OPENAI_API_KEY' in os.environ); sys.exit(3)"], env)
    assert out.returncode == 3
    assert out.stdout == f"{tmp_path}\nFalse\n"
    assert out.stderr == "oops\n"
    timeout = run([*pyagent_cmd, "exec", "--timeout", "0.5", "--", "sleep", "30"], clean_env)
    assert timeout.returncode == 124 and "timed out" in timeout.stderr
    missing = run([*pyagent_cmd, "exec", "--", "definitely-not-a-command"], clean_env)
    assert missing.returncode == 127 and "command not found: definitely-not-a-command" in missing.stderr
    nocmd = run([*pyagent_cmd, "exec"], clean_env)
    assert nocmd.returncode == 2 and "no command given" in nocmd.stderr
    badcwd = run([*pyagent_cmd, "exec", "--cwd", str(tmp_path / "x"), "--", "true"], clean_env)
    assert badcwd.returncode == 2 and "no such directory" in badcwd.stderr


def test_exec_streams_before_exit(pyagent_cmd: list[str], clean_env: dict[str, str]) -> None:
    proc = subprocess.Popen([*pyagent_cmd, "exec", "--", sys.executable, "-c",
                             "import time; print('early', flush=True); time.sleep(3); print('late')"],
                            stdout=subprocess.PIPE, text=True, env=clean_env)
    assert proc.stdout is not None
    assert proc.stdout.readline() == "early\n"
    assert proc.poll() is None  # still running when the first line arrived
    assert proc.stdout.readline() == "late\n"
    assert proc.wait(timeout=30) == 0
