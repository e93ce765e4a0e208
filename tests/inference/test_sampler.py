"""Sampling: greedy, temperature, top-k, top-p and seeds."""

from __future__ import annotations

import numpy as np

from pyagent.inference.sampler import SamplingParams, sample

LOGITS = np.log(np.array([0.05, 0.4, 0.3, 0.15, 0.1], dtype=np.float32))


def draws(params: SamplingParams, n: int = 4000, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.bincount([sample(LOGITS, params, rng) for _ in range(n)], minlength=5) / n


def test_greedy_and_top_k_1_take_the_argmax() -> None:
    rng = np.random.default_rng(0)
    assert sample(LOGITS, SamplingParams(temperature=0.0), rng) == 1
    assert sample(LOGITS, SamplingParams(temperature=5.0, top_k=1), rng) == 1


def test_temperature_one_follows_the_distribution() -> None:
    freq = draws(SamplingParams(temperature=1.0))
    np.testing.assert_allclose(freq, [0.05, 0.4, 0.3, 0.15, 0.1], atol=0.03)


def test_low_temperature_sharpens() -> None:
    assert draws(SamplingParams(temperature=0.2))[1] > 0.75


def test_top_k_keeps_only_the_k_most_likely() -> None:
    freq = draws(SamplingParams(top_k=2))
    assert freq[0] == freq[3] == freq[4] == 0
    np.testing.assert_allclose(freq[1], 0.4 / 0.7, atol=0.03)


def test_top_p_keeps_the_smallest_head_reaching_p() -> None:
    freq = draws(SamplingParams(top_p=0.75))  # 0.4 + 0.3 = 0.7 < 0.75, so 0.15 joins; 0.1 and 0.05 never
    assert freq[0] == freq[4] == 0 and freq[3] > 0
    np.testing.assert_allclose(freq[1], 0.4 / 0.85, atol=0.03)


def test_seeded_generators_repeat() -> None:
    params = SamplingParams(temperature=1.3, top_p=0.95)
    rng1, rng2 = np.random.default_rng(9), np.random.default_rng(9)
    a = [sample(LOGITS, params, rng1) for _ in range(50)]
    b = [sample(LOGITS, params, rng2) for _ in range(50)]
    assert a == b and len(set(a)) > 1
