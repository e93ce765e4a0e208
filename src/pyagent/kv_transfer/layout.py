"""What two instances must agree on before one reads the other's KV blocks, and the handshake check.

Bytes copied between caches are only meaningful when both sides run the same model with the same cache
geometry; a mismatch is refused at the handshake, naming the first field that differs, instead of
producing garbage tokens later.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import blake3

from pyagent.inference.config import ModelConfig
from pyagent.inference.kv_cache import KVCacheManager

HANDSHAKE_VERSION = 1


class KVProtocolError(ValueError):
    """A side-channel message that is not what the protocol says (dropped; the sender is named in the log)."""


@dataclass(frozen=True)
class KVLayout:
    model: str  # model name plus a digest of its configuration
    block_size: int
    dtype: str
    num_layers: int
    num_kv_heads: int
    head_dim: int

    @classmethod
    def of(cls, model_name: str, config: ModelConfig, kv: KVCacheManager) -> KVLayout:
        num_layers, _, num_kv_heads, block_size, head_dim = kv.k_cache.shape
        digest = blake3.blake3(repr(config).encode()).hexdigest()[:16]
        return cls(f"{model_name}@{digest}", int(block_size), str(kv.k_cache.dtype), int(num_layers),
                   int(num_kv_heads), int(head_dim))

    @property
    def compat_hash(self) -> str:
        return blake3.blake3(repr(sorted(asdict(self).items())).encode()).hexdigest()

    @property
    def block_bytes(self) -> int:
        """Bytes of one block's K (or V) across all layers."""
        itemsize = {"float32": 4, "float16": 2, "bfloat16": 2}.get(self.dtype, 4)
        return self.num_layers * self.num_kv_heads * self.block_size * self.head_dim * itemsize

    def to_wire(self) -> dict[str, Any]:
        return {**asdict(self), "compat_hash": self.compat_hash}

    @classmethod
    def from_wire(cls, raw: Any) -> KVLayout:
        if not isinstance(raw, dict):
            raise KVProtocolError("layout is not a map")
        try:
            layout = cls(model=_typed(raw, "model", str), block_size=_typed(raw, "block_size", int),
                         dtype=_typed(raw, "dtype", str), num_layers=_typed(raw, "num_layers", int),
                         num_kv_heads=_typed(raw, "num_kv_heads", int), head_dim=_typed(raw, "head_dim", int))
        except KeyError as exc:
            raise KVProtocolError(f"layout lacks {exc.args[0]!r}") from None
        if raw.get("compat_hash") != layout.compat_hash:
            raise KVProtocolError("layout's compatibility hash does not match its fields")
        return layout

    def mismatch(self, other: KVLayout) -> str | None:
        """Why ``other`` cannot exchange blocks with this layout, or None when it can."""
        for name in ("model", "block_size", "dtype", "num_layers", "num_kv_heads", "head_dim"):
            mine, theirs = getattr(self, name), getattr(other, name)
            if mine != theirs and name == "dtype":
                return (f"KV cache dtype differs: {mine!r} here, {theirs!r} on the peer (start both instances "
                        "with the same --kv-cache-dtype)")
            if mine != theirs:
                return f"{name} differs: {mine!r} here, {theirs!r} on the peer"
        return None


def _typed(raw: dict[str, Any], key: str, kind: type[Any]) -> Any:
    value = raw[key]
    if not isinstance(value, kind) or isinstance(value, bool):
        raise KVProtocolError(f"layout field {key!r} must be {kind.__name__}, got {type(value).__name__}")
    if kind is int and not 0 < value < 1 << 31:
        raise KVProtocolError(f"layout field {key!r} is out of range: {value}")
    if kind is str and len(value) > 256:
        raise KVProtocolError(f"layout field {key!r} is too long")
    return value
