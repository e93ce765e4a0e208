"""Reading secrets: the pyagent process's environment through /proc, planted files outside the copy,
~/.config and /etc/shadow. Each test names the protection that stops the attack."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

from pyagent.shell import Confinement
from tests.security.helpers import active, attack

ENVIRON_ATTACK = r"""
import json, os, re, sys
key = sys.argv[1].encode()
chain, pid = [], os.getpid()
while True:
    try:
        with open(f"/proc/{pid}/status") as f:
            pid = int(re.search(r"PPid:\s+(\d+)", f.read()).group(1))
    except OSError:
        break
    if pid <= 0:
        break
    chain.append(pid)
found, visible, mem = [], 0, []
for name in os.listdir("/proc"):
    if name.isdigit():
        visible += 1
        try:
            with open(f"/proc/{name}/environ", "rb") as f:
                if key in f.read():
                    found.append(int(name))
        except OSError:
            pass
for p in chain:
    try:
        with open(f"/proc/{p}/mem", "rb"):
            mem.append(p)
    except OSError:
        pass
print(json.dumps({"found": found, "chain": chain, "visible": visible, "mem": mem}))
"""


def _exec(args: list[str], key: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "OPENAI_API_KEY": key, "PYAGENT_TEST_TOKEN": key}
    return subprocess.run([sys.executable, "-m", "pyagent", "exec", "--explain", *args, "--",
                           sys.executable, "-c", ENVIRON_ATTACK, key],
                          cwd=cwd, env=env, capture_output=True, text=True, timeout=120)


def test_ancestor_environ_with_api_key_is_out_of_reach_pid_namespace(tmp_path: Path) -> None:
    """Protection: pid namespace (and a private /proc): no ancestor, no other process is visible."""
    key = f"sk-planted-{uuid.uuid4().hex}"
    confined = _exec([], key, tmp_path)
    assert confined.returncode == 0, confined.stderr
    report = json.loads(confined.stdout)
    assert report["found"] == [] and report["mem"] == []
    assert report["chain"] == [1], "only the sandbox's own init is an ancestor; supervisor and pyagent are invisible"
    assert report["visible"] <= 3  # init, the attacker (and at most one short-lived helper)
    assert key not in confined.stdout + confined.stderr
    assert "yes  pid namespace" in confined.stderr and "yes  private /proc" in confined.stderr
    # The same attack without the sandbox finds the key: the attack is real on this machine.
    plain = _exec(["--no-sandbox"], key, tmp_path)
    if os.geteuid() == 0:  # root keeps CAP_SYS_PTRACE unconfined: it reads pyagent's environ
        assert json.loads(plain.stdout)["found"], plain.stdout


DROP_CAPS = r"""
import ctypes
libc = ctypes.CDLL(None, use_errno=True)
for cap in range(64):  # an ordinary same-uid process: no capability at all (what a non-root user has)
    if libc.prctl(24, cap, 0, 0, 0) != 0:
        break
class H(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]
assert libc.capset(ctypes.byref(H(0x20080522, 0)), (ctypes.c_uint32 * 6)()) == 0
"""
DUMP_ATTACK = DROP_CAPS + r"""
import sys
key = sys.argv[1].encode()
for target in sys.argv[2:]:
    try:
        with open(f"/proc/{target}/environ", "rb") as f:
            print(target, "read", key in f.read())
    except OSError as exc:
        print(target, "denied", exc.errno)
"""


def test_pyagent_process_is_non_dumpable_even_without_namespaces(tmp_path: Path) -> None:
    """Protection: pyagent non-dumpable. Same uid, no capabilities on either side (an ordinary user, where
    namespaces are missing): the child cannot read pyagent's environ, yet reads a dumpable process's."""
    key = f"sk-planted-{uuid.uuid4().hex}"
    env = {**os.environ, "OPENAI_API_KEY": key}
    bystander = subprocess.Popen([sys.executable, "-c", DROP_CAPS + "import time; time.sleep(60)"], env=env)
    try:
        script = DROP_CAPS + (
            "import os, subprocess, sys\n"
            "from pyagent.shell.confine import make_nondumpable\n"
            "assert make_nondumpable()\n"
            f"r = subprocess.run([sys.executable, '-c', {DUMP_ATTACK!r}, {key!r}, str(os.getpid()), "
            f"'{bystander.pid}'], capture_output=True, text=True)\n"
            "print(r.stdout, r.stderr)\n"
        )
        out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=60)
    finally:
        bystander.kill()
        bystander.wait()
    lines = dict(line.strip().split(" ", 1) for line in out.stdout.split("\n") if line.strip()[:1].isdigit())
    own = next(pid for pid in lines if pid != str(bystander.pid))
    assert lines[own].startswith("denied"), out.stdout + out.stderr
    assert lines[str(bystander.pid)] == "read True", "control: a dumpable same-uid process is readable"


def test_pyagent_cli_process_is_non_dumpable(tmp_path: Path) -> None:
    """The CLI sets it at start (before any command or key handling)."""
    probe = "import ctypes,sys; print(ctypes.CDLL(None).prctl(3,0,0,0,0))"
    code = ("from pyagent.cli import main\n"
            "try:\n    main(['--version'])\nexcept SystemExit:\n    pass\n" + probe)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.stdout.strip().splitlines()[-1] == "0", out.stdout + out.stderr


READ_ATTACK = r"""
import sys
for path in sys.argv[1:]:
    try:
        with open(path, "rb") as f:
            print("READ", path, f.read()[:40])
    except OSError as exc:
        print("DENIED", path, exc.errno)
"""


def test_planted_secrets_outside_the_copy_are_unreadable_landlock(tmp_path: Path) -> None:
    """Protection: private root (a secret outside the granted paths does not exist in the command's
    view: ENOENT) and landlock (a granted tree's secret store, /etc/shadow, is refused: EACCES)."""
    work = tmp_path / "copy"
    work.mkdir()
    (work / "own.txt").write_text("mine")
    outside = tmp_path / "outside"
    outside.mkdir()
    secret = outside / "secret.txt"
    secret.write_text("TOP-SECRET-outside")
    home_cfg = Path(os.path.expanduser("~")) / ".config"
    targets = [str(secret), str(work / "own.txt"), "/etc/shadow"]
    planted_home: Path | None = None
    if home_cfg.is_dir() or not home_cfg.exists():
        home_cfg.mkdir(exist_ok=True)
        planted_home = home_cfg / f"pyagent-test-secret-{uuid.uuid4().hex}"
        planted_home.write_text("TOP-SECRET-config")
        targets.append(str(planted_home))
    try:
        code = f"import sys; sys.argv[1:] = {targets!r}\n" + READ_ATTACK
        res = attack(code, work)
        plain = attack(code, work, confine=Confinement.off())
    finally:
        if planted_home is not None:
            planted_home.unlink()
    assert active(res, "landlock") and active(res, "private root")
    assert res.ok, res.stderr
    assert "TOP-SECRET" not in res.stdout
    assert f"READ {work / 'own.txt'}" in res.stdout, "the copy itself stays readable"
    for path in [str(secret), *([str(planted_home)] if planted_home else [])]:
        assert f"DENIED {path} 2" in res.stdout, res.stdout  # ENOENT: not in the private root
    assert "DENIED /etc/shadow 13" in res.stdout, res.stdout  # EACCES from Landlock
    assert "TOP-SECRET-outside" in plain.stdout, "control: unconfined, the planted secret is readable"
