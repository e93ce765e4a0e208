"""The run's tests before any change: the declared command, the baseline (under coverage for the
test-impact map), its sanity checks, and the deprecation warnings it printed.

Every test run of a run goes through the test agent's ``run(task, workspace)`` as a task of the
run's chain (see :meth:`pyagent.agents.testing.TestAgent.task`).
"""

from __future__ import annotations

import asyncio
import dataclasses
import secrets
import shlex
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pyagent.improve.options import ImproveError
from pyagent.improve.run_base import RunBase

if TYPE_CHECKING:
    from pyagent.agents.deprecation import WarningMatch
    from pyagent.agents.impact import TestImpact
    from pyagent.agents.test_results import TestResults
    from pyagent.agents.testing import TestAgent
    from pyagent.model.task import AgentTask
    from pyagent.pipeline.planner import TypesRequest
    from pyagent.pipeline.settings import PipelineSettings

__all__ = ["BaselinePhase"]


class BaselinePhase(RunBase):
    """Runs the tests for the run: the baseline here, the final suite and bisect steps after the tasks."""

    def _test_task(self, tests: TestAgent, **params: Any) -> AgentTask:
        """A test run of this run's chain (the baseline, the final suite, a bisect step)."""
        assert self.root_ctx is not None
        return tests.task(self.root_ctx, task_id=f"{self.root_ctx.task_id}/tests-{secrets.token_hex(3)}", **params)

    async def _run_test_task(self, tests: TestAgent, workspace: Path, **params: Any) -> TestResults:
        outcome = await tests.run(self._test_task(tests, **params), workspace)
        if outcome.tests is None:
            raise ImproveError(f"the test agent reported no run: {outcome.error}")
        return outcome.tests

    async def _tests(self, tests: TestAgent, tree: Path, scratch: Path) -> TestResults:
        from pyagent.pipeline.builder import run_tests

        return await run_tests(tests, self._test_task(tests), tree, scratch)

    async def _match_warnings(self, tree: Path, baseline: TestResults | None) -> list[WarningMatch]:
        """The baseline's deprecation warnings inside the project, each with the ruff rule that fixes it."""
        from pyagent.agents import ruff
        from pyagent.agents.deprecation import DEPRECATION_RULES, match_warnings

        if baseline is None or not baseline.warnings:
            return []
        files = sorted({w[0] for w in baseline.warnings if (tree / w[0]).is_file()})
        rules = ruff.LintRules(("--select", ",".join(DEPRECATION_RULES)), "the deprecation rules")
        found = await ruff.check(tree, files, rules=rules, shell=self.shell) if files else []
        self.warned = match_warnings(baseline.warnings, found)
        return self.warned

    async def _covered_baseline(self, tests: TestAgent, tree: Path, scratch: Path) -> TestResults:
        """The baseline run in a throwaway copy; unless ``--full-tests``, under coverage with per-test contexts."""
        from pyagent.agents.typetrace import read_trace
        from pyagent.pipeline.workspace import isolated_copy, project_files

        if self.opts.full_tests and self.types is None:
            return await self._tests(tests, tree, scratch)
        ws = await asyncio.to_thread(isolated_copy, tree, parent=scratch)
        try:
            with tempfile.TemporaryDirectory(prefix="pyagent-types-", dir=scratch) as tmp:
                out = Path(tmp) / "types.json" if self.types is not None else None
                files = None if self.opts.full_tests else await asyncio.to_thread(project_files, ws)
                results = await self._run_test_task(tests, ws, impact_files=files, trace_out=out)
                if out is not None and self.types is not None:
                    traced = read_trace(out, ws)
                    self.types = dataclasses.replace(
                        self.types,
                        traced={p: {q: f.to_params() for q, f in fns.items()} for p, fns in traced.items()},
                    )
            return results
        finally:
            await asyncio.to_thread(shutil.rmtree, ws, True)

    def _types_request(self, tree: Path) -> TypesRequest | None:
        """The types agent's request when the project type-checks or opted in (``agents`` names it)."""
        from pyagent.agents.typehints import min_python, type_checker
        from pyagent.pipeline.planner import TypesRequest

        checker = type_checker(tree)
        named = self.agent_filter is not None and "types" in self.agent_filter
        if self.agent_filter is not None and not named:
            return None
        if checker is None and not named:
            self.notes.append(
                "types: the project configures no type checker (mypy, pyright), so no annotations were added "
                "(--agents types, or \"types\" in [tool.pyagent] agents, opts in)"
            )
            return None
        self.settings["types"] = (
            f"annotations checked by {checker} (no new errors) and the tests" if checker
            else "annotations opted in; no type checker configured, so the tests alone check them"
        )
        return TypesRequest(checker, {}, min_python(tree))

    async def _baseline(
        self, tree: Path, scratch: Path
    ) -> tuple[TestAgent | None, TestResults | None, PipelineSettings, TestImpact | None]:
        """The project's declared test command, its baseline and the run's pipeline settings.

        Refuses a baseline of 0 or 1 test unless allowed.
        """
        from pyagent.improve.test_command import TestCommandError, choose_test_command
        from pyagent.pipeline.builder import make_test_agent

        try:
            chosen = choose_test_command(tree, self.test_cmd, self.configured_test_cmd)
        except TestCommandError as exc:
            raise ImproveError(str(exc)) from exc
        self.settings["tests"] = chosen.describe()
        self.progress("phase", phase="tests", detail=chosen.describe())
        command = chosen.command
        settings = self._pipeline_settings(shlex.join(command.argv) if command is not None else None)
        if command is None:
            if not self.allow_few_tests:
                raise ImproveError(
                    f"{self.path} has no tests we can run ({chosen.source}), so no change could be checked "
                    "against them: pass --test-cmd CMD, or --allow-few-tests to gate on lint and parsing only"
                )
            self.notes.append("no tests found: changes were verified by parsing, lint and metrics only")
            return None, None, settings, None
        tests = make_test_agent(tree, settings, self.shell)
        if self.resumed is not None and isinstance(self.resumed.data.get("baseline"), dict):
            from pyagent.agents.test_results import TestResults

            self.notes.append("resumed: the remaining changes are verified by the full suite")
            return tests, TestResults.from_dict(self.resumed.data["baseline"]), settings, None
        self.progress("phase", phase="baseline", detail=shlex.join(command.argv))
        assert tests is not None
        baseline = await self._covered_baseline(tests, tree, scratch)
        impact = baseline.impact
        self._refuse_weak_baseline(baseline, chosen.describe())
        self._note_baseline(baseline, impact)
        return tests, baseline, settings, impact

    def _pipeline_settings(self, test_cmd: str | None) -> PipelineSettings:
        """What every gate of the run uses, here and on peers."""
        from pyagent.pipeline.settings import PipelineSettings

        return PipelineSettings(
            test_cmd=test_cmd,
            test_timeout=self.opts.test_timeout,
            test_env=dict(self.opts.test_env),
            max_complexity=self.max_complexity,
            lint_args=self.rules.args,
        )

    def _refuse_weak_baseline(self, baseline: TestResults, described: str) -> None:
        """A baseline that timed out, passed nothing, or ran 0 or 1 test cannot judge a change."""
        opts = self.opts
        if baseline.timed_out:
            raise ImproveError(f"the test baseline timed out after {opts.test_timeout:.0f}s; pass --test-cmd")
        if baseline.passed == 0 and len(baseline.outcomes) > 1 and not self.allow_few_tests:
            raise ImproveError(
                f"none of the {len(baseline.outcomes)} tests of {described} passed before any change "
                f"(e.g. {sorted(baseline.outcomes)[0]}), so no change could be judged by them: make the suite "
                "pass here (is the project installed?) or pass --test-cmd"
            )
        if len(baseline.outcomes) <= 1 and not self.allow_few_tests:
            tail = baseline.output_tail.strip().splitlines()[-3:]
            raise ImproveError(
                f"the baseline of {described} ran {len(baseline.outcomes)} test(s) (exit "
                f"{baseline.exit_code}{': ' + ' / '.join(tail) if tail else ''}); a change cannot be judged by so "
                "few: pass --test-cmd with the command that runs the suite, or --allow-few-tests"
            )

    def _note_baseline(self, baseline: TestResults, impact: TestImpact | None) -> None:
        """What the report says about the baseline: its note, its sandbox, the test-impact map."""
        if baseline.note:
            self.notes.append(f"test baseline: {baseline.note}")
        if baseline.sandbox:
            refused = "; ".join(baseline.sandbox[1:])
            self.notes.append(f"test baseline ran under {baseline.sandbox[0]}"
                              + (f"; the sandbox refused: {refused}" if refused else "; it refused nothing the tests printed"))
        if impact is not None:
            self.notes.append(
                f"test-impact selection: {len(impact.by_file)} files mapped to the test files that run them; "
                f"{len(impact.uncovered)} test file(s) without coverage data run for every change "
                "(--full-tests runs the whole suite instead)"
            )
        elif not self.opts.full_tests:
            self.notes.append("no test-impact data (the test command cannot run under coverage): full suite per change")
