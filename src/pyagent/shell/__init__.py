"""Sandboxed command execution for agents: SecureShell (see :mod:`pyagent.shell.secure`)."""

from __future__ import annotations

from pyagent.shell.limits import ResourceLimits
from pyagent.shell.secure import CommandNotFoundError, SecureShell, ShellResult, ShellStream, filtered_env

__all__ = ["CommandNotFoundError", "ResourceLimits", "SecureShell", "ShellResult", "ShellStream", "filtered_env"]
