"""BaseAgent and its mixins: identity, governance, checkpoints that survive crashes, knowledge, tools."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

import pytest

from pyagent.agents.base import BaseAgent
from pyagent.agents.mixins import (
    CheckpointError,
    GovernanceError,
    GovernanceMixin,
    IdentityMixin,
    KnowledgeMixin,
    OrchestrationMixin,
    PersistenceMixin,
    UnknownToolError,
)
from pyagent.fleet.core import FleetManager, TaskControl
from pyagent.fleet.events import FleetEvent
from pyagent.model.budget import Budget
from pyagent.model.context import BudgetExceeded, CascadeContext, LoopDetected, SecurityScope
from pyagent.model.knowledge import ChangeOutcome, InMemoryKnowledge, KnowledgeBackend
from pyagent.model.priority import AgentPriority

pytestmark = pytest.mark.timeout(60)


class Crash(Exception):
    pass


class CountingAgent(BaseAgent):
    """Processes items one by one, checkpointing after each; can be told to crash midway."""

    name = "counter"
    version = "1.2"
    capabilities = frozenset({"count"})

    def __init__(self, root: Path, crash_at: int | None = None) -> None:
        super().__init__(root=root)
        self.done: list[int] = []
        self.crash_at = crash_at
        self.processed_now: list[int] = []

    def state_dict(self) -> dict[str, Any]:
        return {"done": self.done}

    def load_state(self, state: dict[str, Any]) -> None:
        self.done = list(state["done"])

    async def run(self, control: TaskControl, payload: Any) -> list[int]:
        key = control.context.root_task_id
        self.restore_checkpoint(key)
        for item in payload:
            if item in self.done:
                continue
            if item == self.crash_at:
                raise Crash(f"crashed at {item}")
            self.processed_now.append(item)
            self.done.append(item)
            self.save_checkpoint(key)
            await self.checkpoint(control)
        self.discard_checkpoint(key)
        return self.done


def test_base_agent_composes_all_mixins() -> None:
    for mixin in (IdentityMixin, PersistenceMixin, KnowledgeMixin, OrchestrationMixin, GovernanceMixin):
        assert issubclass(BaseAgent, mixin)
    agent = CountingAgent(Path("."))
    assert agent.identity() == {"name": "counter", "version": "1.2", "capabilities": ["count"], "priority": "STANDARD"}
    assert agent.agent_id == "counter@1.2" and agent.can("count") and not agent.can("fly")
    assert isinstance(agent.knowledge, KnowledgeBackend)


def test_crashed_work_resumes_from_checkpoint(tmp_path: Path) -> None:
    ctx = CascadeContext.root("counter", task_id="job-1")

    async def main() -> None:
        async with FleetManager(1) as fleet:
            first = CountingAgent(tmp_path, crash_at=3)
            with pytest.raises(Crash):
                await first.submit_to(fleet, [1, 2, 3, 4], context=ctx).result()
            assert first.checkpoints() == ["job-1"]
            second = CountingAgent(tmp_path)  # a fresh process would start like this
            ctx2 = CascadeContext.root("counter", task_id="job-1")
            assert await second.submit_to(fleet, [1, 2, 3, 4], context=ctx2).result() == [1, 2, 3, 4]
            assert second.processed_now == [3, 4]  # 1 and 2 were not done twice
            assert second.checkpoints() == []  # finished work forgets its checkpoint

    asyncio.run(main())
    assert (tmp_path / ".pyagent" / "agents" / "counter").is_dir()


def test_preempted_agent_resumes_where_it_was(tmp_path: Path) -> None:
    async def main() -> None:
        events: list[FleetEvent] = []
        agent = CountingAgent(tmp_path)
        agent.priority = AgentPriority.LOW
        async with FleetManager(1, on_event=events.append) as fleet:
            h = agent.submit_to(fleet, list(range(10)))
            await asyncio.sleep(0)
            await asyncio.sleep(0)

            async def urgent(c: TaskControl) -> str:
                return "urgent"

            assert await fleet.submit("urgent", urgent, priority=AgentPriority.CRITICAL).result() == "urgent"
            assert await h.result() == list(range(10))
        assert agent.processed_now == list(range(10)) and h.suspensions == 1
        assert [e.kind for e in events if e.agent == "counter"].count("resumed") == 1

    asyncio.run(main())


@pytest.mark.parametrize(
    ("content", "match"),
    [(b"{not json", "not valid JSON"), (b'{"agent": "counter"}', "no 'state' object"), (b'{"agent": "other", "state": {}}', "belongs to agent 'other'")],
)
def test_bad_checkpoint_is_a_clear_error_and_is_kept(tmp_path: Path, content: bytes, match: str) -> None:
    agent = CountingAgent(tmp_path)
    path = agent.checkpoint_dir() / "k.json"
    path.parent.mkdir(parents=True)
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match=match):
        agent.restore_checkpoint("k")
    assert path.read_bytes() == content


@pytest.mark.parametrize("key", ["", "../escape", "a/b", "x" * 200])
def test_checkpoint_keys_are_validated(tmp_path: Path, key: str) -> None:
    with pytest.raises(ValueError, match="checkpoint key"):
        CountingAgent(tmp_path).save_checkpoint(key)


def test_unserialisable_state_is_a_clear_error(tmp_path: Path) -> None:
    agent = CountingAgent(tmp_path)
    agent.done = [object()]  # type: ignore[list-item]
    with pytest.raises(CheckpointError, match="not JSON-able"):
        agent.save_checkpoint("k")
    assert agent.checkpoints() == []


def test_governance_paths(tmp_path: Path) -> None:
    (tmp_path / "src").mkdir()
    (tmp_path / "docs").mkdir()
    outside = tmp_path.parent / f"{tmp_path.name}-outside"
    outside.mkdir()
    os.symlink(outside, tmp_path / "src" / "link")
    agent = BaseAgent(root=tmp_path, allowed_paths=["src"])
    assert agent.authorize_path("src/a.py", write=True) == "src/a.py"
    assert agent.authorize_path(tmp_path / "src" / "b.py") == "src/b.py"
    for bad, match in [
        ("docs/x.md", "not under the allowed paths"),
        ("../etc/passwd", "outside the workspace"),
        ("/etc/passwd", "outside the workspace"),
        ("src/link/x.py", "outside the workspace"),
        ("", "invalid path"),
    ]:
        with pytest.raises(GovernanceError, match=match):
            agent.authorize_path(bad, write=True)
    free = BaseAgent(root=tmp_path)
    with pytest.raises(GovernanceError, match=r"inside \.pyagent/"):
        free.authorize_path(".pyagent/journal", write=True)
    with pytest.raises(GovernanceError, match=r"inside \.git/"):
        free.authorize_path(".git/config", write=True)
    assert free.authorize_path(".git/config") == ".git/config"  # reading is fine
    ro = CascadeContext.root("a", scope=SecurityScope(paths=("docs",), write=False))
    with pytest.raises(GovernanceError, match="read-only"):
        free.authorize_path("docs/x.md", write=True, context=ro)
    with pytest.raises(GovernanceError, match="not under the allowed paths"):
        free.authorize_path("src/x.py", context=ro)


def test_governance_commands() -> None:
    agent = BaseAgent(allowed_commands=["ruff", "pytest"])
    agent.authorize_command(["ruff", "check", "."])
    agent.authorize_command(["/usr/bin/pytest", "-q"])
    for argv, match in [(["rm", "-rf", "/"], "'rm' is not allowed"), ([], "non-empty list"), ("ruff check", "non-empty list")]:
        with pytest.raises(GovernanceError, match=match):
            agent.authorize_command(argv)  # type: ignore[arg-type]
    ctx = CascadeContext.root("a", scope=SecurityScope(commands=("pytest",)))
    with pytest.raises(GovernanceError, match="'ruff' is not allowed"):
        agent.authorize_command(["ruff"], context=ctx)


def test_cooperative_suspend_and_resume() -> None:
    async def main() -> None:
        agent = BaseAgent()
        progress: list[int] = []

        async def loop() -> None:
            for i in range(5):
                progress.append(i)
                await agent.checkpoint()

        agent.suspend()
        assert agent.suspended
        task = asyncio.create_task(loop())
        for _ in range(5):
            await asyncio.sleep(0)
        assert progress == [0]  # stopped at its first checkpoint
        agent.resume()
        await asyncio.wait_for(task, 5)
        assert progress == [0, 1, 2, 3, 4]

    asyncio.run(main())


def test_budget_check_through_governance() -> None:
    agent = BaseAgent()
    ctx = CascadeContext.root("a", budget=Budget(steps=1))
    agent.check_budget(ctx)
    with pytest.raises(BudgetExceeded):
        ctx.budget.charge(steps=2)
    with pytest.raises(BudgetExceeded, match="step budget exhausted"):
        agent.check_budget(ctx)


def test_knowledge_mixin_remembers_failures() -> None:
    knowledge = InMemoryKnowledge()
    agent = BaseAgent(knowledge=knowledge, name="refactor")
    ctx = CascadeContext.root("refactor")
    assert agent.known_failure("simplify", "a.py", "h1") is None
    out = agent.record_outcome(action="simplify", task_kind="complexity", target="a.py", target_hash="h1", status="rolled_back", reason="test_x failed", context=ctx)
    assert out.lineage == (ctx.task_id,)
    assert agent.known_failure("simplify", "a.py", "h1") == "test_x failed"
    assert agent.known_failure("simplify", "a.py", "h2") is None  # the file changed: worth another try
    assert agent.route_weight("complexity") < 1.0
    agent.record_outcome(action="simplify", task_kind="complexity", target="a.py", target_hash="h1", status="kept")
    assert agent.known_failure("simplify", "a.py", "h1") is None
    assert len(knowledge.outcomes) == 2
    with pytest.raises(ValueError, match="outcome status"):
        ChangeOutcome("a", "b", "c", "d", "e", "maybe")  # type: ignore[arg-type]


def test_tools_and_delegation_through_the_fleet() -> None:
    async def main() -> None:
        events: list[FleetEvent] = []
        budget = Budget(steps=3)

        class Planner(BaseAgent):
            name = "planner"

            async def run(self, control: TaskControl, payload: Any) -> Any:
                total = await self.call_tool(control, "add", 2, 3)
                doubled = await self.call_tool(control, "double", total)

                async def child(c: TaskControl) -> tuple[str, ...]:
                    return c.context.lineage_ids()

                lineage = await self.delegate_and_wait(control, "coder", "fix a.py", child)
                with pytest.raises(LoopDetected):
                    self.delegate(control, "planner", "plan", child)
                with pytest.raises(UnknownToolError, match="no tool named 'nope' \\(registered: add, double\\)"):
                    await self.call_tool(control, "nope")
                await self.call_tool(control, "add", 1, 1)  # third step: still within budget
                with pytest.raises(BudgetExceeded, match="step budget exhausted"):
                    await self.call_tool(control, "add", 1, 1)
                return doubled, lineage

        async def double(x: int) -> int:
            await asyncio.sleep(0)
            return 2 * x

        planner = Planner()
        planner.register_tool("add", lambda a, b: a + b)
        planner.register_tool("double", double)
        ctx = CascadeContext.root("planner", action="plan", budget=budget)
        async with FleetManager(1, on_event=events.append) as fleet:
            doubled, lineage = await planner.submit_to(fleet, None, action="plan", context=ctx).result()
        assert doubled == 10
        assert lineage[0] == ctx.task_id and len(lineage) == 2
        tool_events = [(e.action, e.outcome) for e in events if e.kind == "agent"]
        assert tool_events == [("tool:add", "ok"), ("tool:double", "ok"), ("tool:add", "ok")]

    asyncio.run(main())


def test_bad_agent_arguments() -> None:
    with pytest.raises(ValueError, match="agent name"):
        BaseAgent(name="")
    with pytest.raises(ValueError, match="unknown priority"):
        BaseAgent(priority="asap")  # type: ignore[arg-type]
    agent = BaseAgent()
    with pytest.raises(TypeError, match="must be callable"):
        agent.register_tool("x", 3)  # type: ignore[arg-type]

    async def main() -> None:
        async with FleetManager(1) as fleet:
            with pytest.raises(NotImplementedError, match="must implement run"):
                await agent.submit_to(fleet).result()

    asyncio.run(main())


def test_apply_changes_refuses_unauthorised_paths_before_touching_anything(tmp_path: Path) -> None:
    (tmp_path / "src").mkdir()
    agent = BaseAgent(root=tmp_path, allowed_paths=["src"])
    with pytest.raises(GovernanceError, match="not under the allowed paths"):
        agent.apply_changes({"src/ok.py": b"x = 1\n", "setup.py": b"evil\n"})
    assert not (tmp_path / "src" / "ok.py").exists() and not (tmp_path / "setup.py").exists()
    assert not (tmp_path / ".pyagent").exists()  # no transaction was even opened


def test_apply_changes_is_one_real_transaction(tmp_path: Path) -> None:
    from pyagent.state.errors import ConflictError
    from pyagent.state.transaction import hash_bytes

    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "a.py").write_bytes(b"a = 1\n")
    (tmp_path / "pkg" / "old.py").write_bytes(b"old = 1\n")
    agent = BaseAgent(root=tmp_path)
    result = agent.apply_changes({"pkg/a.py": b"a = 2\n", "pkg/new.py": b"n = 1\n", "pkg/old.py": None})
    assert set(result.paths) == {"pkg/a.py", "pkg/new.py", "pkg/old.py"}
    assert (tmp_path / "pkg" / "a.py").read_bytes() == b"a = 2\n"
    assert (tmp_path / "pkg" / "new.py").read_bytes() == b"n = 1\n"
    assert not (tmp_path / "pkg" / "old.py").exists()

    # A change computed from content that has changed since is refused, and nothing else is applied.
    stale = hash_bytes(b"a = 1\n")
    with pytest.raises(ConflictError):
        agent.apply_changes({"pkg/new.py": b"n = 2\n", "pkg/a.py": b"a = 3\n"}, base_hashes={"pkg/a.py": stale})
    assert (tmp_path / "pkg" / "a.py").read_bytes() == b"a = 2\n"
    assert (tmp_path / "pkg" / "new.py").read_bytes() == b"n = 1\n"
    current = hash_bytes(b"a = 2\n")
    agent.apply_changes({"pkg/a.py": b"a = 3\n"}, base_hashes={"pkg/a.py": current})
    assert (tmp_path / "pkg" / "a.py").read_bytes() == b"a = 3\n"


def test_run_command_is_governed_and_sandboxed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-should-never-reach-a-child")
    python = Path(sys.executable).name

    class Runner(BaseAgent):
        name = "runner"

        async def run(self, control: TaskControl, payload: Any) -> Any:
            ok = await self.run_command(
                control, [sys.executable, "-c", "import os; print(os.getcwd()); print(os.environ.get('OPENAI_API_KEY'))"]
            )
            with pytest.raises(GovernanceError, match="'touch' is not allowed"):
                await self.run_command(control, ["touch", "should-not-exist"])
            return ok

    agent = Runner(root=tmp_path, allowed_commands=[python])
    events: list[FleetEvent] = []

    async def main() -> Any:
        async with FleetManager(1, on_event=events.append) as fleet:
            return await agent.submit_to(fleet).result()

    result = asyncio.run(main())
    assert result.exit_code == 0
    cwd, key = result.stdout.splitlines()
    assert Path(cwd).resolve() == tmp_path.resolve() and key == "None"
    assert not (tmp_path / "should-not-exist").exists()
    cmd_events = [(e.action, e.outcome) for e in events if e.kind == "agent"]
    assert cmd_events == [(f"command:{python}", "ok")]
