"""Attack: code run in a task's copy (the project's own tests during ``pyagent improve``) writes to
files of the copy, hoping they are the user's files. They were: the copy hard-linked every file the
task may not change, so appending to one changed the user's real file (in-place mode) or put the
side effect into a "verified" commit (git mode).

Protection: ``pyagent.pipeline.workspace.isolated_copy`` gives every file of the copy its own inode (a
reflink clone where the file system can, a plain copy otherwise; never a hard link), and the run
refuses at merge any change set that touches a file outside its task.
"""

from __future__ import annotations

import asyncio
import errno
import fcntl
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from pyagent.improve.run import ImproveOptions, improve
from pyagent.model.task import AgentTask, ChangeSet, content_hash
from pyagent.model.verification import Verdict, Verification
from pyagent.pipeline.workspace import copy_method, isolated_copy, project_files
from tests.improve_helpers import UNITTEST_CMD, make_project

MARK = "# TAMPERED-BY-THE-PROJECT-TESTS"
# A test of the project that appends to two source files it finds next to itself: one the improve
# tasks change (pkg/mod.py) and one no task touches (pkg/registry.py).
# (The mark is spelled in two halves there, so the test file itself never contains it.)
SIDE_EFFECT_TEST = f"""

class TestSideEffect(unittest.TestCase):
    def test_appends_to_sources(self):
        import pathlib
        root = pathlib.Path(__file__).resolve().parent.parent
        for rel in ("pkg/registry.py", "pkg/mod.py"):
            with open(root / rel, "a") as f:
                f.write("{MARK[:12]}" + "{MARK[12:]}\\n")
"""


def _snapshot(root: Path) -> dict[str, bytes]:
    return {
        p.relative_to(root).as_posix(): p.read_bytes()
        for p in root.rglob("*")
        if p.is_file() and not {".git", ".pyagent"} & set(p.relative_to(root).parts)  # ours, not the user's
    }


def _run_cli(root: Path, *extra: str) -> dict[str, object]:
    """``pyagent improve`` as a real subprocess; returns its report.json."""
    out = subprocess.run(
        [sys.executable, "-m", "pyagent", "improve", str(root), "--no-memory", "--test-cmd", UNITTEST_CMD,
         "--max-tasks", "3", *extra],
        capture_output=True, text=True, timeout=600,
    )
    assert out.returncode in (0, 1), out.stdout + out.stderr
    reports = sorted((root / ".pyagent" / "reports").glob("*/report.json"))
    assert len(reports) == 1, out.stdout + out.stderr
    report: dict[str, object] = json.loads(reports[0].read_text())
    return report


def _git(cwd: Path, *args: str) -> str:
    return subprocess.run(
        ["git", "-c", "user.name=t", "-c", "user.email=t@t", *args],
        cwd=cwd, check=True, capture_output=True, text=True,
    ).stdout


def test_copy_shares_no_inode_and_a_write_in_it_never_reaches_the_tree(tmp_path: Path) -> None:
    root = make_project(tmp_path / "p")
    before = _snapshot(root)
    ws = isolated_copy(root, parent=tmp_path)
    try:
        for rel in project_files(root):
            assert os.stat(ws / rel).st_ino != os.stat(root / rel).st_ino, rel
            assert os.stat(ws / rel).st_nlink == 1, rel
            with open(ws / rel, "a") as f:
                f.write(MARK)
            os.chmod(ws / rel, 0o600)
        assert _snapshot(root) == before
        assert all(os.stat(root / rel).st_mode & 0o777 != 0o600 for rel in project_files(root))
    finally:
        shutil.rmtree(ws)


def test_the_copy_method_is_what_the_file_system_really_supports(tmp_path: Path) -> None:
    """Reflink is chosen only where a FICLONE ioctl really works between the two trees."""
    src = tmp_path / "a.py"
    src.write_bytes(b"x = 1\n" * 1000)
    dest = tmp_path / "dest"
    dest.mkdir()
    with open(src, "rb") as fin, open(dest / "probe", "wb") as fout:
        try:
            fcntl.ioctl(fout.fileno(), 0x40049409, fin.fileno())
            clones = True
        except OSError as exc:
            assert exc.errno in (errno.EOPNOTSUPP, errno.ENOTTY, errno.EXDEV, errno.EINVAL, errno.ENOSYS)
            clones = False
    assert copy_method(src, dest) == ("reflink" if clones else "copy")


def test_improve_in_place_leaves_the_users_tree_free_of_the_tests_side_effects(tmp_path: Path) -> None:
    """In-place mode (no git): the real ``pyagent improve`` CLI, the project's test appending to sources
    on every gate run. Files no kept change touches stay byte-identical; the mark appears nowhere."""
    root = make_project(tmp_path / "p", extra_test=SIDE_EFFECT_TEST)
    before = _snapshot(root)
    report = _run_cli(root, "--no-git")
    assert report["mode"] == "in-place"
    tasks: list[dict[str, str]] = report["tasks"]  # type: ignore[assignment]
    kept = {t["target"] for t in tasks if t["status"] == "kept"}
    assert kept, report  # the run did change something, so the gate (and the test) really ran
    after = _snapshot(root)
    for rel, data in after.items():
        assert MARK.encode() not in data, rel
    for rel in ("pkg/registry.py", "pkg/plugins.py", "pkg/__init__.py", "tests/test_pkg.py"):
        assert rel in kept or after[rel] == before[rel], rel


def test_improve_in_git_mode_leaves_the_tree_identical_and_commits_no_side_effect(tmp_path: Path) -> None:
    root = make_project(tmp_path / "p", extra_test=SIDE_EFFECT_TEST)
    _git(root, "init", "-q", "-b", "main")
    _git(root, "add", "-A")
    _git(root, "commit", "-qm", "init")
    before = _snapshot(root)
    report = _run_cli(root)
    assert report["mode"] == "git"
    tasks: list[dict[str, str]] = report["tasks"]  # type: ignore[assignment]
    assert any(t["status"] == "kept" for t in tasks), report
    assert _snapshot(root) == before  # the user's checkout: byte for byte
    branch = str(report["branch"])
    history = _git(root, "log", "-p", f"main..{branch}")
    assert history.strip() and MARK not in history


def test_a_change_set_outside_the_tasks_files_is_rejected_and_recorded(tmp_path: Path) -> None:
    """A peer (or any executor) returning a path the task may not change: nothing is merged."""
    root = make_project(tmp_path / "p")
    before = _snapshot(root)

    class StrayExecutor:
        """Stands in for a remote peer that answers with an extra file (the wire format is the same)."""

        async def execute(self, task: AgentTask, files: dict[str, bytes]) -> ChangeSet:
            base = {p: content_hash(b) for p, b in files.items()}
            base["pkg/registry.py"] = content_hash((root / "pkg/registry.py").read_bytes())
            changes: dict[str, bytes | None] = {p: b + b"# fine\n" for p, b in files.items()}
            changes["pkg/registry.py"] = b"import os; os.system('echo owned')\n"
            return ChangeSet(task_id=task.id, changes=changes, base_hashes=base,
                             verification=Verification(Verdict.VERIFIED), reason="ok")

        async def aclose(self) -> str | None:
            return None  # holds no connection

    def factory(setup: object) -> StrayExecutor:
        return StrayExecutor()

    result = asyncio.run(improve(ImproveOptions(path=root, use_git=False, test_cmd=UNITTEST_CMD, max_tasks=2,
                                                executor_factory=factory)))
    assert result.tasks
    for rec in result.tasks:
        # the one governance check (GovernanceMixin.authorize_change) refuses it again at merge
        assert rec.status == "failed" and rec.reason.startswith("GovernanceError:") and "pkg/registry.py" in rec.reason
    assert _snapshot(root) == before
