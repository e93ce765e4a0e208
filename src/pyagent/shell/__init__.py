"""Sandboxed command execution for agents: SecureShell (see :mod:`pyagent.shell.secure`) and its
confinement (:mod:`pyagent.shell.confine`)."""

from __future__ import annotations

from pyagent.shell.confine import Confinement, Protection, SandboxUnavailableError
from pyagent.shell.limits import ResourceLimits
from pyagent.shell.secure import (
    CommandNotFoundError,
    CommandWatch,
    RunningCommand,
    SecureShell,
    ShellResult,
    ShellStream,
    filtered_env,
)

__all__ = [
    "CommandNotFoundError",
    "CommandWatch",
    "Confinement",
    "Protection",
    "ResourceLimits",
    "RunningCommand",
    "SandboxUnavailableError",
    "SecureShell",
    "ShellResult",
    "ShellStream",
    "filtered_env",
]
