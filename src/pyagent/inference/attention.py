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


# Largest score matrix one prefill attention call materializes (floats); longer chunks are split by query.
_MAX_SCORE_FLOATS = 1 << 24


def prefill_attention(q: np.ndarray, k: np.ndarray, v: np.ndarray, start_pos: int, scale: float) -> np.ndarray:
    """Causal attention of new tokens at positions ``start_pos..`` over keys ``0..start_pos+len``.

    ``q``: [new, heads, head_dim]; ``k``, ``v``: [kv_heads, context, head_dim] with context = start_pos + new.
    Queries are processed in slices so that the score matrix stays under ``_MAX_SCORE_FLOATS``.
    """
    new, num_heads, _ = q.shape
    step = max(1, _MAX_SCORE_FLOATS // (num_heads * k.shape[1]))
    if new <= step:
        return _prefill_slice(q, k, v, start_pos, scale)
    return np.concatenate([_prefill_slice(q[i:i + step], k, v, start_pos + i, scale) for i in range(0, new, step)])


def _prefill_slice(q: np.ndarray, k: np.ndarray, v: np.ndarray, start_pos: int, scale: float) -> np.ndarray:
    new, num_heads, head_dim = q.shape
    num_kv_heads = k.shape[0]
    ctx = start_pos + new  # keys after the last query are never attended
    k, v = k[:, :ctx], v[:, :ctx]
    group = num_heads // num_kv_heads
    # [kv_heads, group*new, head_dim]: the query heads that share a KV head attend in one matmul.
    qg = q.reshape(new, num_kv_heads, group, head_dim).transpose(1, 2, 0, 3).reshape(num_kv_heads, group * new, head_dim)
    scores = (qg @ k.transpose(0, 2, 1)) * np.float32(scale)  # [kv_heads, group*new, ctx]
    scores = scores.reshape(num_kv_heads, group, new, ctx)
    allowed = np.arange(ctx)[None, :] <= (start_pos + np.arange(new))[:, None]
    scores = np.where(allowed, scores, np.float32(-np.inf))
    scores -= scores.max(axis=-1, keepdims=True)
    np.exp(scores, out=scores)
    scores /= scores.sum(axis=-1, keepdims=True)
    out = scores.reshape(num_kv_heads, group * new, ctx) @ v  # [kv_heads, group*new, head_dim]
    return np.asarray(out.reshape(num_kv_heads, group, new, head_dim).transpose(2, 0, 1, 3).reshape(new, num_heads, head_dim))
