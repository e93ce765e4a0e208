"""The swarm's memory: a knowledge store with synaptic decay and verified binary snapshots.

- :class:`~pyagent.memory.store.KnowledgeStore`: facts, relations and semantic texts in SQLite.
- :class:`~pyagent.memory.pruning.NeuralPruningEngine`: decay and pruning of weights per cycle.
- :mod:`pyagent.memory.snapshot`: blake3-verified msgpack shard snapshots and restore.
- :class:`~pyagent.memory.fleet_memory.StoreKnowledge`: the fleet's ``KnowledgeBackend`` on top.
- Holographic memory: :mod:`~pyagent.memory.replica` (the replicated state beside the tables),
  :mod:`~pyagent.memory.crdt` (merge rules), :mod:`~pyagent.memory.hlc`, :mod:`~pyagent.memory.placement`,
  :mod:`~pyagent.memory.fleet_query` and :class:`~pyagent.memory.fleet_knowledge.FleetKnowledge`; the
  wire protocol is :mod:`pyagent.voyager.replication`.
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
