"""Sampling parameters and turning one logits row into a token.

Greedy, temperature, top-k, top-p and min-p; the repetition penalty (transformers' rule over prompt and
output: divide positive logits, multiply negative ones), OpenAI's frequency and presence penalties (over
the generated tokens, as vLLM applies them) and vLLM's ``min_tokens`` (end-of-sequence ids are masked
until that many tokens exist) all act on the logits before the choice, so they apply to greedy decoding
too. A grammar's token mask (structured output, see ``grammar``) is applied last, per sequence, and
log-probabilities are reported from the model's own distribution, before any of these adjustments (as
OpenAI reports them).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass
class SamplingParams:
    """How to pick tokens and when to stop. ``temperature == 0`` means greedy."""

    max_tokens: int = 256
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0  # 0 = off
    seed: int | None = None
    stop: list[str] = field(default_factory=list)
    ignore_eos: bool = False
    min_p: float = 0.0  # 0 = off
    repetition_penalty: float = 1.0  # 1 = off
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0
    min_tokens: int = 0
    json_schema: dict[str, Any] | None = None  # structured output: the text must be JSON matching it
    logprobs: int | None = None  # None = off; k = the chosen token's log-probability plus the k most likely

    def validate(self) -> None:
        if not isinstance(self.max_tokens, int) or self.max_tokens < 1:
            raise ValueError(f"max_tokens must be a positive integer, got {self.max_tokens!r}")
        if not self.temperature >= 0.0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature!r}")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p!r}")
        if not isinstance(self.top_k, int) or self.top_k < 0:
            raise ValueError(f"top_k must be a non-negative integer (0 = off), got {self.top_k!r}")
        if not isinstance(self.stop, list) or not all(isinstance(s, str) and s for s in self.stop):
            raise ValueError("stop must be a list of non-empty strings")
        if not 0.0 <= self.min_p <= 1.0:
            raise ValueError(f"min_p must be in [0, 1], got {self.min_p!r}")
        if not 0.01 <= self.repetition_penalty <= 10.0:  # below 0.01 dividing a logit by it overflows
            raise ValueError(f"repetition_penalty must be in [0.01, 10], got {self.repetition_penalty!r}")
        for name in ("frequency_penalty", "presence_penalty"):
            if not -2.0 <= getattr(self, name) <= 2.0:
                raise ValueError(f"{name} must be in [-2, 2], got {getattr(self, name)!r}")
        if not isinstance(self.min_tokens, int) or not 0 <= self.min_tokens <= self.max_tokens:
            raise ValueError(f"min_tokens must be an integer in [0, max_tokens], got {self.min_tokens!r}")
        if self.json_schema is not None and not isinstance(self.json_schema, dict):
            raise ValueError("json_schema must be a JSON schema object")
        if self.logprobs is not None and (not isinstance(self.logprobs, int) or not 0 <= self.logprobs <= 20):
            raise ValueError(f"logprobs must be an integer in [0, 20], got {self.logprobs!r}")

    @property
    def adjusts_logits(self) -> bool:
        return (self.repetition_penalty != 1.0 or self.frequency_penalty != 0.0 or self.presence_penalty != 0.0
                or self.min_tokens > 0)


def adjust_logits(logits: np.ndarray, params: SamplingParams, prompt_ids: Sequence[int],
                  output_ids: Sequence[int], eos_ids: Iterable[int]) -> np.ndarray:
    """A copy of ``logits`` with the penalties and the ``min_tokens`` EOS mask applied."""
    out = np.array(logits, dtype=np.float32)
    if params.repetition_penalty != 1.0:
        seen = np.unique(np.asarray([*prompt_ids, *output_ids], dtype=np.int64))
        vals = out[seen]
        out[seen] = np.where(vals > 0, vals / params.repetition_penalty, vals * params.repetition_penalty)
    if (params.frequency_penalty or params.presence_penalty) and len(output_ids):
        ids, counts = np.unique(np.asarray(output_ids, dtype=np.int64), return_counts=True)
        out[ids] -= counts * np.float32(params.frequency_penalty) + np.float32(params.presence_penalty)
    if len(output_ids) < params.min_tokens:
        eos = [e for e in eos_ids if 0 <= e < out.shape[0]]
        out[eos] = -np.inf
    return out


def sample(logits: np.ndarray, params: SamplingParams, rng: np.random.Generator) -> int:
    """Pick the next token from one row of logits."""
    if params.temperature == 0.0 or params.top_k == 1:
        return int(np.argmax(logits))
    scaled = logits.astype(np.float64) / params.temperature
    candidates = np.arange(scaled.shape[0])
    if 0 < params.top_k < scaled.shape[0]:
        candidates = np.argpartition(-scaled, params.top_k - 1)[: params.top_k]
        scaled = scaled[candidates]
    order = np.argsort(-scaled, kind="stable")
    scaled, candidates = scaled[order], candidates[order]
    probs = np.exp(scaled - scaled[0])
    if params.min_p > 0.0:  # keep tokens at least min_p times as likely as the most likely one
        keep = int(np.count_nonzero(probs >= params.min_p))
        probs, candidates = probs[:keep], candidates[:keep]
    probs /= probs.sum()
    if params.top_p < 1.0:
        # Keep the smallest head of the sorted distribution whose mass reaches top_p.
        keep = int(np.searchsorted(np.cumsum(probs), params.top_p) + 1)
        probs = probs[:keep] / probs[:keep].sum()
        candidates = candidates[:keep]
    choice = int(np.searchsorted(np.cumsum(probs), rng.random() * probs.sum(), side="right"))
    return int(candidates[min(choice, len(candidates) - 1)])


def apply_token_mask(logits: np.ndarray, bitmask: np.ndarray) -> np.ndarray:
    """A copy of ``logits`` where tokens whose bit is clear in ``bitmask`` (int32 words, bit ``i % 32`` of
    word ``i // 32``) can never be chosen. A mask that allows nothing leaves the row as it was."""
    allowed = np.unpackbits(np.ascontiguousarray(bitmask, dtype=np.int32).view(np.uint8),
                            bitorder="little")[: logits.shape[0]].astype(bool)
    if not allowed.any():
        return np.array(logits, dtype=np.float32)
    return np.where(allowed, logits, np.float32(-np.inf)).astype(np.float32, copy=False)


@dataclass(frozen=True)
class TokenLogprob:
    """The chosen token's log-probability and the ``k`` most likely alternatives (most likely first)."""

    token_id: int
    logprob: float
    top: tuple[tuple[int, float], ...] = ()


def token_logprob(logits: np.ndarray, token: int, k: int) -> TokenLogprob:
    """Log-probabilities of one position from its raw logits row (log-softmax in float64)."""
    row = logits.astype(np.float64)
    shifted = row - row.max()
    logp = shifted - np.log(np.exp(shifted).sum())
    top: tuple[tuple[int, float], ...] = ()
    if k > 0:
        k = min(k, logp.shape[0])
        head = np.argpartition(-logp, k - 1)[:k]
        head = head[np.argsort(-logp[head], kind="stable")]
        top = tuple((int(i), float(logp[i])) for i in head)
    return TokenLogprob(int(token), float(logp[token]), top)
