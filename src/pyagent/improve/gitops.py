"""Git plumbing for a run: a private worktree on a new branch, one commit per kept change.

The user's branch, index and working tree are never touched: the run works in a linked worktree
(``git worktree add -b pyagent/<run-id>``) and removes it at the end, leaving only the branch.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pyagent.shell import SecureShell

__all__ = ["GitError", "GitRepo"]

GIT_ENV_ALLOW = ("PATH", "HOME", "LANG", "GIT_CONFIG_GLOBAL", "GIT_CONFIG_NOSYSTEM", "XDG_CONFIG_HOME")
_IDENTITY = ("-c", "user.name=PyAgent", "-c", "user.email=pyagent@localhost", "-c", "commit.gpgsign=false")


class GitError(RuntimeError):
    pass


class GitRepo:
    def __init__(self, toplevel: Path, shell: SecureShell) -> None:
        self.toplevel = toplevel
        self.shell = shell

    @classmethod
    async def find(cls, path: Path, shell: SecureShell) -> GitRepo | None:
        """The repository ``path`` lives in, if it is one with at least one commit."""
        res = await shell.run(["git", "rev-parse", "--show-toplevel"], cwd=str(path))
        if res.exit_code != 0:
            return None
        repo = cls(Path(res.stdout.strip()), shell)
        head = await shell.run(["git", "rev-parse", "--verify", "-q", "HEAD"], cwd=str(path))
        return repo if head.exit_code == 0 else None

    async def git(self, *args: str, cwd: Path | None = None) -> str:
        res = await self.shell.run(["git", *_IDENTITY, *args], cwd=str(cwd or self.toplevel))
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
            await self.shell.run(["git", "cherry-pick", "--abort"], cwd=str(worktree))
            same = False
        if not same:
            await self.git("reset", "--hard", "--quiet", head, cwd=worktree)
            return None
        return mapping
