"""Git plumbing for a run: a private worktree on a new branch, one commit per kept change.

The user's branch, index and working tree are never touched: the run works in a linked worktree
(``git worktree add -b pyagent/<run-id>``) and removes it at the end, leaving only the branch.

Git runs unconfined (it must write the user's ``.git``), so nothing the repository configures may run
through it: every call goes through :func:`git_argv`, which turns off hooks (``core.hooksPath``, the
reference-transaction hook included), ``core.fsmonitor``, external diff, pagers and editors, and empties
every filter, textconv and merge driver the repository's config defines (:func:`driver_overrides`).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pyagent.shell import SecureShell

__all__ = ["GitError", "GitRepo", "git_argv"]

GIT_ENV_ALLOW = ("PATH", "HOME", "LANG", "GIT_CONFIG_GLOBAL", "GIT_CONFIG_NOSYSTEM", "XDG_CONFIG_HOME")
_IDENTITY = ("-c", "user.name=PyAgent", "-c", "user.email=pyagent@localhost", "-c", "commit.gpgsign=false")
# Settings under which git executes a program of the repository's choosing, turned off for every call.
_NO_EXEC = ("core.hooksPath=/dev/null", "core.fsmonitor=false", "diff.external=", "core.pager=cat",
            "core.editor=true", "sequence.editor=true", "core.sshCommand=false", "core.askPass=",
            "credential.helper=", "gpg.program=false", "tag.gpgSign=false")
# name.<driver>.key entries that name a command (filters, diff textconv/command, merge drivers).
_DRIVER_KEYS = {("filter", "clean"), ("filter", "smudge"), ("filter", "process"), ("diff", "textconv"),
                ("diff", "command"), ("merge", "driver")}


def driver_overrides(config_list: str) -> tuple[str, ...]:
    """``-c KEY=`` for every driver command in ``git config --null --list`` output (and filters made
    optional), so a ``.gitattributes`` line naming one runs nothing."""
    out: list[str] = []
    for entry in config_list.split("\0"):
        key = entry.split("\n", 1)[0]
        section, _, rest = key.partition(".")
        name, _, leaf = rest.rpartition(".")
        if name and (section.lower(), leaf.lower()) in _DRIVER_KEYS:
            out += ["-c", f"{section}.{name}.{leaf}="]
            if section.lower() == "filter":
                out += ["-c", f"filter.{name}.required=false"]
    return tuple(out)


def git_argv(*args: str, overrides: tuple[str, ...] = ()) -> list[str]:
    """The argv of one git call PyAgent makes: identity, nothing executable, then ``args``."""
    base = ["git", *_IDENTITY]
    for setting in _NO_EXEC:
        base += ["-c", setting]
    return [*base, *overrides, *args]


class GitError(RuntimeError):
    pass


class GitRepo:
    def __init__(self, toplevel: Path, shell: SecureShell, overrides: tuple[str, ...] = ()) -> None:
        self.toplevel = toplevel
        self.shell = shell
        self.overrides = overrides

    @classmethod
    async def find(cls, path: Path, shell: SecureShell) -> GitRepo | None:
        """The repository ``path`` lives in, if it is one with at least one commit."""
        res = await shell.run(git_argv("rev-parse", "--show-toplevel"), cwd=str(path))
        if res.exit_code != 0:
            return None
        config = await shell.run(git_argv("config", "--null", "--list"), cwd=str(path))
        repo = cls(Path(res.stdout.strip()), shell, driver_overrides(config.stdout))
        head = await shell.run(git_argv("rev-parse", "--verify", "-q", "HEAD", overrides=repo.overrides),
                               cwd=str(path))
        return repo if head.exit_code == 0 else None

    async def git(self, *args: str, cwd: Path | None = None) -> str:
        res = await self.shell.run(git_argv(*args, overrides=self.overrides), cwd=str(cwd or self.toplevel))
        if res.exit_code != 0:
            raise GitError(f"git {' '.join(args[:2])} failed: {(res.stderr or res.stdout).strip()[-400:]}")
        return res.stdout

    async def head(self) -> tuple[str, str]:
        """(commit sha, branch name or 'HEAD' when detached)."""
        sha = (await self.git("rev-parse", "HEAD")).strip()
        branch = (await self.git("rev-parse", "--abbrev-ref", "HEAD")).strip()
        return sha, branch

    async def add_worktree(self, where: Path, branch: str) -> None:
        await self.git("worktree", "add", "--quiet", "-b", branch, os.fspath(where), "HEAD")

    async def remove_worktree(self, where: Path) -> None:
        await self.git("worktree", "remove", "--force", os.fspath(where))

    async def commit(self, worktree: Path, paths: list[str], message: str) -> str:
        await self.git("add", "--all", "--", *paths, cwd=worktree)
        await self.git("commit", "--quiet", "--no-verify", "-m", message, cwd=worktree)
        return (await self.git("rev-parse", "HEAD", cwd=worktree)).strip()

    async def branch_has_commits(self, branch: str, base: str) -> bool:
        return bool((await self.git("rev-list", f"{base}..{branch}")).strip())

    async def delete_branch(self, branch: str) -> None:
        await self.git("branch", "-D", branch)

    async def reorder(self, worktree: Path, base: str, order: list[str]) -> dict[str, str] | None:
        """Rebuild the worktree's branch on ``base`` with the commits ``order`` lists, in that order.

        Returns old sha -> new sha; None (and the branch as it was) when a pick conflicts or the
        rebuilt tree differs from the original one: grouping must never change the result.
        """
        head = (await self.git("rev-parse", "HEAD", cwd=worktree)).strip()
        tree = (await self.git("rev-parse", "HEAD^{tree}", cwd=worktree)).strip()
        await self.git("reset", "--hard", "--quiet", base, cwd=worktree)
        mapping: dict[str, str] = {}
        try:
            for sha in order:
                await self.git("cherry-pick", "--allow-empty", sha, cwd=worktree)
                mapping[sha] = (await self.git("rev-parse", "HEAD", cwd=worktree)).strip()
            same = (await self.git("rev-parse", "HEAD^{tree}", cwd=worktree)).strip() == tree
        except GitError:
            await self.shell.run(git_argv("cherry-pick", "--abort", overrides=self.overrides), cwd=str(worktree))
            same = False
        if not same:
            await self.git("reset", "--hard", "--quiet", head, cwd=worktree)
            return None
        return mapping
