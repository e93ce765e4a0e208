"""The versioned wire envelope every Voyager frame travels in.

One msgpack array ``[version, kind, msg_id, payload]`` per ZeroMQ frame. Decoding never trusts
the sender: the size is checked before unpacking, msgpack's own container limits are capped,
and anything that is not exactly this shape raises :class:`EnvelopeError` so the transport can
drop and count it instead of crashing.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import msgpack

PROTOCOL_VERSION = 1
DEFAULT_MAX_BYTES = 16 * 1024 * 1024
MAX_KIND_LEN = 64
MAX_ID_LEN = 64


class EnvelopeError(ValueError):
    """A frame that is not a valid envelope (malformed, wrong version or shape)."""


class OversizedError(EnvelopeError):
    """A frame larger than the configured limit."""


def new_msg_id() -> bytes:
    """A random 12-byte message id: unique enough per connection, cheap to make."""
    return os.urandom(12)


@dataclass(frozen=True, slots=True)
class Envelope:
    kind: str
    payload: Any = None
    msg_id: bytes = field(default_factory=new_msg_id)
    version: int = PROTOCOL_VERSION

    def encode(self, max_bytes: int = DEFAULT_MAX_BYTES) -> bytes:
        data: bytes = msgpack.packb([self.version, self.kind, self.msg_id, self.payload], use_bin_type=True)
        if len(data) > max_bytes:
            raise OversizedError(f"envelope of {len(data)} bytes exceeds the {max_bytes}-byte limit")
        return data

    @classmethod
    def decode(cls, data: bytes, max_bytes: int = DEFAULT_MAX_BYTES) -> Envelope:
        if len(data) > max_bytes:
            raise OversizedError(f"frame of {len(data)} bytes exceeds the {max_bytes}-byte limit")
        try:
            obj = msgpack.unpackb(
                data,
                raw=False,
                strict_map_key=True,
                max_bin_len=max_bytes,
                max_str_len=max_bytes,
                max_array_len=1 << 20,
                max_map_len=1 << 20,
                max_ext_len=0,
            )
        except Exception as exc:  # msgpack raises several unrelated types on garbage
            raise EnvelopeError(f"undecodable frame: {type(exc).__name__}") from None
        if not isinstance(obj, list) or len(obj) != 4:
            raise EnvelopeError("frame is not a 4-element envelope")
        version, kind, msg_id, payload = obj
        if version != PROTOCOL_VERSION or isinstance(version, bool):
            raise EnvelopeError(f"unsupported envelope version {version!r}")
        if not isinstance(kind, str) or not 0 < len(kind) <= MAX_KIND_LEN:
            raise EnvelopeError("envelope kind must be a short string")
        if not isinstance(msg_id, bytes) or not 0 < len(msg_id) <= MAX_ID_LEN:
            raise EnvelopeError("envelope msg_id must be short bytes")
        return cls(kind=kind, payload=payload, msg_id=msg_id, version=version)
