"""After a run verified with test-impact selection: find the kept commits that break the full suite.

Selection verifies each change against the tests that exercise the changed files; the final full
suite is the backstop. When it fails, a binary search over the kept commits (each state checked out
in a throwaway linked worktree) finds the first commit after which the full suite regresses.
"""

from __future__ import annotations

import asyncio
import shutil
import tempfile
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pyagent.improve.gitops import GitRepo

__all__ = ["first_bad_commit", "regressions_at"]


async def first_bad_commit(commits: Sequence[str], fails: Callable[[str], Awaitable[bool]]) -> str | None:
    """The first of ``commits`` (oldest first) whose state ``fails``; the last one is known to fail."""
    if not commits:
        return None
    lo, hi = 0, len(commits) - 1
    while lo < hi:
        mid = (lo + hi) // 2
        if await fails(commits[mid]):
            hi = mid
        else:
            lo = mid + 1
    return commits[lo]


async def regressions_at(
    repo: GitRepo, commit: str, rel: Path, check: Callable[[Path], Awaitable[list[str]]]
) -> list[str]:
    """``check`` run on the project (``rel`` inside the repository) as it was at ``commit``."""
    where = Path(tempfile.mkdtemp(prefix="pyagent-bisect-")) / "tree"
    from pyagent.pipeline.workspace import copy_untracked

    await repo.git("worktree", "add", "--quiet", "--detach", str(where), commit)
    try:
        await asyncio.to_thread(copy_untracked, repo.toplevel / rel, where / rel)
        return await check(where / rel)
    finally:
        await repo.git("worktree", "remove", "--force", str(where))
        shutil.rmtree(where.parent, ignore_errors=True)
