"""Record types and value checks shared by the parts of the knowledge store."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import msgpack

__all__ = [
    "BATCH",
    "MAX_WEIGHT",
    "Edge",
    "Fact",
    "Hit",
    "check_text",
    "check_weight",
    "origin_tail",
    "pack_fact",
    "pack_value",
    "unpack_fact",
    "unpack_value",
]

MAX_WEIGHT = 1e9
BATCH = 500  # keys per SQL statement in batched reads (well under SQLite's variable limit)


@dataclass(frozen=True, slots=True)
class Fact:
    """One structured fact. ``weight`` is the stored weight as of ``last_used_cycle`` (undecayed).

    ``created_cycle`` is the cycle in which the current value was put (a put replaces the fact,
    value and provenance together). ``provenance`` is the task lineage that produced it.
    """

    namespace: str
    key: str
    value: Any
    weight: float
    created_cycle: int
    last_used_cycle: int
    provenance: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Edge:
    subject: str
    predicate: str
    object: str
    weight: float
    last_used_cycle: int


@dataclass(frozen=True, slots=True)
class Hit:
    """A semantic search result; ``score`` is the cosine similarity in [-1, 1]."""

    namespace: str
    key: str
    text: str
    score: float


def pack_value(value: Any, what: str) -> bytes:
    try:
        return msgpack.packb(value, use_bin_type=True)
    except (TypeError, ValueError, OverflowError) as exc:
        raise TypeError(
            f"{what} cannot be stored: {exc}; values must be msgpack-encodable "
            "(None, bool, int, float, str, bytes, and lists/dicts of them)"
        ) from None


_unpackb = msgpack.unpackb
_FACT_HEADER = b"\x93"  # msgpack fixarray of 3: [value, created cycle, provenance]


def origin_tail(created: int, provenance: list[str]) -> bytes:
    """The packed (created, provenance) part shared by every fact of one put."""
    return msgpack.packb(created) + msgpack.packb(provenance, use_bin_type=True)


def pack_fact(value: Any, tail: bytes, what: str) -> bytes:
    """One fact's blob: exactly ``msgpack.packb([value, created, provenance])``, built by concatenation."""
    return _FACT_HEADER + pack_value(value, what) + tail


def unpack_value(raw: bytes) -> Any:
    """The value of a fact blob (the first element)."""
    return _unpackb(raw, raw=False, strict_map_key=False)[0]


def unpack_fact(raw: bytes) -> tuple[Any, int, tuple[str, ...]]:
    value, created, provenance = _unpackb(raw, raw=False, strict_map_key=False)
    return value, int(created), tuple(provenance)


def check_text(name: str, value: object) -> str:
    if not isinstance(value, str) or not value:
        raise ValueError(f"{name} must be a non-empty string, got {value!r}")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ValueError(f"{name} {value!r} is not valid UTF-8 text: {exc}") from None
    return value


def check_weight(weight: float) -> float:
    if isinstance(weight, bool) or not isinstance(weight, int | float):
        raise ValueError(f"weight must be a number, got {weight!r}")
    w = float(weight)
    if not math.isfinite(w) or w < 0.0 or w > MAX_WEIGHT:
        raise ValueError(f"weight must be finite and within [0, {MAX_WEIGHT:g}], got {weight!r}")
    return w
