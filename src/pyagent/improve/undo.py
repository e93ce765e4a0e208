"""Undo for runs that changed a project in place (no git): the originals are kept per run.

``PATH/.pyagent/runs/<run-id>/`` holds ``manifest.json`` (each changed file's original and final
hash) and the original bytes; ``PATH/.pyagent/runs/LAST`` names the last run. Undo restores every
file in one ``StateTransaction`` and refuses, losing nothing, when a file changed since the run.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import orjson

from pyagent.model.task import content_hash
from pyagent.state.fsutil import atomic_write

__all__ = ["UndoError", "UndoResult", "save_run", "undo_last_run"]


class UndoError(Exception):
    """Nothing to undo, or undoing would overwrite edits made after the run."""


@dataclass(frozen=True)
class UndoResult:
    run_id: str
    restored: tuple[str, ...]


def _runs(root: Path) -> Path:
    return root / ".pyagent" / "runs"


def _atomic_write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, data)


def save_run(root: str | os.PathLike[str], run_id: str, originals: dict[str, bytes | None]) -> None:
    """Record what undo needs for the run that just changed ``originals``' files (nothing if none)."""
    if not originals:
        return
    root = Path(root)
    run_dir = _runs(root) / run_id
    files = {}
    for i, (path, data) in enumerate(sorted(originals.items())):
        now = root / path
        final = content_hash(now.read_bytes()) if now.is_file() else None
        entry = {
            "existed": data is not None,
            "original_hash": content_hash(data) if data is not None else None,
            "final_hash": final,
            "blob": f"{i:05d}.orig",
        }
        if data is not None:
            _atomic_write(run_dir / "originals" / entry["blob"], data)  # type: ignore[operator]
        files[path] = entry
    _atomic_write(
        run_dir / "manifest.json",
        orjson.dumps({"run_id": run_id, "files": files}, option=orjson.OPT_INDENT_2),
    )
    _atomic_write(_runs(root) / "LAST", run_id.encode())


def undo_last_run(root: str | os.PathLike[str], *, force: bool = False) -> UndoResult:
    from pyagent.state import StateTransaction

    root = Path(root)
    if not root.is_dir():
        raise UndoError(f"{root} is not a directory")
    last = _runs(root) / "LAST"
    if not last.is_file():
        raise UndoError(
            f"no run to undo in {root} (runs in a git repository live on their pyagent/<run-id> branch)"
        )
    run_id = last.read_text().strip()
    run_dir = _runs(root) / run_id
    try:
        manifest = orjson.loads((run_dir / "manifest.json").read_bytes())
    except (OSError, orjson.JSONDecodeError) as exc:
        raise UndoError(f"the record of run {run_id} is unreadable: {exc}") from exc
    files: dict[str, dict[str, object]] = manifest["files"]
    changed = []
    for path, entry in files.items():
        now = root / path
        current = content_hash(now.read_bytes()) if now.is_file() else None
        if current != entry["final_hash"]:
            changed.append(path)
    if changed and not force:
        raise UndoError(
            "these files changed after run "
            + run_id
            + ": "
            + ", ".join(sorted(changed))
            + "; nothing was undone (use --force to restore them anyway)"
        )
    with StateTransaction(root) as tx:
        for path, entry in files.items():
            if entry["existed"]:
                tx.write_bytes(path, (run_dir / "originals" / str(entry["blob"])).read_bytes())
            elif tx.exists(path):
                tx.delete(path)
    last.unlink()
    (run_dir / "UNDONE").write_text("undone\n")
    return UndoResult(run_id, tuple(sorted(files)))
