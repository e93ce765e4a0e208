"""Where an item lives: rendezvous (highest-random-weight) hashing of shards over live nodes.

Items are grouped into ``SHARDS`` shards by the blake3 hash of their primary key; each shard is
held by the ``replicas`` live nodes with the highest ``blake3(shard, node id)`` score. Rendezvous
hashing moves only the shards of a node that joins or leaves (about 1/N of them), needs no ring
or coordinator, and every node computes the same owners from the same member list.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import blake3
import msgpack

__all__ = ["SHARDS", "owners", "shard_of"]

SHARDS = 128


def shard_of(table: str, key: Sequence[str]) -> int:
    """The shard of one row (table name and primary-key columns)."""
    digest = blake3.blake3(msgpack.packb([table, *key], use_bin_type=True)).digest(length=4)
    return int.from_bytes(digest, "big") % SHARDS


def owners(shard: int, nodes: Iterable[str], replicas: int) -> list[str]:
    """The ``replicas`` nodes (all of them when fewer are live) that hold ``shard``, best first."""
    if replicas < 1:
        raise ValueError(f"replication factor must be >= 1, got {replicas}")
    scored = sorted(
        set(nodes), key=lambda n: (blake3.blake3(f"{shard}\x00{n}".encode()).digest(length=8), n), reverse=True
    )
    return scored[:replicas]
