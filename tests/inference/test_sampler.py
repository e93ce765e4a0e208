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


def test_repetition_penalty_divides_positive_and_multiplies_negative_logits() -> None:
    from pyagent.inference.sampler import adjust_logits

    logits = np.array([2.0, -1.0, 3.0, 0.5], dtype=np.float32)
    out = adjust_logits(logits, SamplingParams(repetition_penalty=2.0), [0], [1], [])
    np.testing.assert_allclose(out, [1.0, -2.0, 3.0, 0.5])
    assert logits[0] == 2.0  # the caller's row is not modified


def test_frequency_and_presence_penalties_count_output_tokens_only() -> None:
    from pyagent.inference.sampler import adjust_logits

    logits = np.zeros(4, dtype=np.float32)
    out = adjust_logits(logits, SamplingParams(frequency_penalty=0.5, presence_penalty=0.25), [3, 3], [1, 1, 2], [])
    np.testing.assert_allclose(out, [0.0, -1.25, -0.75, 0.0])


def test_min_tokens_masks_eos_until_reached() -> None:
    from pyagent.inference.sampler import adjust_logits

    logits = np.array([0.0, 5.0, 1.0], dtype=np.float32)
    params = SamplingParams(min_tokens=2, temperature=0.0)
    masked = adjust_logits(logits, params, [0], [2], eos_ids=[1])
    assert sample(masked, params, np.random.default_rng(0)) == 2
    assert adjust_logits(logits, params, [0], [2, 2], eos_ids=[1])[1] == 5.0


def test_min_p_drops_unlikely_tokens() -> None:
    # 0.05 / 0.4 = 0.125 < 0.2: token 0 is never drawn; 0.1 / 0.4 = 0.25 keeps token 4
    freq = draws(SamplingParams(temperature=1.0, min_p=0.2))
    assert freq[0] == 0.0 and freq[4] > 0.05
    np.testing.assert_allclose(freq[1:], np.array([0.4, 0.3, 0.15, 0.1]) / 0.95, atol=0.03)


def test_new_parameters_are_validated_by_name() -> None:
    import pytest

    for kw, name in (({"min_p": 2.0}, "min_p"), ({"repetition_penalty": 0.0}, "repetition_penalty"),
                     ({"repetition_penalty": 5e-324}, "repetition_penalty"),
                     ({"frequency_penalty": 3.0}, "frequency_penalty"), ({"min_tokens": 500}, "min_tokens")):
        with pytest.raises(ValueError, match=name):
            SamplingParams(**kw).validate()  # type: ignore[arg-type]


def test_token_mask_bits_select_the_allowed_tokens() -> None:
    from pyagent.inference.sampler import apply_token_mask

    logits = np.arange(40, dtype=np.float32)
    mask = np.zeros(2, dtype=np.int32)
    mask[0] = (1 << 3) | (1 << 5)
    mask[1] = 1 << (33 - 32)
    out = apply_token_mask(logits, mask)
    assert np.flatnonzero(np.isfinite(out)).tolist() == [3, 5, 33]
    assert sample(out, SamplingParams(temperature=0.0), np.random.default_rng(0)) == 33
    assert {sample(out, SamplingParams(temperature=50.0), np.random.default_rng(s)) for s in range(40)} <= {3, 5, 33}
    # a mask that allows nothing (a broken grammar) does not turn the row into NaNs
    np.testing.assert_array_equal(apply_token_mask(logits, np.zeros(2, dtype=np.int32)), logits)


def test_token_logprob_is_the_log_softmax_with_its_top_k() -> None:
    from pyagent.inference.sampler import token_logprob

    lp = token_logprob(LOGITS, 2, 3)
    np.testing.assert_allclose(lp.logprob, np.log(0.3), rtol=1e-5)
    assert [t for t, _ in lp.top] == [1, 2, 3]
    np.testing.assert_allclose([v for _, v in lp.top], np.log([0.4, 0.3, 0.15]), rtol=1e-5)
    assert token_logprob(LOGITS, 0, 0).top == ()


def test_grammar_masks_follow_the_schema_on_the_tiny_vocabulary(tiny_dir: object) -> None:
    import json
    from pathlib import Path

    from pyagent.inference.grammar import GrammarCompiler
    from pyagent.inference.sampler import apply_token_mask
    from pyagent.inference.tokenizer import Tokenizer

    tok = Tokenizer.from_dir(Path(str(tiny_dir)))
    compiler = GrammarCompiler(tok, tok.vocab_size)
    schema = {"type": "object", "properties": {"ok": {"type": "boolean"}}, "required": ["ok"],
              "additionalProperties": False}
    a, b = compiler.matcher(schema), compiler.matcher(schema)
    rng = np.random.default_rng(0)
    out: list[int] = []
    for _ in range(40):  # random logits: the mask alone must produce valid JSON; b stays at the start
        masks = compiler.masks([a, b])
        token = sample(apply_token_mask(rng.normal(size=tok.vocab_size).astype(np.float32), masks[0]),
                       SamplingParams(temperature=1.0), rng)
        assert a.consume_token(token)
        out.append(token)
        if a.is_stopped():
            break
    assert json.loads(tok.decode(out)) in ({"ok": True}, {"ok": False})
    assert tok.decode([t for t in range(tok.vocab_size) if masks[1][t // 32] >> (t % 32) & 1]).strip()[:1] == "{"
