"""The state one ``improve`` run shares between its phases (tree, baseline, tasks, final suite, report)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pyagent.improve.options import ImproveOptions, new_run_id

if TYPE_CHECKING:
    from pyagent.agents.base import BaseAgent
    from pyagent.agents.deprecation import WarningMatch
    from pyagent.agents.testing import TestAgent
    from pyagent.improve.gitops import GitRepo
    from pyagent.improve.result import TaskRecord
    from pyagent.model.context import CascadeContext
    from pyagent.model.task import AgentTask
    from pyagent.pipeline.planner import TypesRequest
    from pyagent.shell import SecureShell

__all__ = ["RunBase"]


class RunBase:
    """What every phase of a run reads and records; the phases are mixins over it (``improve.run._Run``)."""

    def __init__(self, opts: ImproveOptions) -> None:
        from pyagent.improve.gitops import GIT_ENV_ALLOW
        from pyagent.pipeline.builder import pipeline_shell
        from pyagent.shell import Confinement, SecureShell

        self.opts = opts
        self.path = Path(opts.path).resolve()
        self.run_id = opts.run_id or new_run_id()
        self.shell: SecureShell = pipeline_shell()
        # git is PyAgent's own fixed argv on the user's repository (it must write .git): not confined.
        self.git_shell: SecureShell = SecureShell(env_allow=GIT_ENV_ALLOW, timeout=600.0, confine=Confinement.off())
        self.tasks: dict[str, AgentTask] = {}  # planned tasks and the retries they delegated, in that order
        self.records: dict[str, TaskRecord] = {}
        self.file_locks: dict[str, asyncio.Lock] = {}
        self.merge_lock = asyncio.Lock()
        self.applied: set[str] = set()  # digests of merged change sets
        self.merged_tasks: set[str] = set()  # ids of tasks whose change set was merged
        self.originals: dict[str, bytes | None] = {}
        self.notes: list[str] = []
        self.budget_stop: str | None = None
        self.repo: GitRepo | None = None
        self.branch: str | None = None
        self.base_commit: str | None = None
        self.drop_branch: str | None = None
        self.mode = ""
        self.tree_rel = Path()  # the project's folder inside the repository
        self.warned: list[WarningMatch] = []
        self.agents: dict[str, BaseAgent] = {}  # this machine's agents: they authorize every merge
        self.test_agent: TestAgent | None = None  # runs the baseline, every gate's tests and the final suite
        self.max_complexity = 10
        self.interrupted: str | None = None
        self.state: Any = None  # RunState of a git run
        self.resumed: Any = None  # the RunState being resumed
        self.report_dir: Path | None = None
        from pyagent.agents.ruff import LintRules

        self.rules = LintRules()
        self.settings: dict[str, str] = {}
        self.phases: dict[str, float] = {}  # seconds of the baseline, the tasks and the final suite
        self.types: TypesRequest | None = None  # the types agent's request (None: not planned)
        self.root_ctx: CascadeContext | None = None  # the run's chain: every task and test run belongs to it
        # [tool.pyagent] merged with the options (RunSetup._configure)
        self.test_cmd: str | None = opts.test_cmd
        self.configured_test_cmd: str | None = None
        self.formatter_override: str | None = opts.formatter
        self.allow_few_tests = False
        self.agent_filter: tuple[str, ...] | None = opts.agents
        self.exclude: tuple[str, ...] = tuple(opts.exclude)

    def progress(self, kind: str, **data: Any) -> None:
        if self.opts.on_progress is not None:
            try:
                self.opts.on_progress({"kind": kind, "run_id": self.run_id, **data})
            except (Exception, SystemExit) as exc:  # a broken display (closed pipe) must not break the run
                self.opts.on_progress = None
                self.notes.append(f"progress display stopped: {type(exc).__name__}")
