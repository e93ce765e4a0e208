"""What an agent may touch and run, budget checks, and cooperative suspend/resume."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Sequence
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING

from pyagent.model.context import CascadeContext, SecurityScope

if TYPE_CHECKING:
    from pyagent.fleet.core import TaskControl

# Our own bookkeeping and the VCS database are never an agent's to edit.
PROTECTED_DIRS = (".pyagent", ".git", ".hg", ".svn")


class GovernanceError(PermissionError):
    """An agent tried to touch a path or run a command outside its scope."""


class GovernanceMixin:
    """Enforces the agent's own limits intersected with the chain's ``SecurityScope``."""

    root: Path
    name: str
    allowed_paths: tuple[str, ...] | None = None
    allowed_commands: tuple[str, ...] | None = None
    _suspended: bool = False
    _resume_event: asyncio.Event | None = None

    def scope_for(self, context: CascadeContext | None = None) -> SecurityScope:
        own = SecurityScope(paths=self.allowed_paths, commands=self.allowed_commands)
        return own if context is None else context.scope.narrow(own)

    def authorize_path(self, path: str | os.PathLike[str], *, write: bool = False, context: CascadeContext | None = None) -> str:
        """The path relative to the workspace (POSIX) if this agent may touch it; else ``GovernanceError``."""
        raw = os.fspath(path)
        if not raw or "\x00" in raw:
            raise GovernanceError(f"{self.name}: invalid path {raw!r}")
        root = Path(self.root).resolve()
        candidate = Path(raw) if os.path.isabs(raw) else root / raw
        resolved = candidate.resolve()  # follows symlinks: a link pointing outside is outside
        try:
            rel = resolved.relative_to(root)
        except ValueError:
            raise GovernanceError(f"{self.name}: {raw!r} is outside the workspace {root}") from None
        rel_posix = PurePosixPath(*rel.parts).as_posix() if rel.parts else "."
        if write and rel.parts and rel.parts[0] in PROTECTED_DIRS:
            raise GovernanceError(f"{self.name}: {rel_posix!r} is inside {rel.parts[0]}/, which agents never modify")
        scope = self.scope_for(context)
        if not scope.allows_path(rel_posix):
            raise GovernanceError(f"{self.name}: {rel_posix!r} is not under the allowed paths {list(scope.paths or [])}")
        if write and not scope.write:
            raise GovernanceError(f"{self.name}: this chain's scope is read-only; cannot write {rel_posix!r}")
        return rel_posix

    def authorize_command(self, argv: Sequence[str], *, context: CascadeContext | None = None) -> None:
        """Raise ``GovernanceError`` unless the program ``argv[0]`` is allowed."""
        if isinstance(argv, str) or not argv or not all(isinstance(a, str) for a in argv):
            raise GovernanceError(f"{self.name}: a command must be a non-empty list of strings, got {argv!r}")
        scope = self.scope_for(context)
        if not scope.allows_command(argv[0]):
            raise GovernanceError(
                f"{self.name}: command {argv[0]!r} is not allowed (allowed: {list(scope.commands or [])})"
            )

    def check_budget(self, context: CascadeContext) -> None:
        """Raise the matching ``CascadeLimitError`` if the chain must stop (budget, circuit)."""
        context.check()

    @property
    def suspended(self) -> bool:
        return self._suspended

    def suspend(self) -> None:
        """Ask the agent to pause at its next ``checkpoint()``."""
        self._suspended = True
        if self._resume_event is not None:
            self._resume_event.clear()

    def resume(self) -> None:
        self._suspended = False
        if self._resume_event is not None:
            self._resume_event.set()

    async def checkpoint(self, control: TaskControl | None = None) -> None:
        """A safe point: waits while suspended, then honours fleet preemption and the budget."""
        while self._suspended:
            if self._resume_event is None:
                self._resume_event = asyncio.Event()
            await self._resume_event.wait()
        if control is not None:
            await control.checkpoint()
        else:
            await asyncio.sleep(0)
