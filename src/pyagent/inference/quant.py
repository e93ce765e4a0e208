"""Weight matrices that stay quantized in memory, and the one matrix product the forward pass uses.

A :class:`QuantLinear` is one or more GGML-quantized matrices stacked along their output rows (q/k/v,
gate/up); its bytes are views of the memory-mapped GGUF file. Few rows of ``x`` (decode, small batches)
go through the Rust kernel, which decodes blocks in registers and reads the weights once per call. Many
rows (prompt processing) are compute-bound: the matrix is decoded to float32 a slice at a time and
multiplied with BLAS, which is faster there than any hand-written kernel.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from pyagent import _rust

# Batch size from which decoding to float32 + BLAS beats the quantized kernel (measured on AVX2: at 16 rows
# the kernel still wins, and below this the transient float32 copy of e.g. a tied 49k-row vocabulary
# projection, 113 MB, would be made on every decode step of a 16-sequence batch).
BLAS_MIN_ROWS = 32
# Rows decoded at once on the BLAS path (bounds the transient float32 copy).
_DEQUANT_ROWS = 8192


@dataclass(frozen=True)
class QuantMatrix:
    """``rows x cols`` weights as raw GGML blocks (``data`` is uint8, row-major)."""

    data: np.ndarray
    type_id: int
    rows: int
    cols: int

    def dequantize(self, ids: np.ndarray | None = None, out: np.ndarray | None = None) -> np.ndarray:
        """Float32 rows (all, or those in ``ids``): ``[len, cols]``, written into ``out`` when given
        (C-contiguous float32 of that shape, e.g. a row slice of a larger matrix)."""
        idx = None if ids is None else np.ascontiguousarray(ids, dtype=np.int64).reshape(-1)
        if out is None:
            out = np.empty((self.rows if idx is None else len(idx), self.cols), dtype=np.float32)
        if idx is None:
            _rust.quant_dequantize(out, self.data, self.type_id, self.rows)
        else:
            _rust.quant_dequantize(out, self.data, self.type_id, self.rows, idx)
        return out

    def row_slice(self, start: int, stop: int) -> QuantMatrix:
        per_row = self.data.size // self.rows
        return QuantMatrix(self.data[start * per_row:stop * per_row], self.type_id, stop - start, self.cols)


@dataclass(frozen=True)
class QuantLinear:
    """``x @ concat(parts).T``: quantized matrices sharing one input, their outputs side by side."""

    parts: tuple[QuantMatrix, ...]

    @property
    def out_features(self) -> int:
        return sum(p.rows for p in self.parts)

    def __call__(self, x: np.ndarray, int8: str | None = None) -> np.ndarray:
        """``int8`` names int8-activation kernels (``"auto"``: the fastest here) for the few-row kernel path;
        None keeps float activations (exact up to float rounding)."""
        x = np.ascontiguousarray(x, dtype=np.float32)
        if x.shape[0] >= BLAS_MIN_ROWS:
            return _blas(x, self.parts)
        out = np.empty((x.shape[0], self.out_features), dtype=np.float32)
        _rust.quant_matmul(out, x, [p.data for p in self.parts], [p.type_id for p in self.parts],
                           [p.rows for p in self.parts], int8=int8)
        return out


def _blas(x: np.ndarray, parts: tuple[QuantMatrix, ...]) -> np.ndarray:
    """``x @ concat(parts).T``: consecutive parts (or row slices of a large one) decoded side by side into
    one float32 matrix of at most ``_DEQUANT_ROWS`` rows, one product per such matrix, written straight
    into its columns of the output (no concatenation)."""
    pieces = [p.row_slice(s, min(s + _DEQUANT_ROWS, p.rows)) for p in parts for s in range(0, p.rows, _DEQUANT_ROWS)]
    groups: list[list[QuantMatrix]] = [[]]
    for piece in pieces:
        if groups[-1] and sum(m.rows for m in groups[-1]) + piece.rows > _DEQUANT_ROWS:
            groups.append([])
        groups[-1].append(piece)
    out = np.empty((x.shape[0], sum(p.rows for p in parts)), dtype=np.float32)
    at = 0
    for group in groups:
        w = np.empty((sum(m.rows for m in group), parts[0].cols), dtype=np.float32)
        row = 0
        for m in group:
            m.dequantize(out=w[row:row + m.rows])
            row += m.rows
        np.matmul(x, w.T, out=out[:, at:at + row])
        at += row
    return out


Linear = np.ndarray | QuantLinear  # dense weights are [in, out] float32


def linear(x: np.ndarray, w: Linear) -> np.ndarray:
    """``x @ w`` for dense ``[in, out]`` weights or a quantized :class:`QuantLinear`."""
    if isinstance(w, QuantLinear):
        return w(x)
    out: np.ndarray = np.asarray(x @ w, dtype=np.float32)
    return out


def embedding_rows(table: np.ndarray | QuantMatrix, ids: Sequence[int] | np.ndarray) -> np.ndarray:
    """Rows of an embedding table, decoding only those rows when it is quantized."""
    if isinstance(table, QuantMatrix):
        return table.dequantize(np.asarray(ids, dtype=np.int64))
    return np.asarray(table[np.asarray(ids, dtype=np.int64)], dtype=np.float32)
