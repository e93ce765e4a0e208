"""File changes only through ``StateTransaction``; agent state checkpoints so work survives preemption and crashes."""

from __future__ import annotations

import contextlib
import os
import re
import time
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson

if TYPE_CHECKING:
    from pyagent.state.transaction import CommitResult, StateTransaction

_KEY = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


class CheckpointError(ValueError):
    """A checkpoint file exists but cannot be used; it is left in place for inspection."""


def _atomic_write(path: Path, data: bytes) -> None:
    """Checkpoints are private to the agent's user (0o600); imported lazily to keep agent imports light."""
    from pyagent.state.fsutil import atomic_write

    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, data, mode=0o600)


class PersistenceMixin:
    """Transactional file changes plus JSON checkpoints under ``ROOT/.pyagent/agents/NAME/``.

    Subclasses override ``state_dict``/``load_state``; call ``save_checkpoint(key)`` at safe
    points and ``restore_checkpoint(key)`` on start, so a resumed or restarted agent skips
    the work it already did.
    """

    root: Path
    name: str
    version: str

    def authorize_path(self, path: str | os.PathLike[str], *, write: bool = False) -> str:
        """Overridden by ``GovernanceMixin``; alone, any relative path is accepted."""
        return os.fspath(path)

    # -- files ----------------------------------------------------------------------------------

    def transaction(self) -> StateTransaction:
        """A new ``StateTransaction`` on the agent's workspace (imported lazily to keep agent imports light)."""
        from pyagent.state.transaction import StateTransaction

        return StateTransaction(self.root)

    def apply_changes(
        self, changes: Mapping[str, bytes | None], *, base_hashes: Mapping[str, str] | None = None
    ) -> CommitResult:
        """Write (bytes) or delete (``None``) files as ONE transaction; every path is authorised first.

        ``base_hashes`` (blake3 hex of the content a change was computed from) makes the commit
        fail with a conflict if a file changed meanwhile. Returns the ``CommitResult``; on any
        error nothing is changed.
        """
        for path in changes:
            self.authorize_path(path, write=True)
        bases = base_hashes or {}
        with self.transaction() as tx:
            for path, data in changes.items():
                if data is None:
                    tx.delete(path)
                elif path in bases:
                    tx.write_bytes(path, data, base_hash=bases[path])
                elif tx.exists(path):
                    tx.write_bytes(path, data)
                else:
                    tx.create(path, data)
            return tx.commit()

    # -- checkpoints ----------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """The agent's resumable state (JSON-able). Override."""
        return {}

    def load_state(self, state: dict[str, Any]) -> None:
        """Take back what ``state_dict`` returned. Override."""

    def checkpoint_dir(self) -> Path:
        return Path(self.root) / ".pyagent" / "agents" / self.name

    def _checkpoint_path(self, key: str) -> Path:
        if not isinstance(key, str) or not _KEY.match(key):
            raise ValueError(f"checkpoint key must be 1-128 characters of [A-Za-z0-9._-], got {key!r}")
        return self.checkpoint_dir() / f"{key}.json"

    def save_checkpoint(self, key: str) -> Path:
        """Persist ``state_dict()`` atomically; returns the file written."""
        path = self._checkpoint_path(key)
        record = {"agent": self.name, "version": self.version, "key": key, "saved": time.time(), "state": self.state_dict()}
        try:
            data = orjson.dumps(record, option=orjson.OPT_INDENT_2)
        except TypeError as exc:
            raise CheckpointError(f"{self.name}: state_dict() is not JSON-able: {exc}") from None
        _atomic_write(path, data)
        return path

    def restore_checkpoint(self, key: str) -> bool:
        """Load the checkpoint for ``key`` if there is one; ``False`` when there is none."""
        path = self._checkpoint_path(key)
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            return False
        try:
            record = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise CheckpointError(f"checkpoint {path} is not valid JSON ({exc}); remove it to start over") from None
        if not isinstance(record, dict) or not isinstance(record.get("state"), dict):
            raise CheckpointError(f"checkpoint {path} has no 'state' object; remove it to start over")
        if record.get("agent") != self.name:
            raise CheckpointError(f"checkpoint {path} belongs to agent {record.get('agent')!r}, not {self.name!r}")
        self.load_state(record["state"])
        return True

    def discard_checkpoint(self, key: str) -> None:
        """Forget a checkpoint once its work is finished."""
        with contextlib.suppress(FileNotFoundError):
            self._checkpoint_path(key).unlink()

    def checkpoints(self) -> list[str]:
        d = self.checkpoint_dir()
        return sorted(p.stem for p in d.glob("*.json")) if d.is_dir() else []
