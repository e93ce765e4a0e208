"""StoreKnowledge: the fleet's ``KnowledgeBackend`` on a persistent KnowledgeStore.

What it remembers, per :class:`~pyagent.model.knowledge.ChangeOutcome`:

- a failed or rolled-back change as a fact in ``pyagent.failures`` keyed by
  (file content hash, agent, action) -> reason, so the planner can skip the same change on the
  same content next time; its text also goes to the semantic index ("seen this error before?");
- the route agent x task kind: reinforced when the change was kept, weakened when it was not;
- an edge ``agent:<name> -<status>-> file:<path>`` (who touched what, and how it went).

A known failure that keeps preventing work is *used* each time it is consulted, so it stays; one
nobody runs into again decays and is pruned after 150 idle cycles (defaults), and any edit to the
file changes its hash, so stale failures never block new content. ``tick()`` is the fleet
execution cycle (one task reaching a final state): decay, pruning, and periodic snapshots.
"""

from __future__ import annotations

import logging
import os
import sqlite3
from pathlib import Path
from typing import TYPE_CHECKING

from pyagent.memory.errors import StoreError
from pyagent.memory.pruning import NeuralPruningEngine
from pyagent.memory.snapshot import SnapshotPolicy
from pyagent.memory.store import Fact, KnowledgeStore
from pyagent.model.status import Status

if TYPE_CHECKING:
    from pyagent.model.knowledge import ChangeOutcome

__all__ = ["FAILURES", "StoreKnowledge", "default_store_path"]

FAILURES = "pyagent.failures"
_SEP = "\x1f"
_log = logging.getLogger(__name__)


def default_store_path(workspace: str | os.PathLike[str] = ".") -> Path:
    """Where a workspace keeps its knowledge: ``WORKSPACE/.pyagent/memory.db``."""
    return Path(os.fspath(workspace)) / ".pyagent" / "memory.db"


def failure_key(target_hash: str, agent: str, action: str) -> str:
    return f"{target_hash}{_SEP}{agent}{_SEP}{action}"


class StoreKnowledge:
    """Implements ``pyagent.model.knowledge.KnowledgeBackend``; thread-safe (the store locks)."""

    def __init__(
        self,
        store: KnowledgeStore,
        pruning: NeuralPruningEngine | None = None,
        *,
        snapshots: SnapshotPolicy | None = None,
        remember_reasons: bool = True,
    ) -> None:
        self.store = store
        self.pruning = pruning if pruning is not None else NeuralPruningEngine(store)
        self.snapshots = snapshots
        self.remember_reasons = remember_reasons
        self.last_error: str | None = None

    @classmethod
    def open(
        cls,
        workspace: str | os.PathLike[str],
        *,
        snapshot_every: int | None = 100,
        snapshot_keep: int = 3,
    ) -> StoreKnowledge:
        """The workspace's store (created on first use) with periodic snapshots next to it."""
        path = default_store_path(workspace)
        store = KnowledgeStore(path)
        ignore = path.parent / ".gitignore"
        if not ignore.exists():
            ignore.write_text("*\n")  # PyAgent's own state: keeps the user's `git status` clean
        policy = None
        if snapshot_every:
            policy = SnapshotPolicy(path.parent / "memory-snapshots", every=snapshot_every, keep=snapshot_keep)
        return cls(store, snapshots=policy)

    def close(self) -> None:
        self.store.close()

    # -- KnowledgeBackend ------------------------------------------------------------------------

    def record_outcome(self, outcome: ChangeOutcome) -> None:
        if outcome.status is Status.SKIPPED:
            return
        if not outcome.target_hash:  # no content identity: a failure could not be matched safely
            self.pruning.record_route(outcome.agent, outcome.task_kind, success=outcome.status is Status.KEPT)
            return
        kept = outcome.status is Status.KEPT
        key = failure_key(outcome.target_hash, outcome.agent, outcome.action)
        reason = outcome.reason or outcome.status
        with self.store.batch():
            self.pruning.record_route(outcome.agent, outcome.task_kind, success=kept)
            self.store.relate(f"agent:{outcome.agent}", outcome.status.value, f"file:{outcome.target}")
            if kept:
                self.store.delete(FAILURES, key)  # this exact change on this content works after all
                return
            previous = self.store.fact(FAILURES, key)
            count = 1 + (int(previous.value.get("count", 0)) if previous is not None else 0)
            value = {
                "reason": reason,
                "status": outcome.status.value,
                "agent": outcome.agent,
                "action": outcome.action,
                "task_kind": outcome.task_kind,
                "target": outcome.target,
                "target_hash": outcome.target_hash,
                "count": count,
            }
            p = self.pruning.params
            weight = p.initial_weight
            if previous is not None:  # seen again: reinforced, like any use that confirms it
                idle = self.store.cycle - previous.last_used_cycle
                weight = min(p.max_weight, self.pruning.decayed(previous.weight, idle) + p.reinforce)
            self.store.put(FAILURES, key, value, weight=weight, provenance=outcome.lineage)
            if self.remember_reasons:
                self.store.remember(FAILURES, key, f"{outcome.action} on {outcome.target}: {reason}")

    def known_failure(self, *, agent: str, action: str, target: str, target_hash: str) -> str | None:
        """The recorded reason this change failed on this exact content (the same content hash)."""
        if not target_hash:
            return None
        key = failure_key(target_hash, agent, action)
        fact = self.store.fact(FAILURES, key)
        if fact is None:
            return None
        if not self.store.readonly:
            self.pruning.use(FAILURES, key)  # it is still saving work: reset its idleness
        return str(fact.value.get("reason", "failed before"))

    def route_weight(self, agent: str, task_kind: str) -> float:
        return self.pruning.route_weight(agent, task_kind)

    def tick(self) -> None:
        """One fleet execution cycle: decay and prune, then a snapshot when one is due.

        Called from the fleet's dispatcher, so a failure here (disk full, a locked file) is logged
        and kept in ``last_error`` instead of breaking the fleet.
        """
        try:
            self.pruning.tick()
            if self.snapshots is not None:
                self.snapshots.on_cycle(self.store)
        except (OSError, sqlite3.Error, StoreError) as exc:
            self.last_error = f"{type(exc).__name__}: {exc}"
            _log.warning("knowledge store tick failed: %s", self.last_error)

    # -- for reports -----------------------------------------------------------------------------

    def failures(self, target: str | None = None) -> list[Fact]:
        """Known failures (of one file path), strongest first."""
        facts = self.store.query(FAILURES)
        if target is not None:
            facts = [f for f in facts if f.value.get("target") == target]
        return sorted(facts, key=lambda f: -f.weight)
