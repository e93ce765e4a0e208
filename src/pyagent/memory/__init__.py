"""The swarm's memory: a knowledge store with synaptic decay and verified binary snapshots.

- :class:`~pyagent.memory.store.KnowledgeStore`: facts, relations and semantic texts in SQLite.
- :class:`~pyagent.memory.pruning.NeuralPruningEngine`: decay and pruning of weights per cycle.
- :mod:`pyagent.memory.snapshot`: blake3-verified msgpack shard snapshots and restore.
- :class:`~pyagent.memory.fleet_memory.StoreKnowledge`: the fleet's ``KnowledgeBackend`` on top.
"""

from __future__ import annotations

from pyagent.memory.errors import SnapshotError, StoreError
from pyagent.memory.pruning import NeuralPruningEngine, PruningParams
from pyagent.memory.snapshot import SnapshotInfo, SnapshotPolicy
from pyagent.memory.store import Edge, Fact, Hit, KnowledgeStore

__all__ = [
    "Edge",
    "Fact",
    "Hit",
    "KnowledgeStore",
    "NeuralPruningEngine",
    "PruningParams",
    "SnapshotError",
    "SnapshotInfo",
    "SnapshotPolicy",
    "StoreError",
]
