"""A STAND-IN for the inference engine, used only by the server's fast unit tests.

It implements the engine interface the server relies on (``generate`` as an async iterator that aborts
and frees its blocks when closed, a tokenizer with a chat template, a KV block count) with a trivial
deterministic "model", so the HTTP layer can be tested in isolation. The must-show tests in
``tests/integration/test_server_openai.py`` run on the real ``PagedAttentionEngine`` instead.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field


@dataclass
class StandInParams:
    max_tokens: int = 16
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int | None = None
    stop: list[str] = field(default_factory=list)
    top_k: int = 0
    min_p: float = 0.0
    repetition_penalty: float = 1.0
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0
    ignore_eos: bool = False
    min_tokens: int = 0


@dataclass
class StandInOutput:
    request_id: str
    prompt_token_ids: list[int]
    token_ids: list[int]
    new_token_ids: list[int]
    text: str
    text_delta: str
    finished: bool
    finish_reason: str | None
    num_cached_tokens: int = 0  # the stand-in has no prefix cache


class ByteTokenizer:
    eos_token_id = 0

    def encode(self, text: str) -> list[int]:
        return list(text.encode())

    def decode(self, ids: Sequence[int]) -> str:
        return bytes(ids).decode(errors="replace")

    def apply_chat_template(self, messages: Sequence[Mapping[str, str]]) -> str:
        return "".join(f"{m['role']}: {m['content']}\n" for m in messages) + "assistant:"

    def encode_chat(self, messages: Sequence[Mapping[str, str]]) -> list[int]:
        return self.encode(self.apply_chat_template(messages))


class KVCache:
    def __init__(self, num_blocks: int) -> None:
        self.num_total_blocks = num_blocks
        self.num_free_blocks = num_blocks


class StandInEngine:
    """Generates letters derived from the prompt; stops with 'stop' after ``stop_after`` tokens if set."""

    model_name = "standin"

    def __init__(self, *, max_model_len: int = 512, delay: float = 0.0, stop_after: int | None = None) -> None:
        self.tokenizer = ByteTokenizer()
        self.max_model_len = max_model_len
        self.kv_cache = KVCache(1024)
        self.delay = delay
        self.stop_after = stop_after
        self.prompts: list[list[int]] = []
        self.started = threading.Event()  # set when a generation has taken its blocks

    async def generate(
        self, prompt_token_ids: list[int], params: StandInParams, request_id: str | None = None
    ) -> AsyncIterator[StandInOutput]:
        if len(prompt_token_ids) >= self.max_model_len:
            raise ValueError("prompt too long")
        self.prompts.append(list(prompt_token_ids))
        blocks = (len(prompt_token_ids) + params.max_tokens) // 16 + 1
        self.kv_cache.num_free_blocks -= blocks
        self.started.set()
        try:
            ids: list[int] = []
            seed = sum(prompt_token_ids)
            limit = params.max_tokens if self.stop_after is None else min(params.max_tokens, self.stop_after)
            for i in range(limit):
                if self.delay:
                    await asyncio.sleep(self.delay)
                else:
                    await asyncio.sleep(0)
                tok = ord("a") + (seed + 7 * i) % 26
                ids.append(tok)
                finished = i == limit - 1
                reason = None if not finished else ("length" if limit == params.max_tokens else "stop")
                yield StandInOutput(request_id or "", list(prompt_token_ids), list(ids), [tok],
                                    self.tokenizer.decode(ids), chr(tok), finished, reason)
        finally:
            self.kv_cache.num_free_blocks += blocks
