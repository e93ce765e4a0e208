"""Block manager: allocation, sharing, reference counts, prefix cache, LRU eviction, accounting, waste."""

from __future__ import annotations

import numpy as np
import pytest

from pyagent.inference.kv_cache import KVCacheManager


def manager(num_blocks: int = 8, block_size: int = 4, caching: bool = True) -> KVCacheManager:
    return KVCacheManager(num_blocks=num_blocks, block_size=block_size, num_layers=1, num_kv_heads=1, head_dim=2,
                          enable_prefix_caching=caching)


def test_allocate_grows_by_blocks_and_refuses_without_side_effects() -> None:
    kv = manager()
    toks = list(range(10))
    assert kv.allocate("a", toks, 0, 10)
    assert len(kv.block_table("a")) == 3 and kv.num_used_blocks == 3
    assert kv.allocate("a", [*toks, 10, 11], 10, 2)  # fits in the third block
    assert len(kv.block_table("a")) == 3
    assert kv.allocate("b", toks, 0, 20)
    assert kv.num_free_blocks == 0
    assert not kv.allocate("a", toks, 12, 1)
    assert len(kv.block_table("a")) == 3 and kv.num_free_blocks == 0
    kv.free("b")
    assert kv.num_free_blocks == 5 and kv.num_used_blocks == 3
    kv.free("a")
    assert kv.usage().used_blocks == 0 and kv.usage().free_blocks == 8


def test_prefix_blocks_are_shared_with_reference_counts() -> None:
    kv = manager()
    toks = list(range(13))
    kv.allocate("a", toks, 0, 13)
    kv.cache_full_blocks("a", toks, 13)
    assert kv.num_cached_blocks == 3
    hits = kv.get_computed_blocks("b", toks)
    assert hits == kv.block_table("a")[:3]
    assert kv.allocate("b", toks, 12, 1, hits)
    assert kv.block_table("b")[:3] == kv.block_table("a")[:3]
    assert kv.num_used_blocks == 5  # 3 shared + one tail block each
    kv.free("a")
    assert kv.num_used_blocks == 4  # shared blocks still held by b
    kv.free("b")
    assert kv.num_used_blocks == 0 and kv.num_cached_blocks == 3  # cached content survives freeing


def test_prefix_hits_stop_at_the_first_difference_and_leave_one_token() -> None:
    kv = manager()
    toks = list(range(12))
    kv.allocate("a", toks, 0, 12)
    kv.cache_full_blocks("a", toks, 12)
    assert len(kv.get_computed_blocks("b", toks)) == 2  # the whole prompt is cached, but one token must be computed
    changed = [*toks[:5], 99, *toks[6:]]
    assert len(kv.get_computed_blocks("c", changed)) == 1  # block 2 differs, so block 3 cannot match (chained)
    assert manager(caching=False).get_computed_blocks("d", toks) == []


def test_only_computed_full_blocks_are_published() -> None:
    kv = manager()
    toks = list(range(10))
    kv.allocate("a", toks, 0, 10)
    kv.cache_full_blocks("a", toks, 6)
    assert kv.num_cached_blocks == 1


def test_cached_free_blocks_are_evicted_least_recently_freed_first() -> None:
    kv = manager(num_blocks=4, block_size=2)
    a, b = [1, 2, 3], [5, 6, 7]
    for name, toks in (("a", a), ("b", b)):
        kv.allocate(name, toks, 0, 3)
        kv.cache_full_blocks(name, toks, 3)
    kv.free("a")
    kv.free("b")
    assert kv.num_cached_blocks == 2 and kv.num_free_blocks == 4
    # Two fresh blocks come from the unhashed tail blocks first, the third evicts a's cached block (freed first).
    assert kv.allocate("c", [9] * 6, 0, 6)
    assert kv.num_cached_blocks == 1
    assert kv.get_computed_blocks("x", a) == [] and len(kv.get_computed_blocks("y", b)) == 1


def test_write_and_gather_round_trip_through_the_block_table() -> None:
    kv = KVCacheManager(num_blocks=6, block_size=4, num_layers=2, num_kv_heads=3, head_dim=5)
    kv.allocate("filler", list(range(5)), 0, 5)
    kv.allocate("s", list(range(11)), 0, 11)
    k = np.random.default_rng(0).standard_normal((11, 3, 5)).astype(np.float32)
    kv.write(1, kv.slot_mapping("s", 0, 11), k, -k)
    got_k, got_v = kv.gather(1, "s", 11)
    np.testing.assert_array_equal(got_k, k.transpose(1, 0, 2))
    np.testing.assert_array_equal(got_v, -k.transpose(1, 0, 2))
    assert not kv.k_cache[0].any()


def test_kv_waste_under_4_percent_against_contiguous_preallocation() -> None:
    """200 requests of random prompt and output lengths: slots allocated but unused, paged vs contiguous."""
    rng = np.random.default_rng(7)
    block_size, max_len = 16, 4096
    kv = manager(num_blocks=200 * max_len // block_size, block_size=block_size)
    lengths = []
    for i in range(200):
        prompt, output = int(rng.integers(16, 2048)), int(rng.integers(1, 1024))
        toks = list(rng.integers(0, 1000, size=prompt + output))
        assert kv.allocate(str(i), toks, 0, prompt)
        for n in range(prompt, prompt + output):  # decode one token at a time
            if n % block_size == 0:
                assert kv.allocate(str(i), toks, n, 1)
        lengths.append(prompt + output)
    allocated = sum(kv.num_slots(str(i)) for i in range(200))
    used = sum(lengths)
    paged_waste = (allocated - used) / allocated
    contiguous_waste = (200 * max_len - used) / (200 * max_len)
    print(f"\nKV waste over 200 requests: paged (block 16) {paged_waste:.2%}, "
          f"contiguous max-length ({max_len}) preallocation {contiguous_waste:.2%}")
    assert allocated == sum(-(-n // block_size) * block_size for n in lengths)
    assert paged_waste < 0.04
    assert contiguous_waste > 10 * paged_waste


def test_float16_cache_halves_the_bytes_and_rounds_what_it_stores() -> None:
    shape = {"num_blocks": 6, "block_size": 4, "num_layers": 2, "num_kv_heads": 3, "head_dim": 5}
    kv32 = KVCacheManager(**shape)
    kv16 = KVCacheManager(**shape, dtype="float16")
    assert kv16.k_cache.dtype == np.float16 and kv16.v_cache.dtype == np.float16
    assert kv16.nbytes * 2 == kv32.nbytes and kv16.bytes_per_token * 2 == kv32.bytes_per_token == 2 * 2 * 3 * 5 * 4
    kv16.allocate("s", list(range(11)), 0, 11)
    k = np.random.default_rng(0).standard_normal((11, 3, 5)).astype(np.float32)
    kv16.write(1, kv16.slot_mapping("s", 0, 11), k, -k)
    got_k, got_v = kv16.gather(1, "s", 11)
    assert got_k.dtype == np.float32  # widened once for prefill's matrix products
    np.testing.assert_array_equal(got_k, k.astype(np.float16).astype(np.float32).transpose(1, 0, 2))
    np.testing.assert_array_equal(got_v, -got_k)
    assert 0 < np.abs(got_k - k.transpose(1, 0, 2)).max() <= np.abs(k).max() / 2048


def test_unknown_cache_dtype_is_refused_listing_the_choices() -> None:
    for bad in ("bfloat16", "fp16", "q8_0"):
        with pytest.raises(ValueError, match=f"unknown KV cache dtype '{bad}': choose one of float32, float16"):
            KVCacheManager(num_blocks=2, block_size=4, num_layers=1, num_kv_heads=1, head_dim=2, dtype=bad)
