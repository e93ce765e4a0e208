"""The one authorization: what a task's chain lets an agent change and run.

It is checked twice for every change, by the same code: before the agent runs (``LocalExecutor``,
here and on every Voyager peer) and again before its change set is merged into the run's tree
(``improve``), so a change set that arrives from a peer is held to the same rules as a local one.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pyagent.model.context import SecurityScope
    from pyagent.model.task import AgentTask

# Our own bookkeeping and the VCS database are never an agent's to edit.
PROTECTED_DIRS = (".pyagent", ".git", ".hg", ".svn")


class GovernanceError(PermissionError):
    """An agent tried to touch a path or run a command outside its task's scope."""


class GovernanceMixin:
    """``authorize`` before an agent runs a task, ``authorize_change`` before its change is merged."""

    name: str
    commands: tuple[str, ...] = ()  # the programs the agent runs; each must be allowed by the scope

    def authorize_path(self, path: str, *, root: str | os.PathLike[str], scope: SecurityScope) -> str:
        """``path`` as a POSIX path relative to ``root`` if the agent may write it; else ``GovernanceError``.

        Symlinks are followed: a link that points outside ``root`` or into a protected folder is refused.
        """
        if not isinstance(path, str) or not path or "\x00" in path:
            raise GovernanceError(f"{self.name}: invalid path {path!r}")
        lexical = PurePosixPath(path.replace("\\", "/"))
        if lexical.is_absolute() or ".." in lexical.parts:
            raise GovernanceError(f"{self.name}: {path!r} is not a path inside the project")
        base = Path(root).resolve()
        try:
            rel = (base / lexical).resolve().relative_to(base)
        except ValueError:
            raise GovernanceError(f"{self.name}: {path!r} leads outside the project {base}") from None
        rel_posix = PurePosixPath(*rel.parts).as_posix() if rel.parts else "."
        for parts in (lexical.parts, rel.parts):
            if parts and parts[0] in PROTECTED_DIRS:
                raise GovernanceError(f"{self.name}: {path!r} is inside {parts[0]}/, which agents never modify")
        if not scope.allows_path(rel_posix):
            raise GovernanceError(f"{self.name}: {rel_posix!r} is not under the allowed paths {list(scope.paths or [])}")
        return rel_posix

    def authorize(self, task: AgentTask, root: str | os.PathLike[str]) -> None:
        """Raise ``GovernanceError`` unless this agent may do ``task`` on the tree at ``root``."""
        scope = task.context.scope
        if not scope.write:
            raise GovernanceError(f"{self.name}: the chain of task {task.id} is read-only")
        for path in task.files:
            self.authorize_path(path, root=root, scope=scope)
        for program in self.commands:
            if not scope.allows_command(program):
                raise GovernanceError(
                    f"{self.name} needs {program!r}, which this chain does not allow "
                    f"(allowed: {list(scope.commands or [])})"
                )

    def authorize_change(self, task: AgentTask, paths: Iterable[str], root: str | os.PathLike[str]) -> None:
        """Raise ``GovernanceError`` unless a change set for ``task`` may write ``paths`` into ``root``."""
        self.authorize(task, root)
        allowed = set(task.files)
        for path in paths:
            self.authorize_path(path, root=root, scope=task.context.scope)
            if path not in allowed:
                raise GovernanceError(f"{self.name}: the change touches {path!r}, which is not one of the task's files")
