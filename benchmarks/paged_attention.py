"""Paged attention and continuous batching, measured against their anchors in one run.

1. Machine read bandwidth: a large NumPy sum.
2. Decode attention over a 32k-token context (Llama-3-8B head layout: 32 query heads, 8 KV heads, dim 128)
   with K/V scattered over random cache blocks: the Rust paged kernel, the NumPy reference of the same
   algorithm, and a dense NumPy kernel over contiguous K/V. Effective GB/s = K/V bytes read / time.
   Targets: Rust kernel >= 50% of read bandwidth and within 1.2x of the dense kernel.
3. KV memory waste over 200 random-length requests: paged blocks of 16 vs contiguous max-length slots.
4. Tokens/s of 16 concurrent requests with continuous batching vs the same requests one at a time
   (target >= 4x).

    python benchmarks/paged_attention.py [--context 32768] [--quick]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from pyagent.inference.attention import paged_decode_attention, paged_decode_attention_reference
from pyagent.inference.engine import PagedAttentionEngine
from pyagent.inference.kv_cache import KVCacheManager
from pyagent.inference.sampler import SamplingParams
from pyagent.inference.tiny import init_tiny


def best_of(fn: Callable[[], object], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def dense_decode(q: np.ndarray, k: np.ndarray, v: np.ndarray, scale: float) -> np.ndarray:
    """Contiguous K/V [kv_heads, n, d]; the query heads sharing a KV head go through one matmul."""
    kv_heads = k.shape[0]
    qg = q.reshape(kv_heads, -1, q.shape[-1])
    s = (qg @ k.transpose(0, 2, 1)) * np.float32(scale)
    s -= s.max(-1, keepdims=True)
    np.exp(s, out=s)
    s /= s.sum(-1, keepdims=True)
    return (s @ v).reshape(q.shape)


def attention_section(context: int, repeat: int, partition_size: int) -> None:
    heads, kv_heads, d, bs = 32, 8, 128, 16
    rng = np.random.default_rng(0)
    nblocks = context // bs
    k_cache = rng.standard_normal((nblocks, kv_heads, bs, d), dtype=np.float32)
    v_cache = rng.standard_normal((nblocks, kv_heads, bs, d), dtype=np.float32)
    table = rng.permutation(nblocks).astype(np.int32)[None, :]
    lens = np.array([context], dtype=np.int32)
    q = rng.standard_normal((1, heads, d), dtype=np.float32)
    k_dense = np.ascontiguousarray(k_cache[table[0]].transpose(1, 0, 2, 3).reshape(kv_heads, context, d))
    v_dense = np.ascontiguousarray(v_cache[table[0]].transpose(1, 0, 2, 3).reshape(kv_heads, context, d))
    scale = 1 / np.sqrt(d)
    out = np.empty_like(q)
    kv_bytes = 2 * context * kv_heads * d * 4

    def rust() -> None:
        paged_decode_attention(q, k_cache, v_cache, table, lens, scale, partition_size, out=out)

    rust()
    ref = paged_decode_attention_reference(q, k_cache, v_cache, table, lens, scale, partition_size)
    dense = dense_decode(q[0], k_dense, v_dense, scale)
    err = max(float(np.abs(out - ref).max()), float(np.abs(out[0] - dense).max()))
    # The machine is shared: interleave the kernels and the bandwidth probe, keep each one's best round.
    big = np.ones((1 << 30) // 8 if context >= 8192 else (64 << 20) // 8)
    t_rust = t_dense = t_sum = float("inf")
    for _ in range(repeat):
        t_rust = min(t_rust, best_of(rust, 1))
        t_dense = min(t_dense, best_of(lambda: dense_decode(q[0], k_dense, v_dense, scale), 1))
        t_sum = min(t_sum, best_of(big.sum, 1))
    t_ref = best_of(lambda: paged_decode_attention_reference(q, k_cache, v_cache, table, lens, scale,
                                                             partition_size), max(1, repeat // 5))
    bandwidth = big.nbytes / t_sum / 1e9
    print(f"== memory read bandwidth (NumPy sum of a {big.nbytes >> 20} MiB array): {bandwidth:.1f} GB/s")
    print(f"== decode attention, {context} tokens, 32 q heads / 8 kv heads x 128, K+V = {kv_bytes / 1e6:.0f} MB, "
          f"partition {partition_size} (max |diff| between kernels {err:.1e})")
    for name, t in (("rust paged kernel", t_rust), ("numpy paged reference", t_ref),
                    ("numpy dense contiguous", t_dense)):
        gbs = kv_bytes / t / 1e9
        print(f"  {name:24s} {t * 1e3:8.2f} ms  {gbs:6.1f} GB/s  {gbs / bandwidth:6.1%} of read bandwidth")
    print(f"  rust / read bandwidth: {kv_bytes / t_rust / 1e9 / bandwidth:.2f} (target >= 0.50)")
    print(f"  rust time / dense time: {t_rust / t_dense:.2f}x (target <= 1.2x)")
    print(f"  rust speedup over numpy paged reference: {t_ref / t_rust:.1f}x")


def waste_section() -> None:
    rng = np.random.default_rng(7)
    bs, max_len = 16, 4096
    kv = KVCacheManager(num_blocks=200 * max_len // bs, block_size=bs, num_layers=1, num_kv_heads=1, head_dim=1)
    used = 0
    for i in range(200):
        prompt, output = int(rng.integers(16, 2048)), int(rng.integers(1, 1024))
        toks = rng.integers(0, 1000, size=prompt + output).tolist()
        kv.allocate(str(i), toks, 0, prompt)
        for n in range(prompt, prompt + output):
            kv.allocate(str(i), toks, n, 1)
        used += prompt + output
    allocated = sum(kv.num_slots(str(i)) for i in range(200))
    print("\n== KV memory waste, 200 requests (prompt 16-2047, output 1-1023 tokens)")
    print(f"  paged, block size 16:                 {(allocated - used) / allocated:6.2%} (target < 4%)")
    print(f"  contiguous, max length {max_len} per request: {(200 * max_len - used) / (200 * max_len):6.2%}")


def batching_section(n_requests: int, max_tokens: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        # 180 MB of float32 weights: bigger than the caches, so decoding one sequence streams every
        # weight once per token (memory-bound, like real LLMs), and batching shares each read across requests.
        model = init_tiny(Path(tmp) / "m", seed=1, hidden_size=1024, num_layers=4, num_heads=16, num_kv_heads=4,
                          intermediate_size=2816)
        engine = PagedAttentionEngine.from_pretrained(model)
        rng = np.random.default_rng(3)
        prompts = [[1, *rng.integers(3, 500, size=int(rng.integers(8, 24))).tolist()] for _ in range(n_requests)]
        params = SamplingParams(max_tokens=max_tokens, temperature=0.0, ignore_eos=True)

        def run(batch: list[list[int]], tag: str) -> list[list[int]]:
            for i, p in enumerate(batch):
                engine.add_request(f"{tag}{i}", p, params)
            done: dict[str, list[int]] = {}
            while engine.has_unfinished():
                for o in engine.step():
                    if o.finished:
                        done[o.request_id] = o.token_ids
            return [done[f"{tag}{i}"] for i in range(len(batch))]

        run(prompts[:1], "warm")
        engine.kv_cache.reset_prefix_cache()
        t = time.perf_counter()
        one_by_one = [run([p], f"seq{i}-")[0] for i, p in enumerate(prompts)]
        t_seq = time.perf_counter() - t
        engine.kv_cache.reset_prefix_cache()  # no help from the sequential run's cached prompts
        t = time.perf_counter()
        batched = run(prompts, "batch")
        t_batch = time.perf_counter() - t
        tokens = n_requests * max_tokens
        print(f"\n== {n_requests} requests (prompts of 8-23 tokens) x {max_tokens} generated tokens, random Llama (hidden 1024, 4 layers, 16/4 heads, 180 MB)")
        print(f"  one at a time:        {tokens / t_seq:8.1f} tokens/s")
        print(f"  continuous batching:  {tokens / t_batch:8.1f} tokens/s")
        same = sum(a == b for a, b in zip(one_by_one, batched, strict=True))
        # A difference can only come from a near-tie between the two best logits: batched and single-row
        # matrix products round differently in float32 (a plain float32 dense forward of this model is
        # ~1e-3 away from float64; the engine's logits are checked against a dense forward in the tests).
        print(f"  speedup: {t_seq / t_batch:.1f}x (target >= 4x); identical greedy outputs: {same}/{n_requests}")


def main() -> None:
    parser = argparse.ArgumentParser(description="paged attention benchmark")
    parser.add_argument("--context", type=int, default=32768)
    parser.add_argument("--partition-size", type=int, default=512)
    parser.add_argument("--repeat", type=int, default=20)
    parser.add_argument("--quick", action="store_true", help="small sizes, to check that the script runs")
    args = parser.parse_args()
    context, repeat = (2048, 2) if args.quick else (args.context, args.repeat)
    attention_section(context, repeat, args.partition_size)
    waste_section()
    batching_section(4 if args.quick else 16, 8 if args.quick else 48)


if __name__ == "__main__":
    main()
