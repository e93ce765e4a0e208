"""Paged KV cache: fixed-size blocks, reference counts, block tables and prefix caching.

Blocks are the unit of allocation, so a sequence wastes at most ``block_size - 1`` slots. A full block
is identified by a chained hash (its parent block's hash and its own tokens), so two sequences with the
same prefix share the same physical blocks. Freed blocks that hold a cached prefix stay in the free queue
with their contents; they are evicted least-recently-freed first, and only when a block is needed.
"""

from __future__ import annotations

import mmap
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

import blake3
import numpy as np

from pyagent.inference.config import KV_CACHE_DTYPES

_ROOT_HASH = b"pyagent-kv-root"



def kv_dtype(name: str) -> np.dtype:
    """The NumPy dtype for a ``kv_cache_dtype`` name, or a ValueError listing the choices."""
    if name not in KV_CACHE_DTYPES:
        raise ValueError(f"unknown KV cache dtype {name!r}: choose one of {', '.join(KV_CACHE_DTYPES)}")
    return np.dtype(name)


def kv_bytes_per_token(num_layers: int, num_kv_heads: int, head_dim: int, dtype: str = "float32") -> int:
    """Cache bytes one token's K and V take across all layers."""
    return 2 * num_layers * num_kv_heads * head_dim * kv_dtype(dtype).itemsize


@dataclass(frozen=True)
class KVCacheUsage:
    total_blocks: int
    used_blocks: int
    free_blocks: int
    cached_blocks: int
    block_size: int

    @property
    def fraction_used(self) -> float:
        return self.used_blocks / self.total_blocks if self.total_blocks else 0.0


def _zeros(shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
    """A zeroed array in ordinary 4 KiB pages, each allocated on its first write.

    ``np.zeros`` asks the kernel for 2 MiB huge pages on big arrays; a paged cache's first writes are
    scattered (one block per layer), so each would fault in 2 MiB: 120 MB for one short sequence.
    """
    count = int(np.prod(shape))
    return np.frombuffer(mmap.mmap(-1, max(count, 1) * dtype.itemsize), dtype=dtype, count=count).reshape(shape)


def block_hash(parent: bytes, tokens: Sequence[int]) -> bytes:
    """Identity of a full block: its whole prefix (via the parent's hash) and its own tokens."""
    return blake3.blake3(parent + np.asarray(tokens, dtype="<i8").tobytes()).digest()


class KVCacheManager:
    """Owns the K/V arrays and decides which blocks each sequence uses.

    Storage per layer is ``[num_blocks, num_kv_heads, block_size, head_dim]`` of ``dtype`` (float32 or
    float16), the layout the decode kernel streams: one block of one head is a contiguous run of
    ``block_size * head_dim`` values.
    """

    def __init__(self, *, num_blocks: int, block_size: int, num_layers: int, num_kv_heads: int, head_dim: int,
                 enable_prefix_caching: bool = True, dtype: str = "float32") -> None:
        if num_blocks <= 0 or block_size <= 0:
            raise ValueError("num_blocks and block_size must be positive")
        self.block_size = block_size
        self.enable_prefix_caching = enable_prefix_caching
        self.dtype = dtype
        shape = (num_layers, num_blocks, num_kv_heads, block_size, head_dim)
        self.k_cache = _zeros(shape, kv_dtype(dtype))
        self.v_cache = _zeros(shape, kv_dtype(dtype))
        self.bytes_per_token = kv_bytes_per_token(num_layers, num_kv_heads, head_dim, dtype)
        self._ref = [0] * num_blocks
        self._hash: list[bytes | None] = [None] * num_blocks
        self._free: OrderedDict[int, None] = OrderedDict.fromkeys(range(num_blocks))  # front is evicted first
        self._cached: dict[bytes, int] = {}
        self._tables: dict[str, list[int]] = {}
        self._seq_hashes: dict[str, list[bytes]] = {}
        self._registered: dict[str, int] = {}
        self.hits = 0  # blocks reused from the prefix cache, for metrics and tests

    # -- accounting
    @property
    def num_total_blocks(self) -> int:
        return len(self._ref)

    @property
    def num_free_blocks(self) -> int:
        """Blocks not used by any sequence (cached ones included: they can be evicted)."""
        return len(self._free)

    @property
    def num_cached_blocks(self) -> int:
        return len(self._cached)

    @property
    def num_used_blocks(self) -> int:
        return self.num_total_blocks - self.num_free_blocks

    @property
    def nbytes(self) -> int:
        """Memory of the K and V arrays together."""
        return int(self.k_cache.nbytes + self.v_cache.nbytes)

    def usage(self) -> KVCacheUsage:
        return KVCacheUsage(self.num_total_blocks, self.num_used_blocks, self.num_free_blocks,
                            self.num_cached_blocks, self.block_size)

    def block_table(self, seq_id: str) -> list[int]:
        return self._tables.get(seq_id, [])

    def num_slots(self, seq_id: str) -> int:
        return len(self._tables.get(seq_id, ())) * self.block_size

    # -- prefix cache
    def _hashes(self, seq_id: str, token_ids: Sequence[int], num_blocks: int) -> list[bytes]:
        hashes = self._seq_hashes.setdefault(seq_id, [])
        bs = self.block_size
        while len(hashes) < num_blocks:
            i = len(hashes)
            hashes.append(block_hash(hashes[-1] if hashes else _ROOT_HASH, token_ids[i * bs:(i + 1) * bs]))
        return hashes[:num_blocks]

    def get_computed_blocks(self, seq_id: str, token_ids: Sequence[int]) -> list[int]:
        """Cached blocks holding the longest prefix of ``token_ids``, leaving at least one token to compute."""
        if not self.enable_prefix_caching:
            return []
        hits: list[int] = []
        for h in self._hashes(seq_id, token_ids, (len(token_ids) - 1) // self.block_size):
            block = self._cached.get(h)
            if block is None:
                break
            hits.append(block)
        return hits

    def cache_full_blocks(self, seq_id: str, token_ids: Sequence[int], num_computed_tokens: int) -> None:
        """Publish the sequence's blocks that are full and computed, so later requests can share them."""
        if not self.enable_prefix_caching:
            return
        full = min(num_computed_tokens // self.block_size, len(self._tables.get(seq_id, ())))
        done = self._registered.get(seq_id, 0)
        if full <= done:
            return
        table = self._tables[seq_id]
        for i, h in enumerate(self._hashes(seq_id, token_ids, full)[done:], start=done):
            block = table[i]
            if self._hash[block] is None and h not in self._cached:
                self._hash[block] = h
                self._cached[h] = block
        self._registered[seq_id] = full

    def reset_prefix_cache(self) -> None:
        for h, block in list(self._cached.items()):
            self._hash[block] = None
            del self._cached[h]

    # -- allocation
    def allocate(self, seq_id: str, token_ids: Sequence[int], num_computed_tokens: int, num_new_tokens: int,
                 computed_blocks: Sequence[int] = ()) -> bool:
        """Give ``seq_id`` room for ``num_new_tokens`` more tokens; False (and no change) if blocks run out.

        ``computed_blocks`` (from ``get_computed_blocks``, first allocation only) are shared, not copied.
        """
        table = self._tables.get(seq_id)
        if computed_blocks and table:
            raise ValueError("computed blocks can only be attached on a sequence's first allocation")
        have = len(table) if table else len(computed_blocks)
        need = -(-(num_computed_tokens + num_new_tokens) // self.block_size) - have
        revived = sum(1 for b in computed_blocks if self._ref[b] == 0)
        if need + revived > len(self._free):
            return False
        if table is None:
            table = self._tables[seq_id] = []
        for block in computed_blocks:
            if self._ref[block] == 0:
                del self._free[block]
            self._ref[block] += 1
            table.append(block)
        if computed_blocks:
            self.hits += len(computed_blocks)
            self._registered[seq_id] = len(computed_blocks)
        for _ in range(max(need, 0)):
            block, _ = self._free.popitem(last=False)
            evicted = self._hash[block]
            if evicted is not None:
                del self._cached[evicted]
                self._hash[block] = None
            self._ref[block] = 1
            table.append(block)
        return True

    def free(self, seq_id: str) -> None:
        """Release a sequence's blocks; cached ones stay reusable until evicted (tail blocks first)."""
        for block in reversed(self._tables.pop(seq_id, [])):
            self._ref[block] -= 1
            if self._ref[block] == 0:
                self._free[block] = None
                if self._hash[block] is None:
                    self._free.move_to_end(block, last=False)  # holds nothing reusable: hand out first
        self._seq_hashes.pop(seq_id, None)
        self._registered.pop(seq_id, None)

    # -- storage
    def slot_mapping(self, seq_id: str, start: int, end: int) -> np.ndarray:
        """Flat slot index (block * block_size + offset) of token positions ``start..end``."""
        table = np.asarray(self._tables[seq_id], dtype=np.int64)
        pos = np.arange(start, end)
        return table[pos // self.block_size] * self.block_size + pos % self.block_size

    def write(self, layer: int, slots: np.ndarray, k: np.ndarray, v: np.ndarray) -> None:
        """Store K/V (``[tokens, num_kv_heads, head_dim]``) of new tokens at their slots (rounded to nearest
        even for a float16 cache, as the Rust decode step rounds)."""
        blocks, offsets = np.divmod(slots, self.block_size)
        self.k_cache[layer, blocks, :, offsets, :] = k
        self.v_cache[layer, blocks, :, offsets, :] = v

    def gather(self, layer: int, seq_id: str, length: int) -> tuple[np.ndarray, np.ndarray]:
        """Contiguous float32 K and V (``[num_kv_heads, length, head_dim]``) of a sequence's first ``length``
        tokens (a float16 cache is widened here, once, for prefill's matrix products)."""
        table = self._tables[seq_id][: -(-length // self.block_size)]
        k = self.k_cache[layer, table]
        v = self.v_cache[layer, table]
        n, h, bs, d = k.shape
        k = k.transpose(1, 0, 2, 3).reshape(h, n * bs, d)[:, :length]
        v = v.transpose(1, 0, 2, 3).reshape(h, n * bs, d)[:, :length]
        return k.astype(np.float32, copy=False), v.astype(np.float32, copy=False)
