"""Log-probabilities in the shapes the OpenAI APIs return them (chat ``logprobs.content``, responses
``output_text.logprobs``): each token's text, its UTF-8 bytes and its top alternatives."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol


class LogprobLike(Protocol):
    token_id: int
    logprob: float
    top: tuple[tuple[int, float], ...]


def _entry(token_bytes: Callable[[int], bytes], token_id: int, logprob: float) -> dict[str, Any]:
    raw = token_bytes(token_id)
    return {"token": raw.decode("utf-8", errors="replace"), "bytes": list(raw), "logprob": logprob}


def format_logprobs(token_bytes: Callable[[int], bytes], logprobs: Sequence[LogprobLike],
                    top_n: int) -> list[dict[str, Any]]:
    """One entry per generated token, with ``top_n`` alternatives (the engine computed at least that many)."""
    return [{**_entry(token_bytes, lp.token_id, lp.logprob),
             "top_logprobs": [_entry(token_bytes, t, v) for t, v in lp.top[:top_n]]} for lp in logprobs]
