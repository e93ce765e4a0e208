"""After the tasks: the whole suite once on the branch (bisecting and reverting a change that broke it)
and the branch's commits grouped by theme for the reviewer."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from pyagent.improve.baseline import BaselinePhase
from pyagent.model.status import Status

if TYPE_CHECKING:
    from pyagent.agents.test_results import TestResults
    from pyagent.agents.testing import TestAgent

__all__ = ["FinalPhase"]


class FinalPhase(BaselinePhase):
    """The final full suite and the branch's shape."""

    async def _drop_culprits(
        self, tree: Path, tests: TestAgent, baseline: TestResults, after: TestResults, scratch: Path
    ) -> TestResults:
        """Changes verified by selected tests, checked by one full suite; culprits are found and reverted."""
        from pyagent.improve.bisect import first_bad_commit, regressions_at
        from pyagent.improve.gitops import GitError

        # tests that ran and now fail, or fail anew; a test id that merely vanished is not blamed on a
        # change here (parametrized ids built from unordered data differ from run to run)
        regs = after.selected_regressions(baseline)
        if not regs:
            self.notes.append("the final full test suite passed on the branch")
            return after
        if self.repo is None or self.base_commit is None:
            self.notes.append(
                f"the final full test suite has {len(regs)} regression(s) ({', '.join(regs[:3])}); "
                "outside git they are not bisected: rerun with --full-tests"
            )
            return after
        repo = self.repo

        async def check(path: Path) -> list[str]:
            return (await self._run_test_task(tests, path)).selected_regressions(baseline)

        async def fails(commit: str) -> bool:
            return bool(await regressions_at(repo, commit, self.tree_rel, check))

        for _ in range(3):
            by_commit = {r.commit: r for r in self.records.values() if r.status is Status.KEPT and r.commit}
            order = (await repo.git("rev-list", "--reverse", f"{self.base_commit}..HEAD", cwd=tree)).split()
            culprit = await first_bad_commit([c for c in order if c in by_commit], fails)
            if culprit is None:
                break
            rec = by_commit[culprit]
            try:
                await repo.git("revert", "--no-edit", culprit, cwd=tree)
            except GitError as exc:
                self.notes.append(f"could not revert {culprit[:10]} ({exc}); the branch keeps it")
                break
            rec.status = Status.ROLLED_BACK
            rec.reason = (
                f"the final full suite failed ({', '.join(regs[:3])}); bisecting the kept commits found this "
                f"change ({culprit[:10]}), which was reverted on the branch"
            )
            self.notes.append(f"dropped {rec.action} in {rec.target}: it broke the full suite (found by bisect)")
            after = await self._tests(tests, tree, scratch)
            regs = after.selected_regressions(baseline)
            if not regs:
                self.notes.append("the final full test suite passed on the branch after dropping the culprit(s)")
                return after
        self.notes.append(f"the final full test suite still has {len(regs)} regression(s): {', '.join(regs[:3])}")
        return after

    async def _group_commits(self, tree: Path) -> None:
        """Order the branch's commits theme by theme (lint, modernisation, ...) for the reviewer."""
        from pyagent.pipeline.planner import AGENT_ORDER

        assert self.repo is not None and self.base_commit is not None
        wt = tree  # inside the run's worktree (a project below the repository root is a subfolder)
        created = (await self.repo.git("rev-list", "--reverse", f"{self.base_commit}..HEAD", cwd=wt)).split()
        by_sha = {r.commit: r for r in self.records.values() if r.commit}
        if len(created) < 2 or set(created) != set(by_sha):
            return

        def theme(sha: str) -> tuple[int, int]:
            agent = by_sha[sha].agent
            return (AGENT_ORDER.index(agent) if agent in AGENT_ORDER else len(AGENT_ORDER), created.index(sha))

        order = sorted(created, key=theme)
        if order == created:
            return
        mapping = await self.repo.reorder(wt, self.base_commit, order)
        if mapping is None:
            self.notes.append("the commits could not be grouped by theme without changing the result; kept as made")
            return
        for rec in by_sha.values():
            rec.commit = mapping[rec.commit or ""]
        self.notes.append("commits were grouped by theme (lint, modernisation, simplification, formatting, ...)")
