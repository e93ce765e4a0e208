"""The engine's logits equal a dense forward of the same weights, however the work was batched or cached."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from pyagent.inference.engine import PagedAttentionEngine, RequestOutput
from pyagent.inference.sampler import SamplingParams
from tests.inference.dense_reference import DenseLlama

GREEDY = SamplingParams(max_tokens=12, temperature=0.0, ignore_eos=True)


@pytest.fixture(scope="module")
def dense(tiny_dir: Path) -> DenseLlama:
    return DenseLlama(tiny_dir)


def run_all(engine: PagedAttentionEngine, prompts: dict[str, list[int]], params: SamplingParams = GREEDY,
            ) -> tuple[dict[str, RequestOutput], dict[str, list[tuple[int, np.ndarray]]]]:
    seen: dict[str, list[tuple[int, np.ndarray]]] = {rid: [] for rid in prompts}
    engine.logits_observer = lambda rid, pos, row: seen[rid].append((pos, row.copy()))
    for rid, ids in prompts.items():
        engine.add_request(rid, ids, params)
    final: dict[str, RequestOutput] = {}
    for _ in range(10_000):
        if not engine.has_unfinished():
            break
        for out in engine.step():
            if out.finished:
                final[out.request_id] = out
    assert not engine.has_unfinished()
    return final, seen


def assert_matches_dense(dense: DenseLlama, final: dict[str, RequestOutput],
                         seen: dict[str, list[tuple[int, np.ndarray]]]) -> None:
    for rid, out in final.items():
        tokens = out.prompt_token_ids + out.token_ids
        ref = dense.logits(tokens)
        positions = [pos for pos, _ in seen[rid]]
        # One logits row per generated token, at the position just before it.
        assert positions == list(range(len(out.prompt_token_ids) - 1, len(tokens) - 1))
        for pos, row in seen[rid]:
            np.testing.assert_allclose(row, ref[pos], atol=1e-4, rtol=0)
            assert int(np.argmax(ref[pos])) == tokens[pos + 1]


def prompt(rng: np.random.Generator, n: int) -> list[int]:
    return [1, *rng.integers(3, 500, size=n - 1).tolist()]


def test_one_sequence(tiny_dir: Path, dense: DenseLlama) -> None:
    engine = PagedAttentionEngine.from_pretrained(tiny_dir)
    final, seen = run_all(engine, {"one": prompt(np.random.default_rng(1), 40)})
    assert final["one"].finish_reason == "length" and len(final["one"].token_ids) == 12
    assert_matches_dense(dense, final, seen)


def test_batch_of_mixed_lengths_with_chunked_prefill(tiny_dir: Path, dense: DenseLlama) -> None:
    # A 48-token budget splits the long prompts into chunks that share steps with other requests' decodes.
    engine = PagedAttentionEngine.from_pretrained(tiny_dir, max_num_batched_tokens=48, partition_size=16)
    rng = np.random.default_rng(2)
    prompts = {f"r{n}": prompt(rng, n) for n in (1, 7, 16, 17, 33, 130)}
    final, seen = run_all(engine, prompts)
    assert set(final) == set(prompts)
    assert_matches_dense(dense, final, seen)


def test_prefix_cache_hits(tiny_dir: Path, dense: DenseLlama) -> None:
    engine = PagedAttentionEngine.from_pretrained(tiny_dir)
    rng = np.random.default_rng(3)
    shared = prompt(rng, 70)
    run_all(engine, {"first": shared})
    assert engine.kv_cache.num_cached_blocks >= 4
    final, seen = run_all(engine, {"second": shared + prompt(rng, 9)[1:], "third": shared[:50]})
    assert engine.kv_cache.hits >= 4 + 3  # 4 full blocks of "second", 3 of "third"
    assert_matches_dense(dense, final, seen)


@pytest.mark.parametrize("caching", [True, False])
def test_preemption_and_recompute(tiny_dir: Path, dense: DenseLlama, caching: bool) -> None:
    # 10 blocks (160 slots) cannot hold four sequences growing to 60+ tokens: someone gets preempted.
    engine = PagedAttentionEngine.from_pretrained(tiny_dir, num_blocks=10, enable_prefix_caching=caching)
    rng = np.random.default_rng(4)
    params = SamplingParams(max_tokens=30, temperature=0.0, ignore_eos=True)
    prompts = {f"p{i}": prompt(rng, 30 + i) for i in range(4)}
    final, seen = run_all(engine, prompts, params)
    assert engine.scheduler.num_preemptions > 0
    assert all(out.finish_reason == "length" and len(out.token_ids) == 30 for out in final.values())
    assert engine.kv_cache.num_used_blocks == 0
    assert_matches_dense(dense, final, seen)


def test_greedy_identical_with_and_without_prefix_caching(tiny_dir: Path) -> None:
    rng = np.random.default_rng(5)
    base = prompt(rng, 40)
    prompts = {f"s{i}": base[: 20 + 7 * i] + prompt(rng, 5)[1:] for i in range(4)}
    outputs = []
    for caching in (True, False):
        engine = PagedAttentionEngine.from_pretrained(tiny_dir, enable_prefix_caching=caching, num_blocks=24)
        run_all(engine, {"warm": base})
        final, _ = run_all(engine, prompts, SamplingParams(max_tokens=20, temperature=0.0, ignore_eos=True))
        outputs.append({rid: out.token_ids for rid, out in final.items()})
        assert (engine.kv_cache.hits > 0) is caching
    assert outputs[0] == outputs[1]
