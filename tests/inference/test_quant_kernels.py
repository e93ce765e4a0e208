"""Quantized kernels against an independent reference: the ``gguf`` package's NumPy (de)quantizers.

Random blocks check every format's decoder (exactly, against gguf-py) and the rounding of real
quantization (within the format's own step); the mat-mul kernels are checked against
dequantize-then-float64 on random blocks and on the real model file's tensors.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from gguf import GGMLQuantizationType as T
from gguf import quants

from pyagent import _rust
from pyagent.inference.gguf_reader import GGML_TYPES, GGUFFile
from pyagent.inference.quant import BLAS_MIN_ROWS, QuantLinear, QuantMatrix

SIMPLE = [T.Q4_0, T.Q4_1, T.Q5_0, T.Q5_1, T.Q8_0]
K_TYPES = [T.Q4_K, T.Q5_K, T.Q6_K]
WIDE = [T.F16, T.BF16]  # 16-bit safetensors matrices kept at their width
BITS = {T.Q4_0: 4, T.Q4_1: 4, T.Q5_0: 5, T.Q5_1: 5, T.Q8_0: 8}
# byte offsets of the f16 scales inside one block, for random K-quant blocks with sane scales
K_SCALES = {T.Q4_K: (0, 2), T.Q5_K: (0, 2), T.Q6_K: (208,)}


def random_blocks(qtype: T, rows: int, cols: int, rng: np.random.Generator) -> np.ndarray:
    """``[rows, row_bytes]`` uint8: quantized random floats, or random bytes with small f16 scales (K types)."""
    if qtype in WIDE:
        return np.asarray(quants.quantize(rng.standard_normal((rows, cols)).astype(np.float32), qtype)).view(np.uint8)
    if qtype in SIMPLE:
        return np.asarray(quants.quantize(rng.standard_normal((rows, cols)).astype(np.float32), qtype))
    _, block, block_bytes = GGML_TYPES[int(qtype)]
    raw = rng.integers(0, 256, size=(rows * cols // block, block_bytes), dtype=np.uint8)
    for off in K_SCALES[qtype]:
        raw[:, off:off + 2] = np.frombuffer(
            rng.uniform(0.001, 0.05, size=raw.shape[0]).astype(np.float16).tobytes(), dtype=np.uint8).reshape(-1, 2)
    return raw.reshape(rows, -1)


def ours(data: np.ndarray, qtype: T, rows: int, cols: int) -> np.ndarray:
    return QuantMatrix(np.ascontiguousarray(data).reshape(-1), int(qtype), rows, cols).dequantize()


@pytest.mark.parametrize("qtype", SIMPLE + K_TYPES + WIDE, ids=lambda t: t.name)
def test_decoder_matches_gguf_reference_on_random_blocks(qtype: T) -> None:
    rng = np.random.default_rng(int(qtype))
    rows, cols = 7, 512
    data = random_blocks(qtype, rows, cols, rng)
    want = np.asarray(quants.dequantize(data, qtype), dtype=np.float32).reshape(rows, cols)
    np.testing.assert_allclose(ours(data, qtype, rows, cols), want, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("qtype", SIMPLE, ids=lambda t: t.name)
def test_round_trip_error_is_within_the_formats_step(qtype: T) -> None:
    rng = np.random.default_rng(1)
    x = rng.standard_normal((4, 256)).astype(np.float32)
    back = ours(np.asarray(quants.quantize(x, qtype)), qtype, 4, 256)
    blocks_x, blocks_err = x.reshape(-1, 32), np.abs(back - x).reshape(-1, 32)
    step = 2 * np.abs(blocks_x).max(axis=1) / (2 ** BITS[qtype] - 1)  # one quantization step of each block
    assert (blocks_err.max(axis=1) <= step * 1.01).all()


@pytest.mark.parametrize("qtype", SIMPLE + K_TYPES + WIDE, ids=lambda t: t.name)
@pytest.mark.parametrize("n", [1, 3, 13, BLAS_MIN_ROWS + 1])
def test_matmul_equals_dequantize_then_dot(qtype: T, n: int) -> None:
    rng = np.random.default_rng(int(qtype) * 10 + n)
    cols = 512
    parts = [random_blocks(qtype, rows, cols, rng) for rows in (48, 17)]
    mats = tuple(QuantMatrix(p.reshape(-1), int(qtype), p.shape[0], cols) for p in parts)
    x = rng.standard_normal((n, cols)).astype(np.float32)
    dense = np.concatenate([m.dequantize() for m in mats]).astype(np.float64)
    want = x.astype(np.float64) @ dense.T
    bound = np.abs(x).astype(np.float64) @ np.abs(dense).T  # scale of the sums, for a relative tolerance
    got = QuantLinear(mats)(x)
    assert got.shape == (n, 65)
    assert (np.abs(got - want) <= 1e-5 * bound + 1e-6).all()
    # the kernel itself at every batch size (QuantLinear hands big batches to BLAS), SIMD and portable
    for portable in (False, True):
        direct = np.empty_like(got)
        _rust.quant_matmul(direct, x, [m.data for m in mats], [int(qtype)] * 2, [48, 17], portable=portable)
        assert (np.abs(direct - want) <= 1e-5 * bound + 1e-6).all(), portable


@pytest.mark.parametrize("dequant_rows", [16, 40, 8192])
def test_the_blas_path_decodes_in_groups_with_the_same_product(monkeypatch: pytest.MonkeyPatch,
                                                               dequant_rows: int) -> None:
    """Many rows of x decode the parts side by side, at most ``_DEQUANT_ROWS`` rows at a time: one part
    split over several products (16, 40), a group holding the tail of one part and the next (40), all at once."""
    import pyagent.inference.quant as quant

    monkeypatch.setattr(quant, "_DEQUANT_ROWS", dequant_rows)
    rng = np.random.default_rng(8)
    parts = [random_blocks(T.Q4_K, rows, 512, rng) for rows in (48, 17)]
    mats = tuple(QuantMatrix(p.reshape(-1), int(T.Q4_K), p.shape[0], 512) for p in parts)
    x = rng.standard_normal((BLAS_MIN_ROWS, 512)).astype(np.float32)
    dense = np.concatenate([m.dequantize() for m in mats]).astype(np.float64)
    np.testing.assert_allclose(QuantLinear(mats)(x), x.astype(np.float64) @ dense.T, rtol=1e-4, atol=1e-4)


def test_q8_0_quantization_is_ggmls() -> None:
    rng = np.random.default_rng(5)
    x = (rng.standard_normal((9, 256)) * rng.uniform(0.01, 10, size=(9, 1))).astype(np.float32)
    x[0, :32] = 0.0  # an all-zero block gets scale 0
    out = np.empty(9 * 8 * 34, dtype=np.uint8)
    _rust.quant_quantize_q8_0(out, x)
    assert out.tobytes() == np.asarray(quants.quantize(x, T.Q8_0)).tobytes()
    with pytest.raises(ValueError, match="block size"):
        _rust.quant_quantize_q8_0(np.empty(34, np.uint8), np.zeros((1, 33), np.float32))


def test_kernel_rejects_bad_input_with_a_reason() -> None:
    m = QuantMatrix(np.zeros(20 * 3, dtype=np.uint8), int(T.Q4_1), 2, 64)  # 2 rows of 2 blocks need 80
    with pytest.raises(ValueError, match="bytes"):
        _rust.quant_matmul(np.empty((1, 2), np.float32), np.zeros((1, 64), np.float32), [m.data], [3], [2])
    with pytest.raises(ValueError, match="no quantized kernel"):
        _rust.quant_matmul(np.empty((1, 2), np.float32), np.zeros((1, 64), np.float32), [m.data], [10], [2])
    ok = QuantMatrix(np.zeros(20 * 4, dtype=np.uint8), int(T.Q4_1), 2, 64)
    with pytest.raises(ValueError, match="outside"):
        ok.dequantize(np.array([5]))


def test_real_file_tensors_decode_and_multiply_like_the_reference(smollm2_path: Path) -> None:
    g = GGUFFile(smollm2_path)
    names = [n for n, t in g.tensors.items() if t.type_name != "F32" and (n.startswith("blk.0.") or "embd" in n)]
    kinds = {g.tensors[n].type_name for n in names}
    assert kinds == {"Q4_1", "Q8_0"}  # what this file holds: Q4_1 layers, a Q8_0 (tied) embedding
    rng = np.random.default_rng(0)
    for name in names:
        t = g.tensors[name]
        rows, cols = t.shape
        m = QuantMatrix(t.data, t.type_id, rows, cols)
        want = np.asarray(quants.dequantize(t.data.reshape(rows, -1), T(t.type_id)), dtype=np.float32)
        dense = m.dequantize()
        np.testing.assert_allclose(dense, want.reshape(rows, cols), rtol=1e-6, atol=1e-7, err_msg=name)
        x = rng.standard_normal((2, cols)).astype(np.float32)
        got = QuantLinear((m,))(x)
        exact = x.astype(np.float64) @ dense.T.astype(np.float64)
        bound = np.abs(x).astype(np.float64) @ np.abs(dense.T).astype(np.float64)
        assert (np.abs(got - exact) <= 1e-5 * bound + 1e-6).all(), name
        # the int8-activation kernels (what the decode step uses on this file) against the rounded x
        int8 = np.empty_like(got)
        _rust.quant_matmul(int8, x, [t.data], [t.type_id], [rows], int8="auto")
        xq = q8_round_trip(x).astype(np.float64)
        bound = np.abs(xq) @ np.abs(dense.T).astype(np.float64)
        assert (np.abs(int8 - xq @ dense.T.astype(np.float64)) <= 1e-5 * bound + 1e-6).all(), name


def test_int8_kernels_on_the_real_files_weights_requantized_to_5_bits(smollm2_path: Path) -> None:
    """Q5_0/Q5_1 (what K-quant files store their 576-column matrices in) from the real weights, quantized
    by gguf-py: the int8 kernels against the rounded x (random blocks miss real scale distributions)."""
    g = GGUFFile(smollm2_path)
    rng = np.random.default_rng(4)
    for name in ("blk.0.attn_q.weight", "blk.0.ffn_down.weight"):
        t = g.tensors[name]
        rows, cols = t.shape
        real = QuantMatrix(t.data, t.type_id, rows, cols).dequantize()
        for qtype in (T.Q5_0, T.Q5_1):
            data = np.asarray(quants.quantize(real, qtype)).reshape(-1)
            dense = QuantMatrix(data, int(qtype), rows, cols).dequantize().astype(np.float64)
            x = rng.standard_normal((3, cols)).astype(np.float32)
            xq = q8_round_trip(x).astype(np.float64)
            bound = np.abs(xq) @ np.abs(dense).T
            for kernel in ("auto", "portable"):
                out = np.empty((3, rows), dtype=np.float32)
                _rust.quant_matmul(out, x, [data], [int(qtype)], [rows], int8=kernel)
                assert (np.abs(out - xq @ dense.T) <= 1e-5 * bound + 1e-6).all(), (name, qtype.name, kernel)


# -- int8 activations (llama.cpp's Q8_1 path): x rounded to 8 bits per 32-element block

INT8_TYPES = SIMPLE + K_TYPES
# kernel name -> the /proc/cpuinfo flags it needs
INT8_KERNELS = {"portable": (), "avx2": ("avx2", "fma", "f16c"), "avxvnni": ("avx2", "fma", "f16c", "avx_vnni"),
                "avx512vnni": ("avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl", "avx512_vnni")}


def _cpu_flags() -> set[str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    return {f for line in text.splitlines() if line.startswith("flags") for f in line.split(":", 1)[1].split()}


def q8_round_trip(x: np.ndarray) -> np.ndarray:
    """``x`` quantized to 8 bits per 32-element block and back: scale amax/127, round half to even."""
    xb = x.reshape(-1, 32).astype(np.float32)
    d = (np.abs(xb).max(axis=1) / np.float32(127)).astype(np.float32)
    inv = np.divide(np.float32(1), d, out=np.zeros_like(d), where=d != 0)
    return (np.round(xb * inv[:, None]) * d[:, None]).reshape(x.shape)


@pytest.mark.parametrize("kernel", list(INT8_KERNELS))
@pytest.mark.parametrize("qtype", INT8_TYPES, ids=lambda t: t.name)
@pytest.mark.parametrize("n", [1, 3, 13])
def test_int8_kernels_equal_dequantize_then_dot_on_the_rounded_x(kernel: str, qtype: T, n: int) -> None:
    rng = np.random.default_rng(int(qtype) * 100 + n)
    cols = 256 * 3 if qtype in K_TYPES else 32 * 21  # 21 blocks: an odd count, a tail for two-chain loops
    parts = [random_blocks(qtype, rows, cols, rng) for rows in (40, 9)]
    mats = [QuantMatrix(p.reshape(-1), int(qtype), p.shape[0], cols) for p in parts]
    x = (rng.standard_normal((n, cols)) * rng.uniform(0.1, 10, size=(n, 1))).astype(np.float32)
    out = np.empty((n, 49), dtype=np.float32)
    args = (out, x, [m.data for m in mats], [int(qtype)] * 2, [40, 9])
    missing = [f for f in INT8_KERNELS[kernel] if f not in _cpu_flags()]
    if missing:  # the product must say that this CPU cannot run the kernel, not run something else
        with pytest.raises(ValueError, match=f"{kernel} int8 kernels need a CPU with {kernel}; this one lacks it"):
            _rust.quant_matmul(*args, int8=kernel)
        return
    _rust.quant_matmul(*args, int8=kernel)
    dense = np.concatenate([m.dequantize() for m in mats]).astype(np.float64)
    xq = q8_round_trip(x).astype(np.float64)
    bound = np.abs(xq) @ np.abs(dense).T
    assert (np.abs(out - xq @ dense.T) <= 1e-5 * bound + 1e-6).all()
    # and against the unrounded x: off by at most half a step of each block's x times the weights
    step = np.repeat(np.abs(x).reshape(n, -1, 32).max(axis=2) / 127, 32, axis=1)
    exact = x.astype(np.float64) @ dense.T
    assert (np.abs(out - exact) <= 0.5 * step @ np.abs(dense).T * 1.0001 + 1e-5 * bound + 1e-6).all()


def test_int8_request_keeps_float_kernels_for_formats_without_int8_ones() -> None:
    rng = np.random.default_rng(9)
    cols = 512
    mats = [QuantMatrix(random_blocks(t, 8, cols, rng).reshape(-1), int(t), 8, cols) for t in WIDE]
    x = rng.standard_normal((2, cols)).astype(np.float32)
    for m in mats:
        out = np.empty((2, 8), dtype=np.float32)
        _rust.quant_matmul(out, x, [m.data], [m.type_id], [8], int8="auto")
        dense = m.dequantize().astype(np.float64)
        bound = np.abs(x).astype(np.float64) @ np.abs(dense).T
        assert (np.abs(out - x.astype(np.float64) @ dense.T) <= 1e-5 * bound + 1e-6).all()


def test_unknown_int8_kernel_is_refused_with_the_choices() -> None:
    m = QuantMatrix(np.zeros(20 * 2, dtype=np.uint8), int(T.Q4_1), 1, 64)
    with pytest.raises(ValueError, match=r'unknown int8 kernels "sse9" \(auto, portable, avx2'):
        _rust.quant_matmul(np.empty((1, 1), np.float32), np.zeros((1, 64), np.float32), [m.data], [3], [1],
                           int8="sse9")
