"""Workspace-wide replace: the Rust core finds and rewrites (in parallel, over the shared walk), this
module turns the result into a preview or ONE StateTransaction. No matching happens in Python."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

import blake3

from pyagent.state.recovery import ensure_recovered, workspace_root
from pyagent.state.transaction import CommitResult, StateTransaction


@dataclass(frozen=True)
class FileReplacement:
    path: str  # POSIX, relative to the plan's root
    matches: int
    original: bytes
    new: bytes
    diff: str | None = None


@dataclass(frozen=True)
class UnreadablePath:
    """An entry the replacement could not look at (the walk's ``Unreadable``, its path relative to the
    plan's root; empty when the error names no path)."""

    path: str
    reason: str


@dataclass(frozen=True)
class ReplacePlan:
    """Every change a replacement would make, plus what it could not look at. Writes nothing."""

    root: str
    changes: tuple[FileReplacement, ...]
    scanned: int
    binary: tuple[str, ...]
    non_utf8: tuple[str, ...]
    errors: tuple[UnreadablePath, ...]

    @property
    def files(self) -> int:
        return len(self.changes)

    @property
    def matches(self) -> int:
        return sum(c.matches for c in self.changes)


def _rel(root: str, path: str) -> str:
    return os.path.relpath(path, root).replace(os.sep, "/")


def plan_replace(path: str | os.PathLike[str], pattern: str, replacement: str, *, literal: bool = False,
                 multiline: bool = False, globs: Sequence[str] = (), excludes: Sequence[str] = (),
                 hidden: bool = False, no_ignore: bool = False, diff: bool = False) -> ReplacePlan:
    """Computes the replacement (Rust). Raises FileNotFoundError for a missing path, ValueError for an
    invalid regex or glob."""
    from pyagent import _rust

    target = os.path.abspath(os.fspath(path))
    if not os.path.exists(target):
        raise FileNotFoundError(f"no such file or directory: {os.fspath(path)}")
    ensure_recovered(target)  # never plan against a half-applied tree
    root = workspace_root(target)
    found = _rust.replace(
        target, pattern, replacement, literal=literal, multiline=multiline, globs=list(globs),
        excludes=list(excludes), hidden=hidden, no_ignore=no_ignore, diff=diff,
    )
    return ReplacePlan(
        root=root,
        changes=tuple(FileReplacement(_rel(root, c.path), c.matches, c.original, c.new, c.diff) for c in found.changes),
        scanned=found.scanned,
        binary=tuple(_rel(root, p) for p in found.binary),
        non_utf8=tuple(_rel(root, p) for p in found.non_utf8),
        errors=tuple(UnreadablePath(_rel(root, e.path) if e.path else "", e.reason) for e in found.errors),
    )


def apply_replace(plan: ReplacePlan, *, lock_timeout: float = 10.0) -> CommitResult:
    """Applies every change of ``plan`` as ONE transaction. A file edited since the plan was made raises
    ConflictError (nothing is written): each change carries the hash of the text it was computed from."""
    with StateTransaction(plan.root, lock_timeout=lock_timeout) as tx:
        for change in plan.changes:
            tx.write_bytes(change.path, change.new, base_hash=blake3.blake3(change.original).hexdigest())
    return tx.last_result
