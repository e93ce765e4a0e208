"""Turn a Hugging Face checkpoint folder into weights laid out for the forward pass.

float32 checkpoints give dense float32 matrices. fp16/bf16 matrices stay 16-bit: they become
``QuantMatrix`` rows of ggml type F16/BF16 over the memory-mapped file (no copy, half the bytes of a
widened copy), run by the same Rust kernels as GGUF weights. ``quantize="q8_0"`` converts every matrix to
Q8_0 blocks at load (ggml's rounding), a quarter of float32's bytes. Norms and biases are float32.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pyagent import _rust
from pyagent.inference.config import ModelConfig, load_config
from pyagent.inference.errors import ModelLoadError
from pyagent.inference.quant import Linear, QuantLinear, QuantMatrix
from pyagent.inference.safetensors_io import load_checkpoint


@dataclass(frozen=True)
class LayerWeights:
    """One decoder layer; dense matrices are ``[in, out]`` so that ``x @ w`` applies them (see ``linear``)."""

    input_norm: np.ndarray
    qkv: Linear  # q, k and v projections side by side
    qkv_bias: np.ndarray | None
    o: Linear
    o_bias: np.ndarray | None
    post_norm: np.ndarray
    gate_up: Linear  # gate and up projections side by side
    gate_up_bias: np.ndarray | None
    down: Linear
    down_bias: np.ndarray | None


@dataclass(frozen=True)
class ModelWeights:
    embed: np.ndarray | QuantMatrix  # [vocab, hidden]
    layers: tuple[LayerWeights, ...]
    norm: np.ndarray
    lm_head: Linear  # [hidden, vocab]


QUANTIZE_CHOICES = ("q8_0",)
_GGML_F16, _GGML_BF16, _GGML_Q8_0 = 1, 30, 8


def quantize_q8_0(w: np.ndarray) -> QuantMatrix:
    """A ``[rows, cols]`` matrix (float32/16, or bf16 bits as uint16) as Q8_0 blocks, a few rows at a time."""
    rows, cols = w.shape
    if cols % 32:
        raise ModelLoadError(f"cannot quantize a matrix of {cols} columns to q8_0 (needs a multiple of 32)")
    out = np.empty(rows * cols // 32 * 34, dtype=np.uint8)
    per_row = cols // 32 * 34
    step = max(1, (1 << 22) // cols)  # rows widened to float32 at once
    for s in range(0, rows, step):
        part = _widen(w[s:s + step])
        _rust.quant_quantize_q8_0(out[s * per_row:(s + step) * per_row], part)
    return QuantMatrix(out, _GGML_Q8_0, rows, cols)


def _widen(a: np.ndarray) -> np.ndarray:
    if a.dtype == np.uint16:  # bf16 bits
        return np.ascontiguousarray((a.astype(np.uint32) << 16).view(np.float32))
    return np.ascontiguousarray(a, dtype=np.float32)


class _Tensors:
    """Pops named tensors, checking each one's shape, so errors name the tensor and both shapes."""

    def __init__(self, tensors: dict[str, np.ndarray], model_dir: Path, quantize: str | None = None) -> None:
        self.tensors = tensors
        self.model_dir = model_dir
        self.quantize = quantize

    def vector(self, name: str, shape: tuple[int, ...]) -> np.ndarray:
        return _widen(self.take(name, shape))

    def maybe_vector(self, name: str, shape: tuple[int, ...], required: bool) -> np.ndarray | None:
        v = self.maybe(name, shape, required)
        return None if v is None else _widen(v)

    def kept(self, arr: np.ndarray) -> bool:
        """Whether this matrix runs on the quantized kernels rather than as dense float32."""
        return self.quantize is not None or arr.dtype != np.float32

    def matrix(self, arr: np.ndarray) -> QuantMatrix:
        rows, cols = arr.shape
        if self.quantize == "q8_0":
            return quantize_q8_0(arr)
        kind = _GGML_BF16 if arr.dtype == np.uint16 else _GGML_F16
        data = np.ascontiguousarray(arr).reshape(-1).view(np.uint8)
        return QuantMatrix(data, kind, rows, cols)

    def linear(self, parts: list[np.ndarray]) -> Linear:
        """Matrices ``[out_i, in]`` sharing an input: a ``QuantLinear``, or dense ``[in, sum(out_i)]``."""
        if all(self.kept(p) for p in parts):
            return QuantLinear(tuple(self.matrix(p) for p in parts))
        return np.ascontiguousarray(np.concatenate([_widen(p) for p in parts], axis=0).T)

    def take(self, name: str, shape: tuple[int, ...]) -> np.ndarray:
        arr = self.tensors.get(name)
        if arr is None:
            raise ModelLoadError(f"checkpoint in {self.model_dir} lacks tensor {name!r}")
        if arr.shape != shape:
            raise ModelLoadError(f"tensor {name!r} has shape {list(arr.shape)}, expected {list(shape)} from config.json")
        return arr

    def maybe(self, name: str, shape: tuple[int, ...], required: bool) -> np.ndarray | None:
        if required or name in self.tensors:
            return self.take(name, shape)
        return None


def _layer(t: _Tensors, c: ModelConfig, i: int) -> LayerWeights:
    p = f"model.layers.{i}."
    h, hd, nh, nkv, inter = c.hidden_size, c.head_dim, c.num_attention_heads, c.num_key_value_heads, c.intermediate_size
    q = t.take(p + "self_attn.q_proj.weight", (nh * hd, h))
    k = t.take(p + "self_attn.k_proj.weight", (nkv * hd, h))
    v = t.take(p + "self_attn.v_proj.weight", (nkv * hd, h))
    biases = [t.maybe_vector(p + f"self_attn.{n}_proj.bias", (rows,), c.attention_bias)
              for n, rows in (("q", nh * hd), ("k", nkv * hd), ("v", nkv * hd))]
    if any(b is not None for b in biases) and not all(b is not None for b in biases):
        raise ModelLoadError(f"layer {i}: only some of the q/k/v projections have a bias")
    gate = t.take(p + "mlp.gate_proj.weight", (inter, h))
    up = t.take(p + "mlp.up_proj.weight", (inter, h))
    gate_b = t.maybe_vector(p + "mlp.gate_proj.bias", (inter,), c.mlp_bias)
    up_b = t.maybe_vector(p + "mlp.up_proj.bias", (inter,), c.mlp_bias)
    return LayerWeights(
        input_norm=t.vector(p + "input_layernorm.weight", (h,)),
        qkv=t.linear([q, k, v]),
        qkv_bias=None if biases[0] is None else np.concatenate([b for b in biases if b is not None]),
        o=t.linear([t.take(p + "self_attn.o_proj.weight", (h, nh * hd))]),
        o_bias=t.maybe_vector(p + "self_attn.o_proj.bias", (h,), False),
        post_norm=t.vector(p + "post_attention_layernorm.weight", (h,)),
        gate_up=t.linear([gate, up]),
        gate_up_bias=None if gate_b is None or up_b is None else np.concatenate([gate_b, up_b]),
        down=t.linear([t.take(p + "mlp.down_proj.weight", (h, inter))]),
        down_bias=t.maybe_vector(p + "mlp.down_proj.bias", (h,), c.mlp_bias),
    )


def load_weights(model_dir: Path, config: ModelConfig, quantize: str | None = None) -> ModelWeights:
    if quantize is not None and quantize not in QUANTIZE_CHOICES:
        raise ModelLoadError(f"unknown quantization {quantize!r}: choose one of {', '.join(QUANTIZE_CHOICES)}")
    t = _Tensors(load_checkpoint(model_dir, widen=False), model_dir, quantize)
    c = config
    table = t.take("model.embed_tokens.weight", (c.vocab_size, c.hidden_size))
    embed: np.ndarray | QuantMatrix = t.matrix(table) if t.kept(table) else table
    lm_head: Linear
    if "lm_head.weight" in t.tensors and not c.tie_word_embeddings:
        lm_head = t.linear([t.take("lm_head.weight", (c.vocab_size, c.hidden_size))])
    elif c.tie_word_embeddings:
        # shares memory with the embedding table
        lm_head = QuantLinear((embed,)) if isinstance(embed, QuantMatrix) else embed.T
    else:
        raise ModelLoadError(f"checkpoint in {model_dir} lacks 'lm_head.weight' and does not tie word embeddings")
    layers = tuple(_layer(t, c, i) for i in range(c.num_hidden_layers))
    return ModelWeights(embed=embed, layers=layers, norm=t.vector("model.norm.weight", (c.hidden_size,)),
                        lm_head=lm_head)


def load_model(model_dir: str | Path, quantize: str | None = None) -> tuple[ModelConfig, ModelWeights]:
    """Config and weights of a checkpoint folder; ``quantize="q8_0"`` converts its matrices at load."""
    path = Path(model_dir)
    config = load_config(path)
    return config, load_weights(path, config, quantize)
