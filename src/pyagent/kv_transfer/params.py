"""The ``kv_transfer_params`` a request carries between router, prefill and decode instances.

The router asks the prefill instance for ``{"do_remote_decode": true}``; the prefill instance answers with
a :class:`RemotePrefill` (which of its blocks hold the prompt, what it sampled next); the router hands
that to the decode instance. Everything arriving here came from a client, so it is checked field by field.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import blake3
import numpy as np

from pyagent.kv_transfer.layout import KVProtocolError

MAX_BLOCKS = 1 << 16


def prompt_digest(token_ids: Sequence[int]) -> str:
    """Identity of a prompt, so the decode side can tell it tokenized the same text to the same ids."""
    return blake3.blake3(np.asarray(token_ids, dtype="<i8").tobytes()).hexdigest()[:32]


def wants_remote_decode(params: dict[str, Any] | None) -> bool:
    return isinstance(params, dict) and params.get("do_remote_decode") is True


@dataclass(frozen=True)
class RemotePrefill:
    engine_id: str
    request_id: str
    block_ids: tuple[int, ...]
    num_tokens: int
    first_token: int
    prompt_digest: str

    def to_params(self) -> dict[str, Any]:
        return {"do_remote_prefill": True, "engine_id": self.engine_id, "request_id": self.request_id,
                "block_ids": list(self.block_ids), "num_tokens": self.num_tokens, "first_token": self.first_token,
                "prompt_digest": self.prompt_digest}

    @classmethod
    def from_params(cls, raw: dict[str, Any], block_size: int) -> RemotePrefill:
        def field(key: str, kind: type[Any]) -> Any:
            value = raw.get(key)
            if not isinstance(value, kind) or isinstance(value, bool):
                raise KVProtocolError(f"kv_transfer_params.{key} must be {kind.__name__}")
            return value

        engine_id, request_id = field("engine_id", str), field("request_id", str)
        num_tokens, first_token = field("num_tokens", int), field("first_token", int)
        digest = field("prompt_digest", str)
        blocks = field("block_ids", list)
        if len(engine_id) > 64 or len(request_id) > 256 or len(digest) > 64:
            raise KVProtocolError("kv_transfer_params: an id is too long")
        if not 0 < num_tokens <= MAX_BLOCKS * block_size or first_token < 0:
            raise KVProtocolError("kv_transfer_params: num_tokens or first_token out of range")
        if len(blocks) != -(-num_tokens // block_size):
            raise KVProtocolError(f"kv_transfer_params: {len(blocks)} blocks cannot hold {num_tokens} tokens")
        if any(not isinstance(b, int) or isinstance(b, bool) or not 0 <= b < 1 << 31 for b in blocks):
            raise KVProtocolError("kv_transfer_params.block_ids must be non-negative integers")
        return cls(engine_id, request_id, tuple(blocks), num_tokens, first_token, digest)
