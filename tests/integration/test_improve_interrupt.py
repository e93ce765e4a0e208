"""SIGTERM, SIGHUP and SIGKILL in the middle of a real `pyagent improve` on a real git repository."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.integration import project_kit as kit

pytestmark = pytest.mark.slow

# Six files with an unused import each (six F401 tasks); every test run takes a moment, so a signal
# lands between tasks and in the middle of one.
FILES = {
    "pyproject.toml": '[tool.ruff.lint]\nselect = ["F"]\n',
    "pkg/__init__.py": "",
    **{f"pkg/m{i}.py": f"import os\nimport sys\n\n\ndef f{i}():\n    return sys.maxsize > {i}\n" for i in range(6)},
    "tests/__init__.py": "",
    "tests/test_all.py": (
        "import time\nimport unittest\n\n"
        + "".join(f"from pkg.m{i} import f{i}\n" for i in range(6))
        + "\n\nclass T(unittest.TestCase):\n"
        + "".join(f"    def test_{i}(self):\n        time.sleep(0.15)\n        self.assertTrue(f{i}())\n\n" for i in range(6))
    ),
}
TEST_CMD = "python -m unittest discover -s tests -t ."


def _start(cmd: list[str], root: Path, env: dict[str, str], *extra: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [*cmd, "improve", str(root), "--concurrency", "1", "--no-memory", "--test-cmd", TEST_CMD, *extra],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


def _wait_for_outcomes(root: Path, n: int, proc: subprocess.Popen[str], timeout: float = 120) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for path in (root / ".pyagent" / "runs").glob("*.json"):
            try:
                state = json.loads(path.read_text())
            except (OSError, ValueError):
                continue
            if len(state.get("outcomes", {})) >= n:
                return state  # type: ignore[no-any-return]
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.05)
    raise AssertionError("the run made no progress")


def _worktrees(root: Path) -> list[str]:
    return [line for line in kit.git(root, "worktree", "list", "--porcelain").splitlines() if line.startswith("worktree ")]


@pytest.mark.parametrize(("sig", "code"), [(signal.SIGTERM, 143), (signal.SIGHUP, 129)])
def test_sigterm_and_sighup_clean_up_and_write_the_report(
    tmp_path: Path, pyagent_cmd: list[str], clean_env: dict[str, str], sig: signal.Signals, code: int
) -> None:
    root = kit.write_project(tmp_path / "repo", FILES)
    proc = _start(pyagent_cmd, root, clean_env)
    state = _wait_for_outcomes(root, 2, proc)
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == code, out[-2000:] + err[-2000:]
    assert f"interrupted by {sig.name}" in out
    assert _worktrees(root) == [f"worktree {root}"]  # no registered worktree is left
    assert not Path(state["scratch"]).exists()  # nor its temp dir
    reports = list((root / ".pyagent" / "reports").glob("*/report.json"))
    assert len(reports) == 1
    rep = json.loads(reports[0].read_text())
    assert rep["interrupted"] == sig.name
    kept = [t for t in rep["tasks"] if t["status"] == "kept"]
    assert len(kept) >= 2
    assert any(t["reason"].startswith("not attempted: the run was interrupted") for t in rep["tasks"])
    assert (reports[0].parent / "PR.md").is_file()
    # the kept commits are on the branch, and the user's tree is untouched
    assert len(kit.branch_commits(root, rep["branch"])) == len(kept)
    assert kit.git(root, "status", "--porcelain").strip() == ""


def test_resume_after_sigkill_ends_with_the_same_branch_as_an_uninterrupted_run(
    tmp_path: Path, pyagent_cmd: list[str], clean_env: dict[str, str]
) -> None:
    reference = kit.write_project(tmp_path / "reference", FILES)
    whole = _start(pyagent_cmd, reference, clean_env)
    out, err = whole.communicate(timeout=300)
    assert whole.returncode == 0, out[-2000:] + err[-2000:]
    (ref_branch,) = kit.git(reference, "branch", "--list", "pyagent/*", "--format=%(refname:short)").split()

    root = kit.write_project(tmp_path / "repo", FILES)
    proc = _start(pyagent_cmd, root, clean_env)
    state = _wait_for_outcomes(root, 2, proc)
    os.kill(proc.pid, signal.SIGKILL)
    proc.communicate(timeout=30)
    done_before = len(json.loads(next((root / ".pyagent" / "runs").glob("*.json")).read_text())["outcomes"])
    assert done_before < 6  # it really was killed mid-run

    resumed = _start(pyagent_cmd, root, clean_env, "--resume")
    out, err = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, out[-2000:] + err[-2000:]
    assert f"resumed run {state['run_id']}" in out
    branch = state["branch"]
    # same content as the uninterrupted run of the same plan, every change once
    assert kit.git(root, "rev-parse", f"{branch}^{{tree}}") == kit.git(reference, "rev-parse", f"{ref_branch}^{{tree}}")
    assert len(kit.branch_commits(root, branch)) == 6
    assert _worktrees(root) == [f"worktree {root}"]
    assert not Path(state["scratch"]).exists()
    rep = json.loads((root / ".pyagent" / "reports" / state["run_id"] / "report.json").read_text())
    assert [t["status"] for t in rep["tasks"]] == ["kept"] * 6
    # nothing left to resume
    again = _start(pyagent_cmd, root, clean_env, "--resume")
    _out, err = again.communicate(timeout=60)
    assert again.returncode == 2 and "no unfinished run" in err
