"""Attack: the project's repository configures programs that git runs (hooks, core.fsmonitor, filter,
textconv and merge drivers). PyAgent runs git unconfined on the user's repository, so a real
``improve`` run in git mode must execute none of them (protection: ``gitops.git_argv``)."""

from __future__ import annotations

import asyncio
import stat
import subprocess
from pathlib import Path

from pyagent.improve.gitops import driver_overrides
from pyagent.improve.run import ImproveOptions, improve
from tests.improve_helpers import NO_PLUGINS, UNITTEST_CMD, make_project

HOOKS = ("pre-commit", "prepare-commit-msg", "commit-msg", "post-commit", "post-checkout", "post-rewrite",
         "reference-transaction", "pre-auto-gc", "post-index-change", "fsmonitor-watchman")


def _git(root: Path, *args: str) -> str:
    return subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=root, check=True,
                          capture_output=True, text=True).stdout


def _arm(root: Path, marks: Path) -> None:
    """Every way a repository can make git run a program, each one leaving a marker file when run."""
    marks.mkdir()

    def script(name: str) -> Path:
        path = marks.parent / f"evil-{name}"
        path.write_text(f"#!/bin/sh\ntouch {marks}/{name}\ncat\n")
        path.chmod(path.stat().st_mode | stat.S_IXUSR)
        return path

    hooks = root / ".git" / "hooks"
    for hook in HOOKS:
        (hooks / hook).write_text(f"#!/bin/sh\ntouch {marks}/hook-{hook}\nexit 0\n")
        (hooks / hook).chmod(0o755)
    other_hooks = marks.parent / "other-hooks"
    other_hooks.mkdir()
    (other_hooks / "post-commit").write_text(f"#!/bin/sh\ntouch {marks}/hookspath-post-commit\n")
    (other_hooks / "post-commit").chmod(0o755)
    _git(root, "config", "core.hooksPath", str(other_hooks))
    _git(root, "config", "core.fsmonitor", str(script("fsmonitor")))
    for key, name in (("filter.evil.clean", "clean"), ("filter.evil.smudge", "smudge"),
                      ("diff.evil.textconv", "textconv"),
                      ("diff.evil.command", "diffcmd"), ("merge.evil.driver", "merge")):
        _git(root, "config", key, str(script(name)))
    _git(root, "config", "filter.evil.required", "true")
    _git(root, "config", "diff.external", str(script("external-diff")))
    (root / ".gitattributes").write_text("*.py filter=evil diff=evil merge=evil\n")


def test_improve_in_git_mode_runs_none_of_the_repositorys_programs(tmp_path: Path) -> None:
    root = make_project(tmp_path / "repo")
    _git(root, "init", "-q", "-b", "main")
    _git(root, "add", "-A")
    _git(root, "commit", "-qm", "init")
    marks = tmp_path / "marks"
    _arm(root, marks)
    # the trap is real: a plain git commit in this repository runs them
    assert not list(marks.iterdir())
    _git(root, "add", ".gitattributes")
    _git(root, "commit", "-qm", "attributes")
    assert {"hookspath-post-commit", "clean"} <= {p.name for p in marks.iterdir()}
    for p in marks.iterdir():
        p.unlink()

    result = asyncio.run(improve(ImproveOptions(path=root, max_tasks=3, test_cmd=UNITTEST_CMD,
                                                test_env=NO_PLUGINS)))

    assert [t for t in result.tasks if t.status == "kept"], "nothing was kept: the test would prove nothing"
    assert result.branch and _git(root, "rev-list", f"main..{result.branch}").strip()
    assert sorted(p.name for p in marks.iterdir()) == []


def test_driver_overrides_empty_each_driver_command_of_the_config() -> None:
    listing = "\0".join(["core.bare\nfalse", "filter.lfs.clean\ngit-lfs clean -- %f", "Diff.Pic.textconv\nexif",
                         "merge.ours.driver\ntrue", "diff.pic.binary\ntrue", "user.name\nx", ""])
    assert driver_overrides(listing) == ("-c", "filter.lfs.clean=", "-c", "filter.lfs.required=false",
                                         "-c", "Diff.Pic.textconv=", "-c", "merge.ours.driver=")
