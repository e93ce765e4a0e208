"""``RequestOutput.num_cached_tokens``: how many prompt tokens the prefix cache served, per request.

Expectations come from the block size and the prompt lengths: a cached block is a full block of a prefix
that an earlier request computed, and at least one prompt token is always computed afresh.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pyagent.inference.engine import PagedAttentionEngine, RequestOutput
from pyagent.inference.sampler import SamplingParams


def run_one(engine: PagedAttentionEngine, rid: str, prompt: list[int], max_tokens: int = 3) -> RequestOutput:
    engine.add_request(rid, prompt, SamplingParams(max_tokens=max_tokens, temperature=0.0, ignore_eos=True))
    final: RequestOutput | None = None
    for _ in range(1000):
        if not engine.has_unfinished():
            break
        for out in engine.step():
            assert out.request_id == rid
            final = out
    assert final is not None and final.finished
    return final


def prompts(block_size: int) -> tuple[list[int], list[int], list[int]]:
    """A prompt of two full blocks and a bit; one sharing 2 blocks + 3 tokens of it; one sharing less than
    a block."""
    rng = np.random.default_rng(7)
    base = [1, *rng.integers(3, 500, size=2 * block_size + 4).tolist()]  # 2 * block_size + 5 tokens
    shared = base[:2 * block_size + 3]
    branch = [*shared, base[len(shared)] + 1, *rng.integers(3, 500, size=block_size).tolist()]
    short = [*base[:block_size - 1], *rng.integers(3, 500, size=block_size + 2).tolist()]
    assert branch[:len(shared)] == shared and branch[len(shared)] != base[len(shared)]
    return base, branch, short


def test_repeated_prompt_reports_its_full_cached_blocks(tiny_dir: Path) -> None:
    engine = PagedAttentionEngine.from_pretrained(tiny_dir)
    bs = engine.kv_cache.block_size
    base, branch, short = prompts(bs)
    assert run_one(engine, "first", base).num_cached_tokens == 0  # nothing computed before it
    # The same prompt again: its whole prompt is the shared prefix; 2 full blocks of it.
    assert run_one(engine, "again", base).num_cached_tokens == 2 * bs
    # A prompt sharing 2 * bs + 3 tokens with the first: again 2 full blocks.
    assert run_one(engine, "branch", branch).num_cached_tokens == 2 * bs
    # Sharing fewer than block_size tokens: no full block is shared.
    assert run_one(engine, "short", short).num_cached_tokens == 0


def test_exactly_full_blocks_leave_one_token_to_compute(tiny_dir: Path) -> None:
    engine = PagedAttentionEngine.from_pretrained(tiny_dir)
    bs = engine.kv_cache.block_size
    prompt = [1, *np.random.default_rng(3).integers(3, 500, size=3 * bs - 1).tolist()]  # exactly 3 blocks
    run_one(engine, "first", prompt)
    # All 3 blocks are cached, but the last prompt token must be computed to sample from: 2 blocks served.
    assert run_one(engine, "again", prompt).num_cached_tokens == 2 * bs


def test_no_prefix_caching_reports_zero(tiny_dir: Path) -> None:
    engine = PagedAttentionEngine.from_pretrained(tiny_dir, enable_prefix_caching=False)
    base, branch, _ = prompts(engine.kv_cache.block_size)
    assert [run_one(engine, rid, p).num_cached_tokens for rid, p in
            (("first", base), ("again", base), ("branch", branch))] == [0, 0, 0]
    assert engine.kv_cache.hits == 0


def test_a_preempted_request_keeps_its_first_figure(tiny_dir: Path) -> None:
    """B is preempted and later recomputed from its own cached blocks; it still reports its first admission
    (0), because what it reports is what its prompt cost, not its retries."""
    engine = PagedAttentionEngine.from_pretrained(tiny_dir, num_blocks=6, max_num_seqs=2)
    bs = engine.kv_cache.block_size
    rng = np.random.default_rng(11)
    a = [1, *rng.integers(3, 500, size=2 * bs).tolist()]  # 2 * bs + 1 tokens: 3 blocks each, 6 in all
    b = [2, *rng.integers(3, 500, size=2 * bs).tolist()]
    params = SamplingParams(max_tokens=2 * bs, temperature=0.0, ignore_eos=True)
    engine.add_request("a", a, params)
    engine.add_request("b", b, params)
    finals: dict[str, RequestOutput] = {}
    for _ in range(1000):
        if not engine.has_unfinished():
            break
        finals.update((o.request_id, o) for o in engine.step() if o.finished)
    assert sorted(finals) == ["a", "b"] and all(o.finish_reason == "length" for o in finals.values())
    # Both first admissions found an empty cache; yet a recompute did reuse cached blocks.
    assert engine.scheduler.num_preemptions > 0 and engine.kv_cache.hits > 0
    assert finals["a"].num_cached_tokens == 0 and finals["b"].num_cached_tokens == 0
