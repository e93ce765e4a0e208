"""Delegation through the fleet (every hop passes ``next_level()``) and tool calls."""

from __future__ import annotations

import inspect
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pyagent.model.context import SecurityScope
from pyagent.model.priority import AgentPriority

if TYPE_CHECKING:
    from pyagent.fleet.core import TaskControl, TaskFn, TaskHandle
    from pyagent.model.context import CascadeContext
    from pyagent.shell import SecureShell, ShellResult


class UnknownToolError(KeyError):
    """A tool name the agent has not registered."""

    def __str__(self) -> str:
        return str(self.args[0])


class OrchestrationMixin:
    """Tools the agent may call (each call is one budget step and one event) and delegation."""

    name: str
    root: Path
    _tools: dict[str, Callable[..., Any]] | None = None

    def register_tool(self, name: str, fn: Callable[..., Any]) -> None:
        if not isinstance(name, str) or not name:
            raise ValueError("tool name must be a non-empty string")
        if not callable(fn):
            raise TypeError(f"tool {name!r} must be callable")
        if self._tools is None:
            self._tools = {}
        self._tools[name] = fn

    @property
    def tools(self) -> tuple[str, ...]:
        return tuple(sorted(self._tools or ()))

    def authorize_tool(self, name: str, control: TaskControl) -> None:
        """Hook for governance of tool use; allowed by default."""

    async def call_tool(self, control: TaskControl, tool: str, /, *args: Any, **kwargs: Any) -> Any:
        """Run a registered tool (sync or async): charges one step, emits one event."""
        fn = (self._tools or {}).get(tool)
        if fn is None:
            raise UnknownToolError(f"{self.name}: no tool named {tool!r} (registered: {', '.join(self.tools) or 'none'})")
        self.authorize_tool(tool, control)
        control.context.budget.charge(steps=1)
        started = time.monotonic()
        try:
            result = fn(*args, **kwargs)
            if inspect.isawaitable(result):
                result = await result
        except Exception as exc:
            control.emit(f"tool:{tool}", outcome="error", duration=time.monotonic() - started, detail=str(exc))
            raise
        control.emit(f"tool:{tool}", outcome="ok", duration=time.monotonic() - started)
        return result

    def authorize_command(self, argv: Sequence[str], *, context: CascadeContext | None = None) -> None:
        """Overridden by ``GovernanceMixin``; alone, any command is allowed."""

    async def run_command(
        self,
        control: TaskControl,
        argv: Sequence[str],
        *,
        cwd: str | os.PathLike[str] | None = None,
        timeout: float | None = None,
        shell: SecureShell | None = None,
        on_line: Callable[[str, str], None] | None = None,
    ) -> ShellResult:
        """Run a program through ``SecureShell`` (no shell, allow-listed environment, limits) in the
        workspace, after governance allowed it; one budget step, one event."""
        from pyagent.shell import SecureShell

        self.authorize_command(argv, context=control.context)
        control.context.budget.charge(steps=1)
        runner = shell if shell is not None else SecureShell()
        result = await runner.run(list(argv), cwd=self.root if cwd is None else cwd, timeout=timeout, on_line=on_line)
        outcome = "ok" if result.exit_code == 0 else ("timed_out" if result.timed_out else "error")
        control.emit(
            f"command:{Path(argv[0]).name}",
            outcome=outcome,
            duration=result.duration,
            detail={"argv": list(argv), "exit_code": result.exit_code},
        )
        return result

    def delegate(
        self,
        control: TaskControl,
        agent: str,
        action: str,
        fn: TaskFn[Any],
        *,
        priority: AgentPriority | None = None,
        timeout: float | None = None,
        scope: SecurityScope | None = None,
    ) -> TaskHandle[Any]:
        """Hand ``action`` to ``agent`` as a child task; chain limits are checked before it is queued."""
        return control.spawn(agent, action, fn, priority=priority, timeout=timeout, scope=scope)

    async def delegate_and_wait(
        self,
        control: TaskControl,
        agent: str,
        action: str,
        fn: TaskFn[Any],
        *,
        priority: AgentPriority | None = None,
        timeout: float | None = None,
        scope: SecurityScope | None = None,
    ) -> Any:
        """Delegate and wait for the child's result, giving the slot back while waiting."""
        handle = self.delegate(control, agent, action, fn, priority=priority, timeout=timeout, scope=scope)
        return await control.wait(handle)
