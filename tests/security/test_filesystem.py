"""Writing outside the copy, into .git, and escaping the pids cgroup. Each test names its protection."""

from __future__ import annotations

import os
import subprocess
import uuid
from pathlib import Path

from pyagent.shell import Confinement
from pyagent.shell.limits import pids_cgroup_base
from tests.security.helpers import active, attack

WRITE_ATTACK = r"""
import os, sys
for path in sys.argv[1:]:
    try:
        with open(path, "a") as f:
            f.write("pwned\n")
        print("WROTE", path)
    except OSError as exc:
        print("DENIED", path, exc.errno)
"""


def test_writes_outside_the_copy_are_refused_landlock(tmp_path: Path) -> None:
    """Protection: landlock (writes only to the copy and the private tmp) for paths the command can see
    (``/usr/local/lib``: EACCES); private root for the rest (the file beside the copy is not in its
    view at all, and the sealed root refuses to create it: EROFS)."""
    work = tmp_path / "copy"
    work.mkdir()
    outside = tmp_path / "outside.txt"
    outside.write_text("original\n")
    system = f"/usr/local/lib/pyagent-pwned-{uuid.uuid4().hex}"  # root-owned: a uid-0 child could write it
    targets = [str(outside), system, str(work / "inside.txt")]
    res = attack(f"import sys; sys.argv[1:] = {targets!r}\n" + WRITE_ATTACK, work)
    assert active(res, "landlock") and active(res, "private root")
    assert f"DENIED {outside} 30" in res.stdout and f"DENIED {system} 13" in res.stdout, res.stdout
    assert f"WROTE {work / 'inside.txt'}" in res.stdout
    assert outside.read_text() == "original\n" and not os.path.exists(system)


def test_git_directory_is_read_only(tmp_path: Path) -> None:
    """Protection: .git read-only (a read-only bind mount in the command's mount namespace)."""
    work = tmp_path / "repo"
    work.mkdir()
    subprocess.run(["git", "init", "-q", str(work)], check=True)
    config = work / ".git" / "config"
    before = config.read_bytes()
    targets = [str(config), str(work / ".git" / "hooks" / "pre-commit"), str(work / "src.py")]
    res = attack(f"import sys; sys.argv[1:] = {targets!r}\n" + WRITE_ATTACK + "print(open('.git/HEAD').read())", work)
    assert active(res, ".git read-only")
    assert f"DENIED {config} 30" in res.stdout, res.stdout  # EROFS
    assert f"DENIED {work / '.git' / 'hooks' / 'pre-commit'} 30" in res.stdout
    assert f"WROTE {work / 'src.py'}" in res.stdout and "ref: refs/heads/" in res.stdout  # .git stays readable
    assert config.read_bytes() == before


ESCAPE_ATTACK = r"""
import os, sys
for procs in sys.argv[1:]:
    try:
        with open(procs, "w") as f:
            f.write(str(os.getpid()))
        print("ESCAPED", procs)
    except OSError as exc:
        print("DENIED", procs, exc.errno)
"""


def test_escaping_the_pids_cgroup_is_refused_landlock(tmp_path: Path) -> None:
    """Protection: landlock (no write under /sys/fs/cgroup), with a cgroup namespace hiding the path."""
    base = pids_cgroup_base()
    targets = [os.path.join(base, "cgroup.procs")] if base else []
    targets += [p for p in ("/sys/fs/cgroup/cgroup.procs", "/sys/fs/cgroup/unified/cgroup.procs") if os.path.exists(p)]
    assert targets, "no cgroup hierarchy is mounted here"
    code = f"import sys; sys.argv[1:] = {targets!r}\n" + ESCAPE_ATTACK
    res = attack(code, tmp_path)
    assert active(res, "landlock")
    assert "ESCAPED" not in res.stdout
    for procs in targets:
        assert f"DENIED {procs} 13" in res.stdout, res.stdout
    if base and os.geteuid() == 0:  # control: unconfined, root leaves its pids cgroup (the attack)
        plain = attack(code, tmp_path, confine=Confinement.off())
        assert f"ESCAPED {targets[0]}" in plain.stdout, plain.stdout
