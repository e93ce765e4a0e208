"""Read ``*.safetensors`` files into NumPy arrays, bf16 included.

NumPy has no bfloat16, so the safetensors NumPy loader cannot read bf16 checkpoints; the format is simple
(8-byte header length, JSON header, raw little-endian data), so we parse it and widen bf16 by shifting its
16 bits into the high half of a float32. With ``widen=False`` 16-bit tensors are returned as read-only
views of the memory-mapped file instead (float16, or uint16 holding bf16 bits), so the model's matrices
stay 16-bit in memory and are never copied.
"""

from __future__ import annotations

import json
import mmap
import struct
from pathlib import Path
from typing import Any

import numpy as np

from pyagent.inference.errors import ModelLoadError

_DTYPES: dict[str, np.dtype[Any]] = {
    "F64": np.dtype("<f8"),
    "F32": np.dtype("<f4"),
    "F16": np.dtype("<f2"),
    "BF16": np.dtype("<u2"),
}
_MAX_HEADER = 100 * 1024 * 1024


def read_header(path: Path) -> tuple[int, dict[str, Any]]:
    """The data offset and the tensor table of one safetensors file."""
    try:
        with path.open("rb") as fh:
            head = fh.read(8)
            if len(head) != 8:
                raise ModelLoadError(f"{path} is too short to be a safetensors file")
            (size,) = struct.unpack("<Q", head)
            if size > _MAX_HEADER:
                raise ModelLoadError(f"{path} has an implausible header size ({size} bytes); is it safetensors?")
            header = json.loads(fh.read(size))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelLoadError(f"cannot read the safetensors header of {path}: {exc}") from None
    if not isinstance(header, dict):
        raise ModelLoadError(f"{path}: safetensors header is not a JSON object")
    header.pop("__metadata__", None)
    return 8 + size, header


def load_tensors(path: Path, names: set[str] | None = None, *, widen: bool = True) -> dict[str, np.ndarray]:
    """Float32 copies of the tensors in ``path`` (all, or only ``names``); 16-bit ones as mapped views when
    ``widen`` is false (the mapping lives as long as an array uses it)."""
    offset, header = read_header(path)
    out: dict[str, np.ndarray] = {}
    with path.open("rb") as fh:
        mm = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
        for name, info in header.items():
            if names is not None and name not in names:
                continue
            dtype = _DTYPES.get(info.get("dtype", ""))
            if dtype is None:
                raise ModelLoadError(f"{path}: tensor {name} has unsupported dtype {info.get('dtype')!r}")
            shape = tuple(int(d) for d in info["shape"])
            start, end = (int(x) for x in info["data_offsets"])
            count = int(np.prod(shape)) if shape else 1
            if end - start != count * dtype.itemsize or offset + end > len(mm):
                raise ModelLoadError(f"{path}: tensor {name} has data offsets that do not match its shape")
            raw = np.frombuffer(mm, dtype=dtype, count=count, offset=offset + start)
            if not widen and dtype.itemsize == 2:
                out[name] = raw.reshape(shape)
                continue
            if info["dtype"] == "BF16":
                arr = (raw.astype(np.uint32) << 16).view(np.float32)
            else:
                arr = raw.astype(np.float32)
            out[name] = arr.reshape(shape)
            del raw
    return out


def tensor_files(model_dir: Path) -> dict[Path, set[str] | None]:
    """Which file holds which tensors: a sharded index, one model.safetensors, or every *.safetensors."""
    index = model_dir / "model.safetensors.index.json"
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
        except (OSError, KeyError, TypeError, json.JSONDecodeError) as exc:
            raise ModelLoadError(f"{index} is not a valid safetensors index: {exc}") from None
        files: dict[Path, set[str] | None] = {}
        for name, shard in weight_map.items():
            shard_path = model_dir / shard
            if not shard_path.is_file():
                raise ModelLoadError(f"shard {shard} named in {index.name} is missing from {model_dir}")
            bucket = files.setdefault(shard_path, set())
            assert bucket is not None
            bucket.add(name)
        return files
    single = model_dir / "model.safetensors"
    if single.is_file():
        return {single: None}
    found = sorted(model_dir.glob("*.safetensors"))
    if not found:
        raise ModelLoadError(f"no *.safetensors weights in {model_dir} (PyTorch .bin checkpoints are not supported)")
    return dict.fromkeys(found)


def load_checkpoint(model_dir: Path, *, widen: bool = True) -> dict[str, np.ndarray]:
    tensors: dict[str, np.ndarray] = {}
    for path, names in tensor_files(model_dir).items():
        tensors.update(load_tensors(path, names, widen=widen))
    return tensors
