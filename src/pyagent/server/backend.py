"""What the server needs from an inference engine, and the one place it talks to it.

The server is written against this protocol (a subset of ``pyagent.inference.PagedAttentionEngine``)
so routes never touch engine internals; prompts are built with the tokenizer's chat template so a
follow-up turn shares its prefix with the previous one and hits the engine's prefix cache.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from pyagent.server.errors import APIError


class TokenizerLike(Protocol):
    def encode(self, text: str) -> list[int]: ...
    def decode(self, ids: Sequence[int]) -> str: ...
    def encode_chat(self, messages: Sequence[Mapping[str, str]]) -> list[int]: ...


class OutputLike(Protocol):
    request_id: str
    prompt_token_ids: list[int]
    token_ids: list[int]
    text: str
    text_delta: str
    finished: bool
    finish_reason: str | None
    num_cached_tokens: int  # prompt tokens the engine's prefix cache served
    logprobs: list[Any]  # of the new tokens, when the request asked for them (sampler.TokenLogprob)


class EngineLike(Protocol):
    @property
    def tokenizer(self) -> Any: ...
    @property
    def model_name(self) -> str: ...
    @property
    def max_model_len(self) -> int: ...
    def generate(
        self, prompt_token_ids: list[int], params: Any, request_id: str | None = None
    ) -> AsyncIterator[Any]: ...


@dataclass(frozen=True)
class GenParams:
    max_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int | None = None
    stop: list[str] = field(default_factory=list)
    extras: Mapping[str, Any] = field(default_factory=dict)  # further sampling knobs (top_k, penalties ...)
    schema_field: str = "response_format"  # the request field that carried extras["json_schema"], for errors
    kv_transfer_params: dict[str, Any] | None = None  # for the engine's KV connector (disaggregated serving)


@dataclass(frozen=True)
class Prompt:
    token_ids: list[int]
    dropped_messages: int  # oldest turns removed by truncation="auto"


def _default_params_factory() -> Callable[..., Any]:
    from pyagent.inference.sampler import SamplingParams

    return SamplingParams


class Backend:
    """The engine plus how to turn requests into its inputs."""

    def __init__(self, engine: EngineLike, *, params_factory: Callable[..., Any] | None = None) -> None:
        self.engine = engine
        self.model_name = engine.model_name
        self.max_model_len = engine.max_model_len
        self._params_factory = params_factory or _default_params_factory()

    def _encode_chat(self, messages: Sequence[Mapping[str, str]]) -> list[int]:
        try:
            ids: list[int] = self.engine.tokenizer.encode_chat(list(messages))
        except ValueError as exc:  # the model's chat template refused this conversation (raise_exception)
            raise APIError(400, str(exc), param="messages", code="invalid_prompt") from None
        return ids

    async def build_prompt(
        self,
        system: Sequence[Mapping[str, str]],
        messages: Sequence[Mapping[str, str]],
        *,
        truncation: Literal["auto", "disabled"],
        reserve: int,
    ) -> Prompt:
        """Tokenize the conversation; with ``auto`` drop the oldest turns until ``reserve`` tokens fit."""
        limit = self.max_model_len - reserve

        def encode(drop: int) -> list[int]:
            return self._encode_chat([*system, *messages[drop:]])

        # Turns that cannot fit whatever the tokenizer does are never tokenized: a multi-megabyte
        # input costs a length check, not seconds of CPU (tokenizing 7 MB takes ~30 s here).
        first = 0
        while first < len(messages) and self._min_tokens([*system, *messages[first:]]) > limit:
            first += 1
        ids = await asyncio.to_thread(encode, 0) if first == 0 else None
        if ids is not None and len(ids) <= limit:
            return Prompt(ids, 0)
        if truncation != "auto" or len(messages) <= 1:
            size = f"{len(ids)} tokens" if ids is not None else f"at least {self._min_tokens([*system, *messages])} tokens"
            raise APIError(
                400,
                f"The input is {size}; with room for {reserve} output token(s) it exceeds the "
                f"model's context of {self.max_model_len} tokens. Shorten the input, lower "
                "max_output_tokens, or set truncation to 'auto'.",
                param="input",
                code="context_length_exceeded",
            )
        # Smallest number of dropped turns that fits (fitting is monotone in the number dropped);
        # the newest message is always kept.
        lo, hi, best = max(first, 1), len(messages) - 1, None
        while lo <= hi:
            mid = (lo + hi) // 2
            candidate = await asyncio.to_thread(encode, mid)
            if len(candidate) <= limit:
                best, hi = (mid, candidate), mid - 1
            else:
                lo = mid + 1
        if best is None:
            raise APIError(
                400,
                f"Even the newest message alone exceeds the model's context of {self.max_model_len} tokens "
                f"(with room for {reserve} output token(s)).",
                param="input",
                code="context_length_exceeded",
            )
        return Prompt(best[1], best[0])

    def _min_tokens(self, messages: Sequence[Mapping[str, str]]) -> int:
        """A lower bound on the tokens of ``messages``: no token spans more than ``max_token_chars``
        characters (halved twice more for normalizers that compose characters). 0 when unknown."""
        per = getattr(self.engine.tokenizer, "max_token_chars", None)
        if not isinstance(per, int) or per < 1:
            return 0
        return sum(len(m.get("content", "")) for m in messages) // (4 * per)

    def check_schema(self, schema: Mapping[str, Any], field: str) -> None:
        """Refuse, before anything starts, a JSON schema the engine's grammar engine cannot enforce."""
        grammar = getattr(self.engine, "grammar", None)
        if grammar is None:
            raise APIError(400, "This model's engine cannot enforce a JSON schema.", param=field)
        try:
            grammar.matcher(schema, field)
        except ValueError as exc:
            raise APIError(400, str(exc), param=field, code="invalid_request") from None

    def health(self) -> dict[str, Any]:
        """Liveness plus the KV cache's block counts (a leak shows as free blocks that never come back)."""
        out: dict[str, Any] = {"status": "ok", "model": self.model_name}
        kv = getattr(self.engine, "kv_cache", None)
        if kv is not None:
            out["kv_cache"] = {"total_blocks": kv.num_total_blocks, "free_blocks": kv.num_free_blocks,
                               "cached_blocks": kv.num_cached_blocks, "block_size": kv.block_size,
                               "dtype": kv.dtype, "bytes": kv.nbytes, "bytes_per_token": kv.bytes_per_token}
        connector = getattr(self.engine, "kv_connector", None)
        if connector is not None:
            out["kv_transfer"] = connector.health()
        return out

    def default_max_tokens(self, prompt_len: int) -> int:
        return max(self.max_model_len - prompt_len, 1)

    async def generate(self, prompt: Prompt, params: GenParams, request_id: str) -> AsyncIterator[OutputLike]:
        sampling = self._params_factory(
            max_tokens=params.max_tokens,
            temperature=params.temperature,
            top_p=params.top_p,
            seed=params.seed,
            stop=list(params.stop),
            **params.extras,
        )
        kv = {} if params.kv_transfer_params is None else {"kv_transfer_params": params.kv_transfer_params}
        try:
            stream = self.engine.generate(list(prompt.token_ids), sampling, request_id=request_id, **kv)
        except ValueError as exc:  # a bad prompt, or a schema the grammar engine refused (it names its field)
            param = "input" if getattr(exc, "param", None) is None else params.schema_field
            raise APIError(400, str(exc), param=param,
                           code="invalid_prompt" if param == "input" else "invalid_request") from None
        return stream


async def aclose(stream: AsyncIterator[Any]) -> None:
    """Close an engine stream: the engine aborts the request and frees its KV blocks if it had not finished."""
    close = getattr(stream, "aclose", None)
    if close is not None:
        await close()
