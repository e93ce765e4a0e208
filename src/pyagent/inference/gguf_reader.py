"""Read a GGUF file: header, metadata and tensor table, with tensor data as memory-mapped views.

GGUF (llama.cpp's format) is little-endian: magic ``GGUF``, version, tensor and metadata counts, the
metadata key/value pairs, the tensor infos (name, dims, type, offset), then the aligned data section.
Nothing is copied: each tensor is a ``numpy`` view of its bytes in one read-only ``mmap`` of the file,
so a 4-bit model stays 4-bit in memory and pages are shared with the OS cache.
"""

from __future__ import annotations

import math
import mmap
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pyagent.inference.errors import ModelLoadError

GGUF_MAGIC = b"GGUF"
DEFAULT_ALIGNMENT = 32
MAX_DIMS = 4  # ggml's GGML_MAX_DIMS
_REQUIRED: Any = object()  # a typed accessor's default: the key must be present

# ggml type id -> (name, elements per block, bytes per block)
GGML_TYPES: dict[int, tuple[str, int, int]] = {
    0: ("F32", 1, 4),
    1: ("F16", 1, 2),
    2: ("Q4_0", 32, 18),
    3: ("Q4_1", 32, 20),
    6: ("Q5_0", 32, 22),
    7: ("Q5_1", 32, 24),
    8: ("Q8_0", 32, 34),
    9: ("Q8_1", 32, 36),
    10: ("Q2_K", 256, 84),
    11: ("Q3_K", 256, 110),
    12: ("Q4_K", 256, 144),
    13: ("Q5_K", 256, 176),
    14: ("Q6_K", 256, 210),
    15: ("Q8_K", 256, 292),
    24: ("I8", 1, 1),
    25: ("I16", 1, 2),
    26: ("I32", 1, 4),
    27: ("I64", 1, 8),
    28: ("F64", 1, 8),
    30: ("BF16", 1, 2),
}

# metadata value type id -> struct format of a scalar (8 = string, 9 = array handled separately)
_SCALARS: dict[int, str] = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?",
                            10: "<Q", 11: "<q", 12: "<d"}
_NUMPY_SCALARS: dict[int, str] = {0: "<u1", 1: "<i1", 2: "<u2", 3: "<i2", 4: "<u4", 5: "<i4", 6: "<f4",
                                  7: "<u1", 10: "<u8", 11: "<i8", 12: "<f8"}


@dataclass(frozen=True)
class GGUFTensor:
    """One tensor: ``shape`` is numpy order (rows first), ``data`` the raw bytes of its blocks."""

    name: str
    type_id: int
    shape: tuple[int, ...]
    data: np.ndarray  # uint8 view into the mapped file

    @property
    def type_name(self) -> str:
        return GGML_TYPES[self.type_id][0]

    @property
    def n_elements(self) -> int:
        return math.prod(self.shape)


class _Cursor:
    """Bounds-checked little-endian reads over the mapped header, naming the file on truncation."""

    def __init__(self, buf: mmap.mmap, path: Path) -> None:
        self.buf = buf
        self.pos = 0
        self.path = path
        self.where = "the header"

    def take(self, n: int) -> bytes:
        end = self.pos + n
        if n < 0 or end > len(self.buf):
            raise ModelLoadError(f"{self.path}: file is truncated while reading {self.where} "
                                 f"(needs byte {end}, file has {len(self.buf)})")
        out = self.buf[self.pos:end]
        self.pos = end
        return out

    def scalar(self, fmt: str) -> Any:
        return struct.unpack(fmt, self.take(struct.calcsize(fmt)))[0]

    def string(self) -> str:
        n = self.scalar("<Q")
        raw = self.take(n)
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            return raw.decode("utf-8", errors="replace")

    def value(self, vtype: int) -> Any:
        if vtype in _SCALARS:
            return self.scalar(_SCALARS[vtype])
        if vtype == 8:
            return self.string()
        if vtype == 9:
            item_type = self.scalar("<I")
            count = self.scalar("<Q")
            if item_type in _NUMPY_SCALARS:  # numeric arrays (token scores, types) in one read
                dtype = np.dtype(_NUMPY_SCALARS[item_type])
                arr = np.frombuffer(self.take(count * dtype.itemsize), dtype=dtype)
                return arr.astype(bool) if item_type == 7 else arr
            return [self.value(item_type) for _ in range(count)]
        raise ModelLoadError(f"{self.path}: unknown metadata value type {vtype} in {self.where}")


def is_gguf(path: Path) -> bool:
    """Whether ``path`` starts with the GGUF magic (a model file given without the .gguf suffix)."""
    try:
        with path.open("rb") as fh:
            return fh.read(4) == GGUF_MAGIC
    except OSError:
        return False


class GGUFFile:
    """An open GGUF file: ``metadata`` (key -> value) and ``tensors`` (name -> :class:`GGUFTensor`)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        try:
            with self.path.open("rb") as fh:
                self._mm = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
        except (OSError, ValueError) as exc:  # ValueError: an empty file cannot be mapped
            raise ModelLoadError(f"cannot open GGUF file {self.path}: {exc}") from None
        self.metadata: dict[str, Any] = {}
        self.tensors: dict[str, GGUFTensor] = {}
        self._parse()

    def _parse(self) -> None:
        cur = _Cursor(self._mm, self.path)
        if cur.take(4) != GGUF_MAGIC:
            raise ModelLoadError(f"{self.path} is not a GGUF file (no 'GGUF' magic)")
        self.version = cur.scalar("<I")
        if self.version not in (2, 3):
            raise ModelLoadError(f"{self.path}: GGUF version {self.version} is not supported (2 or 3)")
        n_tensors, n_kv = cur.scalar("<Q"), cur.scalar("<Q")
        for i in range(n_kv):
            cur.where = f"metadata entry {i}"
            key = cur.string()
            cur.where = f"metadata key {key!r}"
            self.metadata[key] = cur.value(cur.scalar("<I"))
        infos: list[tuple[str, tuple[int, ...], int, int]] = []
        for i in range(n_tensors):
            cur.where = f"tensor info {i}"
            name = cur.string()
            cur.where = f"tensor info of {name!r}"
            n_dims = cur.scalar("<I")
            if n_dims > MAX_DIMS:
                raise ModelLoadError(f"{self.path}: tensor {name!r} has {n_dims} dimensions (ggml allows {MAX_DIMS})")
            dims = tuple(int(cur.scalar("<Q")) for _ in range(n_dims))
            infos.append((name, dims[::-1], cur.scalar("<I"), cur.scalar("<Q")))
        alignment = self.integer("general.alignment", DEFAULT_ALIGNMENT, minimum=1)
        data_start = -(-cur.pos // alignment) * alignment
        for name, shape, type_id, offset in infos:
            if type_id not in GGML_TYPES:
                raise ModelLoadError(f"{self.path}: tensor {name!r} has unknown ggml type {type_id}")
            _, block, block_bytes = GGML_TYPES[type_id]
            count = math.prod(shape)  # Python integers: a forged shape cannot wrap around to a small size
            if shape and shape[-1] % block:
                raise ModelLoadError(f"{self.path}: tensor {name!r} row length {shape[-1]} is not a multiple "
                                     f"of its {GGML_TYPES[type_id][0]} block size {block}")
            nbytes = count // block * block_bytes
            start = data_start + offset
            if start + nbytes > len(self._mm):
                raise ModelLoadError(f"{self.path}: file is truncated: tensor {name!r} needs bytes "
                                     f"{start}..{start + nbytes}, file has {len(self._mm)}")
            data = np.frombuffer(self._mm, dtype=np.uint8, count=nbytes, offset=start)
            self.tensors[name] = GGUFTensor(name, type_id, shape, data)

    def get(self, key: str, default: Any = None) -> Any:
        return self.metadata.get(key, default)

    def require(self, key: str) -> Any:
        if key not in self.metadata:
            raise ModelLoadError(f"{self.path}: GGUF metadata lacks the required key {key!r}")
        return self.metadata[key]

    # Typed reads: a file is untrusted input, and a key of the wrong type or range must fail here, naming
    # the file and the key, not as a TypeError deep in the loader (or, worse, be used as it is).

    def _absent(self, key: str, default: Any) -> bool:
        """Whether ``key`` is missing (then its accessor returns ``default``), raising if it is required."""
        if key in self.metadata:
            return False
        if default is _REQUIRED:
            self.require(key)
        return True

    def _wrong(self, key: str, value: Any, expected: str) -> ModelLoadError:
        shown = repr(value[:20].tolist() if isinstance(value, np.ndarray) else value)
        shown = shown if len(shown) <= 60 else shown[:57] + "..."
        return ModelLoadError(f"{self.path}: metadata key {key!r} is {shown} ({_kind(value)}); expected {expected}")

    def integer(self, key: str, default: Any = _REQUIRED, *, minimum: int | None = None) -> Any:
        """An integer (``default``, which may be None, when absent), at least ``minimum``."""
        if self._absent(key, default):
            return default
        value = self.metadata[key]
        if isinstance(value, bool) or not isinstance(value, int | np.integer):
            raise self._wrong(key, value, "an integer")
        if minimum is not None and value < minimum:
            raise self._wrong(key, value, f"an integer of at least {minimum}")
        return int(value)

    def number(self, key: str, default: Any = _REQUIRED, *, positive: bool = False) -> Any:
        """A finite number (``default`` when absent), above zero if ``positive``."""
        if self._absent(key, default):
            return default
        value = self.metadata[key]
        if isinstance(value, bool) or not isinstance(value, int | float | np.integer | np.floating):
            raise self._wrong(key, value, "a number")
        if not math.isfinite(value) or (positive and value <= 0):
            raise self._wrong(key, value, "a finite number above 0" if positive else "a finite number")
        return float(value)

    def text(self, key: str, default: Any = _REQUIRED) -> Any:
        if self._absent(key, default):
            return default
        value = self.metadata[key]
        if not isinstance(value, str):
            raise self._wrong(key, value, "a string")
        return value

    def flag(self, key: str, default: bool) -> bool:
        value = self.metadata.get(key, default)
        if not isinstance(value, bool | np.bool_):
            raise self._wrong(key, value, "a boolean")
        return bool(value)

    def strings(self, key: str, default: Any = _REQUIRED) -> Any:
        """An array of strings as a list (a GGUF array has one item type, so its first item tells)."""
        if self._absent(key, default):
            return default
        value = self.metadata[key]
        if not isinstance(value, list) or (value and not isinstance(value[0], str)):
            raise self._wrong(key, value, "an array of strings")
        return value

    def numbers(self, key: str, length: int, default: Any = _REQUIRED, *, integral: bool = False) -> Any:
        """A numeric array of ``length`` entries (integers if ``integral``) as a NumPy array."""
        if self._absent(key, default):
            return default
        value = self.metadata[key]
        kinds = "iu" if integral else "iuf"
        if not isinstance(value, np.ndarray) or value.dtype.kind not in kinds:
            raise self._wrong(key, value, "an array of integers" if integral else "an array of numbers")
        if len(value) != length:
            raise ModelLoadError(f"{self.path}: metadata key {key!r} has {len(value)} entries; expected {length} "
                                 "(one per token)")
        return value

    def token_id(self, key: str, n_tokens: int, *, outside_is_none: bool = False) -> int | None:
        """A token id within the vocabulary, or None when absent. ``outside_is_none`` for the unknown and
        padding ids: converters write an id past the vocabulary (or -1) for "there is none"."""
        value: int | None = self.integer(key, None)
        if value is not None and not 0 <= value < n_tokens:
            if outside_is_none:
                return None
            raise self._wrong(key, value, f"a token id below the vocabulary's {n_tokens} tokens")
        return value


def _kind(value: Any) -> str:
    if isinstance(value, bool | np.bool_):
        return "a boolean"
    if isinstance(value, int | np.integer):
        return "an integer"
    if isinstance(value, float | np.floating):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list | np.ndarray):
        return f"an array of {len(value)}"
    return type(value).__name__
