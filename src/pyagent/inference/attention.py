"""Attention over the paged KV cache.

- ``paged_decode_attention``: one query token per sequence, the Rust kernel (``pyagent._rust``).
- ``paged_decode_attention_reference``: the same partitioned online softmax in plain NumPy, kept as the
  executable specification the tests and the benchmark compare the kernel with.
- ``prefill_attention``: causal attention of a chunk of new tokens over the cached prefix plus
  themselves (dense matrix products; this is compute-bound and NumPy's BLAS does it well).
"""

from __future__ import annotations

import numpy as np

from pyagent import _rust


def paged_decode_attention(q: np.ndarray, k_cache: np.ndarray, v_cache: np.ndarray, block_tables: np.ndarray,
                           context_lens: np.ndarray, scale: float, partition_size: int = 512,
                           out: np.ndarray | None = None) -> np.ndarray:
    """``q``: [seqs, heads, head_dim]; caches: [blocks, kv_heads, block_size, head_dim] (one layer)."""
    q = np.ascontiguousarray(q, dtype=np.float32)
    if out is None:
        out = np.empty_like(q)
    _rust.paged_attention_decode(out, q, k_cache, v_cache, np.ascontiguousarray(block_tables, dtype=np.int32),
                                 np.ascontiguousarray(context_lens, dtype=np.int32), float(scale), partition_size)
    return out


def paged_decode_attention_reference(q: np.ndarray, k_cache: np.ndarray, v_cache: np.ndarray,
                                     block_tables: np.ndarray, context_lens: np.ndarray, scale: float,
                                     partition_size: int = 512) -> np.ndarray:
    """NumPy version of the Rust kernel's algorithm (per-partition max and sum, then a reduce)."""
    num_seqs, num_heads, _ = q.shape
    _, num_kv_heads, block_size, _ = k_cache.shape
    group = num_heads // num_kv_heads
    out = np.zeros_like(q, dtype=np.float32)
    for s in range(num_seqs):
        ctx = int(context_lens[s])
        if ctx == 0:
            continue
        pos = np.arange(ctx)
        blocks = np.asarray(block_tables[s])[pos // block_size]
        offsets = pos % block_size
        for kh in range(num_kv_heads):
            qh = q[s, kh * group:(kh + 1) * group]  # [group, head_dim]
            maxes, sums, accs = [], [], []
            for start in range(0, ctx, partition_size):
                sl = slice(start, min(start + partition_size, ctx))
                k = k_cache[blocks[sl], kh, offsets[sl]]  # [n, head_dim]
                v = v_cache[blocks[sl], kh, offsets[sl]]
                scores = (qh @ k.T) * scale
                m = scores.max(axis=1)
                e = np.exp(scores - m[:, None])
                maxes.append(m)
                sums.append(e.sum(axis=1))
                accs.append(e @ v)
            m_all = np.max(maxes, axis=0)
            weights = [np.exp(m - m_all) for m in maxes]
            total = sum(w * total for w, total in zip(weights, sums, strict=True))
            acc = sum(w[:, None] * a for w, a in zip(weights, accs, strict=True))
            out[s, kh * group:(kh + 1) * group] = acc / total[:, None]
    return out


# Queries per slice of a prefill: a slice attends to keys up to its last query only, so slicing skips
# most of the masked upper triangle, and its score matrix stays small (measured fastest at 64-128).
_QUERY_SLICE = 128
_CAUSAL_BIAS: dict[int, np.ndarray] = {}


def prefill_attention(q: np.ndarray, k: np.ndarray, v: np.ndarray, start_pos: int, scale: float) -> np.ndarray:
    """Causal attention of new tokens at positions ``start_pos..`` over keys ``0..start_pos+len``.

    ``q``: [new, heads, head_dim]; ``k``, ``v``: [kv_heads, context, head_dim] with context = start_pos + new.
    Every pass over the score matrix is in place and the softmax divides the output rows, not the scores:
    the elementwise passes, not the two matrix products, are what this costs.
    """
    new, num_heads, head_dim = q.shape
    num_kv_heads = k.shape[0]
    group = num_heads // num_kv_heads
    out = np.empty((new, num_heads, head_dim), dtype=np.float32)
    for i in range(0, new, _QUERY_SLICE):
        j = min(new, i + _QUERY_SLICE)
        n, ctx = j - i, start_pos + j  # keys after the slice's last query are never attended
        # [kv_heads, group*n, head_dim]: the query heads that share a KV head attend in one matmul
        qg = (q[i:j] * np.float32(scale)).reshape(n, num_kv_heads, group, head_dim).transpose(1, 2, 0, 3)
        scores = (qg.reshape(num_kv_heads, group * n, head_dim) @ k[:, :ctx].transpose(0, 2, 1))
        scores = scores.reshape(num_kv_heads, group, n, ctx)
        scores[..., ctx - n:] += _causal_bias(n)  # query r of the slice sees the slice's keys 0..r
        scores -= scores.max(axis=-1, keepdims=True)
        np.exp(scores, out=scores)
        sums = scores.sum(axis=-1).reshape(num_kv_heads, group * n, 1)
        o = scores.reshape(num_kv_heads, group * n, ctx) @ v[:, :ctx]  # [kv_heads, group*n, head_dim]
        o /= sums
        out[i:j].reshape(n, num_kv_heads, group, head_dim)[:] = o.reshape(num_kv_heads, group, n, head_dim).transpose(2, 0, 1, 3)
    return out


def _causal_bias(n: int) -> np.ndarray:
    """``[n, n]``: 0 on and below the diagonal, -inf above (cached per size; read-only)."""
    bias = _CAUSAL_BIAS.get(n)
    if bias is None:
        bias = np.triu(np.full((n, n), -np.inf, dtype=np.float32), 1)
        bias.flags.writeable = False
        _CAUSAL_BIAS[n] = bias
    return bias
