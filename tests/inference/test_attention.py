"""The Rust paged decode kernel against its NumPy reference and a plain dense softmax; prefill; bad inputs."""

from __future__ import annotations

import numpy as np
import pytest

from pyagent.inference.attention import (
    paged_decode_attention,
    paged_decode_attention_reference,
    prefill_attention,
)


def dense_attention(q: np.ndarray, k: np.ndarray, v: np.ndarray, scale: float) -> np.ndarray:
    """q: [heads, d]; k, v: [kv_heads, n, d] -> [heads, d], softmax in float64."""
    group = q.shape[0] // k.shape[0]
    kk = np.repeat(k, group, axis=0).astype(np.float64)
    vv = np.repeat(v, group, axis=0).astype(np.float64)
    s = np.einsum("hd,hnd->hn", q, kk) * scale
    p = np.exp(s - s.max(-1, keepdims=True))
    return np.einsum("hn,hnd->hd", p / p.sum(-1, keepdims=True), vv)


def random_case(seed: int, context_lens: list[int], heads: int = 8, kv_heads: int = 2, d: int = 24,
                block_size: int = 16) -> tuple[np.ndarray, ...]:
    rng = np.random.default_rng(seed)
    per_seq = [-(-n // block_size) for n in context_lens]
    num_blocks = sum(per_seq) + 3
    k = rng.standard_normal((num_blocks, kv_heads, block_size, d)).astype(np.float32)
    v = rng.standard_normal((num_blocks, kv_heads, block_size, d)).astype(np.float32)
    q = rng.standard_normal((len(context_lens), heads, d)).astype(np.float32)
    order = rng.permutation(num_blocks)  # blocks scattered through the cache
    tables = np.zeros((len(context_lens), max(per_seq)), dtype=np.int32)
    at = 0
    for s, n in enumerate(per_seq):
        tables[s, :n] = order[at:at + n]
        at += n
    return q, k, v, tables, np.array(context_lens, dtype=np.int32)


@pytest.mark.parametrize("partition_size", [1, 7, 16, 64, 512])
def test_rust_kernel_matches_reference_and_dense(partition_size: int) -> None:
    q, k, v, tables, lens = random_case(partition_size, [1, 15, 16, 17, 100, 333])
    rust = paged_decode_attention(q, k, v, tables, lens, 0.3, partition_size)
    ref = paged_decode_attention_reference(q, k, v, tables, lens, 0.3, partition_size)
    np.testing.assert_allclose(rust, ref, atol=2e-6)
    bs = k.shape[2]
    for s, n in enumerate(lens):
        pos = np.arange(n)
        blocks, offs = tables[s][pos // bs], pos % bs
        kd = k[blocks, :, offs].transpose(1, 0, 2)
        vd = v[blocks, :, offs].transpose(1, 0, 2)
        np.testing.assert_allclose(rust[s], dense_attention(q[s], kd, vd, 0.3), atol=2e-6)


def test_rust_kernel_handles_large_scores_and_mha() -> None:
    q, k, v, tables, lens = random_case(1, [40, 77], heads=4, kv_heads=4, d=16)
    q *= 50.0  # logits in the hundreds: the online softmax must subtract maxima
    out = paged_decode_attention(q, k, v, tables, lens, 1.0, 8)
    assert np.isfinite(out).all()
    np.testing.assert_allclose(out, paged_decode_attention_reference(q, k, v, tables, lens, 1.0, 8), atol=1e-5)


def test_prefill_over_cached_prefix_matches_dense() -> None:
    rng = np.random.default_rng(3)
    heads, kv_heads, d, prefix, new = 6, 3, 8, 21, 9
    q = rng.standard_normal((new, heads, d)).astype(np.float32)
    k = rng.standard_normal((kv_heads, prefix + new, d)).astype(np.float32)
    v = rng.standard_normal((kv_heads, prefix + new, d)).astype(np.float32)
    out = prefill_attention(q, k, v, prefix, 0.25)
    for i in range(new):  # token i sees the prefix and new tokens 0..i, nothing later
        ctx = prefix + i + 1
        np.testing.assert_allclose(out[i], dense_attention(q[i], k[:, :ctx], v[:, :ctx], 0.25), atol=2e-6)


@pytest.mark.parametrize("query_slice", [1, 7, 128])
def test_long_prefill_is_split_by_query_with_the_same_result(monkeypatch: pytest.MonkeyPatch,
                                                             query_slice: int) -> None:
    import pyagent.inference.attention as attention

    rng = np.random.default_rng(4)
    q = rng.standard_normal((50, 4, 8)).astype(np.float32)
    k = rng.standard_normal((2, 60, 8)).astype(np.float32)
    v = rng.standard_normal((2, 60, 8)).astype(np.float32)
    monkeypatch.setattr(attention, "_QUERY_SLICE", query_slice)
    out = prefill_attention(q, k, v, 10, 0.3)
    for i in range(50):
        np.testing.assert_allclose(out[i], dense_attention(q[i], k[:, :11 + i], v[:, :11 + i], 0.3), atol=2e-6)


def test_kernel_rejects_bad_inputs_with_clear_errors() -> None:
    q, k, v, tables, lens = random_case(2, [20, 30])
    out = np.empty_like(q)
    from pyagent import _rust

    cases = [
        ((out, q, k, v, tables, np.array([20, 9999], np.int32), 1.0), "does not fit its block table"),
        ((out, q, k, v, np.full_like(tables, 10_000), lens, 1.0), "outside"),
        ((np.empty((2, 5, 24), np.float32), np.ascontiguousarray(q[:, :5]), k, v, tables, lens, 1.0),
         "multiple of num_kv_heads"),
        ((out[:1], q, k, v, tables, lens, 1.0), "differs from q shape"),
        ((out, q, k, v[:-1], tables, lens, 1.0), "same shape"),
        ((out, q, k, v, tables[:1], lens, 1.0), "one row per sequence"),
        ((np.empty((2, 8, 24, 1), np.float32), q, k, v, tables, lens, 1.0), "dimensions"),
        ((q, q, k, v, tables, lens, 1.0), "must not share memory"),
        ((out, np.asfortranarray(q), k, v, tables, lens, 1.0), "C-contiguous"),
    ]
    for args, message in cases:
        with pytest.raises(ValueError, match=message):
            _rust.paged_attention_decode(*args)
    with pytest.raises(ValueError, match="partition_size"):
        _rust.paged_attention_decode(out, q, k, v, tables, lens, 1.0, 0)
    with pytest.raises(BufferError):
        _rust.paged_attention_decode(out, q.astype(np.float64), k, v, tables, lens, 1.0)


def test_rust_kernel_parallel_path_on_a_long_context() -> None:
    # Over a million K/V floats: the kernel spreads partitions over the thread pool.
    q, k, v, tables, lens = random_case(9, [5000, 1234], heads=16, kv_heads=8, d=32)
    rust = paged_decode_attention(q, k, v, tables, lens, 0.2, 256)
    np.testing.assert_allclose(rust, paged_decode_attention_reference(q, k, v, tables, lens, 0.2, 256), atol=2e-6)


@pytest.mark.parametrize(("heads", "kv_heads", "d"), [(9, 3, 64), (8, 2, 24)])
def test_float16_cache_matches_the_float32_kernel_within_fp16_rounding(heads: int, kv_heads: int, d: int) -> None:
    """One kernel reads both element types: on an fp16 cache it equals the fp32 kernel run on the same
    (widened) values, and stays within fp16 rounding of the fp32 cache it was rounded from."""
    q, k, v, tables, lens = random_case(21, [1, 16, 90, 700], heads=heads, kv_heads=kv_heads, d=d)
    k16, v16 = k.astype(np.float16), v.astype(np.float16)
    assert not np.array_equal(k16.astype(np.float32), k)  # rounding really happened
    for partition_size in (32, 512):
        got = paged_decode_attention(q, k16, v16, tables, lens, 0.2, partition_size)
        on_values = paged_decode_attention(q, k16.astype(np.float32), v16.astype(np.float32), tables, lens, 0.2,
                                           partition_size)
        np.testing.assert_allclose(got, on_values, atol=2e-6)
        full = paged_decode_attention(q, k, v, tables, lens, 0.2, partition_size)
        # |K| and |V| carry a relative error of at most 2^-11 each; these scores are O(1)
        np.testing.assert_allclose(got, full, atol=5e-3)
        assert np.abs(got - full).max() > 0  # and it is visible: the kernel did read the fp16 values


def test_kernel_refuses_caches_of_mixed_or_unsupported_dtypes() -> None:
    q, k, v, tables, lens = random_case(3, [20, 30])
    from pyagent import _rust

    out = np.empty_like(q)
    for kc, vc in [(k, v.astype(np.float16)), (k.astype(np.float64), v.astype(np.float64))]:
        with pytest.raises(ValueError, match="both be float32 or both float16"):
            _rust.paged_attention_decode(out, q, kc, vc, tables, lens, 1.0)
