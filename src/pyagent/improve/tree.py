"""Where a run works: a copy (dry run), the project itself (in place), or a git worktree on a new branch.

Also what is undone on the way out: the worktree goes, and a branch that kept nothing is deleted.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

from pyagent.improve.options import ImproveError
from pyagent.improve.run_base import RunBase

if TYPE_CHECKING:
    from pyagent.improve.gitops import GitRepo

__all__ = ["TreeSetup"]


class TreeSetup(RunBase):
    """The run's tree before the first phase and after the last."""

    async def _recover(self) -> None:
        """A transaction killed before its commit point must not be measured or built upon."""
        from pyagent.state.recovery import ensure_recovered

        recovered = await asyncio.to_thread(ensure_recovered, self.path)
        if recovered is not None:
            self.notes.append(
                f"rolled back interrupted transaction {recovered.txid} first "
                f"({len(recovered.restored)} restored, {len(recovered.removed)} removed)"
            )

    async def _prepare_tree(self, scratch: Path) -> tuple[Path, str]:
        from pyagent.improve.gitops import GitRepo
        from pyagent.pipeline.workspace import copy_files, copy_untracked, isolated_copy

        if self.opts.dry_run:
            files = copy_files(self.path)
            copy = await asyncio.to_thread(
                isolated_copy, self.path, parent=scratch, files=files
            )
            return copy, "dry-run"
        repo = await GitRepo.find(self.path, self.git_shell) if self.opts.use_git else None
        if repo is None:
            if self.opts.resume:
                raise ImproveError("--resume continues a git run; this project is not in a git repository")
            if self.opts.in_place or not self.opts.use_git:
                return self.path, "in-place"
            self.notes.append(
                f"{self.path} is not in a git repository, so nothing was changed (a dry run); pass "
                "--in-place to apply verified changes to the files directly (`pyagent undo PATH` reverts them)"
            )
            self.opts.dry_run = True
            return await self._prepare_tree(scratch)
        self.repo = repo
        wt = scratch / "worktree"
        if self.opts.resume:
            await self._resume_worktree(repo, wt)
        else:
            self.base_commit, _ = await repo.head()
            self.branch = f"pyagent/{self.run_id}"
            await repo.add_worktree(wt, self.branch)
        rel = (
            self.path.relative_to(repo.toplevel.resolve()) if self.path != repo.toplevel.resolve() else Path()
        )
        self.tree_rel = rel
        # the checkout holds only what git tracks; the tests may need the rest (a generated version.py)
        await asyncio.to_thread(copy_untracked, self.path, wt / rel)
        status = await repo.git("status", "--porcelain", "--untracked-files=no")
        if status.strip():
            self.notes.append(
                "the working tree has uncommitted changes; the run works on the last commit (HEAD)"
            )
        return wt / rel, "git"

    async def _resume_worktree(self, repo: GitRepo, wt: Path) -> None:
        """Check out the killed run's branch again; what the killed run left behind is removed."""
        from pyagent.improve.run_state import latest_unfinished

        state = latest_unfinished(self.path)
        if state is None:
            raise ImproveError(f"--resume: no unfinished run of {self.path} was found (.pyagent/runs)")
        branch = str(state.data["branch"])
        if not (await repo.git("branch", "--list", branch)).strip():
            raise ImproveError(f"--resume: the run's branch {branch} no longer exists; start a new run")
        old = state.data.get("worktree")
        if old:
            with contextlib.suppress(RuntimeError):
                await repo.remove_worktree(Path(old))
            await asyncio.to_thread(shutil.rmtree, Path(old).parent, True)
        await repo.git("worktree", "prune")
        await repo.git("worktree", "add", "--quiet", os.fspath(wt), branch)
        self.resumed, self.run_id, self.branch = state, str(state.data["run_id"]), branch
        self.base_commit = str(state.data["base_commit"])
        self.notes.append(f"resumed run {self.run_id} on branch {branch}")

    async def _remove_worktree(self, scratch: Path) -> None:
        """Remove the run's worktree, and its branch when the run kept nothing on it."""
        assert self.repo is not None
        with contextlib.suppress(RuntimeError):
            if (
                self.drop_branch is None
                and self.branch
                and self.base_commit
                and not await self.repo.branch_has_commits(self.branch, self.base_commit)
            ):
                self.drop_branch = self.branch  # an interrupted run that kept nothing
        try:
            await self.repo.remove_worktree(scratch / "worktree")
            if self.drop_branch is not None:
                await self.repo.delete_branch(self.drop_branch)
        except RuntimeError as exc:
            self.notes.append(f"cleanup: {exc}")
