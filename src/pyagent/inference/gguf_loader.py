"""A GGUF file as a :class:`ModelConfig` and :class:`ModelWeights` whose matrices stay quantized.

Hyper-parameters come from the ``{arch}.*`` metadata keys, tensors from llama.cpp's names
(``blk.N.attn_q.weight`` ...). Quantized matrices are views of the mapped file; only the small float32
tensors (norms, biases) and the Q/K rows of Llama files are copied: llama.cpp's converter interleaves
the rotary halves of each Q/K head for its own rope kernel, and we restore Hugging Face's row order so
that one rope implementation serves both kinds of checkpoint.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import numpy as np

from pyagent.inference.config import ModelConfig
from pyagent.inference.errors import ModelLoadError
from pyagent.inference.gguf_reader import GGUFFile, GGUFTensor
from pyagent.inference.loader import LayerWeights, ModelWeights
from pyagent.inference.quant import Linear, QuantLinear, QuantMatrix

# GGUF general.architecture -> (transformers architecture, Q/K rows interleaved by the converter)
GGUF_ARCHITECTURES = {
    "llama": ("LlamaForCausalLM", True),
    "mistral": ("MistralForCausalLM", True),
    "qwen2": ("Qwen2ForCausalLM", False),
}
_DENSE = {"F32": np.float32, "F16": np.float16}


def gguf_config(g: GGUFFile) -> ModelConfig:
    arch = g.text("general.architecture")
    if arch not in GGUF_ARCHITECTURES:
        raise ModelLoadError(f"{g.path}: architecture {arch!r} (metadata key 'general.architecture') is not "
                             f"supported; supported: {', '.join(sorted(GGUF_ARCHITECTURES))}")
    size = functools.partial(g.integer, minimum=1)
    hidden = size(f"{arch}.embedding_length")
    heads = size(f"{arch}.attention.head_count")
    kv_heads = size(f"{arch}.attention.head_count_kv", heads)
    head_dim = size(f"{arch}.attention.key_length", hidden // heads)
    tokens = g.strings("tokenizer.ggml.tokens", None)
    vocab = size(f"{arch}.vocab_size", len(tokens) if tokens else None)
    if vocab is None:
        embd = g.tensors.get("token_embd.weight")
        vocab = embd.shape[0] if embd is not None else 0
    rotary = g.integer(f"{arch}.rope.dimension_count", head_dim)
    if rotary != head_dim:  # partial rotary embeddings (Phi, StableLM): not these architectures' decoder
        raise ModelLoadError(f"{g.path}: metadata key '{arch}.rope.dimension_count' is {rotary}, but the heads have "
                             f"{head_dim} dimensions; rotary embeddings over part of a head are not supported")
    scaling = _rope_scaling(g, arch, head_dim)
    n_ids = len(tokens) if tokens else vocab
    eos = g.token_id("tokenizer.ggml.eos_token_id", n_ids)
    bos = g.token_id("tokenizer.ggml.bos_token_id", n_ids)
    window = g.integer(f"{arch}.attention.sliding_window", None, minimum=0)
    config = ModelConfig(
        architecture=GGUF_ARCHITECTURES[arch][0],
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=size(f"{arch}.feed_forward_length"),
        num_hidden_layers=size(f"{arch}.block_count"),
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        head_dim=head_dim,
        rms_norm_eps=g.number(f"{arch}.attention.layer_norm_rms_epsilon", positive=True),
        rope_theta=g.number(f"{arch}.rope.freq_base", 10000.0, positive=True),
        rope_scaling=scaling,
        max_position_embeddings=size(f"{arch}.context_length", 2048),
        tie_word_embeddings="output.weight" not in g.tensors,
        attention_bias="blk.0.attn_q.bias" in g.tensors,
        sliding_window=window or None,
        eos_token_ids=() if eos is None else (eos,),
        bos_token_id=bos,
    )
    try:
        config.validate()
    except ModelLoadError as exc:
        raise ModelLoadError(f"{g.path}: {str(exc).replace('config.json', 'GGUF metadata')}") from None
    return config


def _rope_scaling(g: GGUFFile, arch: str, head_dim: int) -> dict[str, Any] | None:
    """The rotary scaling a file asks for: linear from the metadata, or per-frequency factors (what
    llama.cpp's converter writes for Llama 3's "llama3" scaling: tensor ``rope_freqs.weight``, each
    inverse frequency divided by its factor). Any other kind is refused: ignoring it would run the model
    with the wrong positions, silently."""
    kind = g.text(f"{arch}.rope.scaling.type", "none")
    scaling: dict[str, Any] | None = None
    if kind == "linear":
        scaling = {"rope_type": "linear", "factor": g.number(f"{arch}.rope.scaling.factor", positive=True)}
    elif kind != "none":
        raise ModelLoadError(f"{g.path}: rotary scaling {kind!r} (metadata key '{arch}.rope.scaling.type') is not "
                             "supported; supported: none, linear, and llama3's per-frequency factors")
    freqs = g.tensors.get("rope_freqs.weight")
    if freqs is not None:
        if scaling is not None:
            raise ModelLoadError(f"{g.path}: both linear rotary scaling and tensor 'rope_freqs.weight'")
        factors = _GGUFTensors(g).dense("rope_freqs.weight", (head_dim // 2,))
        if not (np.isfinite(factors).all() and (factors > 0).all()):
            raise ModelLoadError(f"{g.path}: tensor 'rope_freqs.weight' holds factors that are not finite and "
                                 "positive")
        scaling = {"rope_type": "factors", "factors": tuple(float(f) for f in factors)}
    return scaling


class _GGUFTensors:
    """Looks tensors up by name, checking shapes, so every error names the file and the tensor."""

    def __init__(self, g: GGUFFile) -> None:
        self.g = g

    def raw(self, name: str, shape: tuple[int, ...]) -> GGUFTensor:
        t = self.g.tensors.get(name)
        if t is None:
            raise ModelLoadError(f"{self.g.path} lacks tensor {name!r}")
        if t.shape != shape:
            raise ModelLoadError(f"{self.g.path}: tensor {name!r} has shape {list(t.shape)}, expected "
                                 f"{list(shape)} from the metadata")
        return t

    def dense(self, name: str, shape: tuple[int, ...]) -> np.ndarray:
        t = self.raw(name, shape)
        dtype = _DENSE.get(t.type_name)
        if dtype is None:
            raise ModelLoadError(f"{self.g.path}: tensor {name!r} is {t.type_name}; expected F32 or F16")
        return t.data.view(dtype).reshape(shape).astype(np.float32)

    def maybe_dense(self, name: str, shape: tuple[int, ...]) -> np.ndarray | None:
        return self.dense(name, shape) if name in self.g.tensors else None

    def matrix(self, name: str, shape: tuple[int, int], row_order: np.ndarray | None = None) -> QuantMatrix | np.ndarray:
        """A ``[out, in]`` weight: quantized blocks as they are, or float32 ``[out, in]`` when dense."""
        t = self.raw(name, shape)
        if t.type_name in _DENSE:
            dense = t.data.view(_DENSE[t.type_name]).reshape(shape).astype(np.float32)
            return dense if row_order is None else dense[row_order]
        from pyagent import _rust

        try:  # a type without a kernel fails here, on a one-row probe, naming the tensor
            _rust.quant_dequantize(np.empty((1, shape[1]), np.float32), t.data[: t.data.size // shape[0]],
                                   t.type_id, 1)
        except ValueError as exc:
            raise ModelLoadError(f"{self.g.path}: tensor {name!r} has quantization type {t.type_name}, which "
                                 f"this engine cannot run ({exc})") from None
        data = t.data
        if row_order is not None:
            data = np.ascontiguousarray(data.reshape(shape[0], -1)[row_order]).reshape(-1)
        return QuantMatrix(data, t.type_id, shape[0], shape[1])


def _stack(parts: list[QuantMatrix | np.ndarray]) -> Linear:
    """One linear layer from ``[out, in]`` parts: quantized when every part is, else dense ``[in, out]``."""
    if all(isinstance(p, QuantMatrix) for p in parts):
        return QuantLinear(tuple(p for p in parts if isinstance(p, QuantMatrix)))
    dense = [p.dequantize() if isinstance(p, QuantMatrix) else p for p in parts]
    return np.ascontiguousarray(np.concatenate(dense, axis=0).T)


def _unpermute(n_heads: int, head_dim: int) -> np.ndarray:
    """Row order that undoes llama.cpp's per-head interleaving of the rotary halves."""
    half = head_dim // 2
    within = (np.arange(half)[None, :] * 2 + np.arange(2)[:, None]).reshape(-1)
    return (np.arange(n_heads)[:, None] * head_dim + within[None, :]).reshape(-1)


def _layer(t: _GGUFTensors, c: ModelConfig, i: int, interleaved: bool) -> LayerWeights:
    p = f"blk.{i}."
    h, hd, nh, nkv, inter = c.hidden_size, c.head_dim, c.num_attention_heads, c.num_key_value_heads, c.intermediate_size
    t.raw(p + "attn_q.weight", (nh * hd, h))  # the shapes first: the row orders below are sized by them
    t.raw(p + "attn_k.weight", (nkv * hd, h))
    q_order = _unpermute(nh, hd) if interleaved else None
    k_order = _unpermute(nkv, hd) if interleaved else None
    q = t.matrix(p + "attn_q.weight", (nh * hd, h), q_order)
    k = t.matrix(p + "attn_k.weight", (nkv * hd, h), k_order)
    v = t.matrix(p + "attn_v.weight", (nkv * hd, h))
    biases = [t.maybe_dense(p + f"attn_{n}.bias", (rows,)) for n, rows in (("q", nh * hd), ("k", nkv * hd),
                                                                           ("v", nkv * hd))]
    if interleaved and biases[0] is not None and biases[1] is not None and q_order is not None and k_order is not None:
        biases[0], biases[1] = biases[0][q_order], biases[1][k_order]
    if any(b is not None for b in biases) and not all(b is not None for b in biases):
        raise ModelLoadError(f"{t.g.path}: layer {i}: only some of the q/k/v projections have a bias")
    return LayerWeights(
        input_norm=t.dense(p + "attn_norm.weight", (h,)),
        qkv=_stack([q, k, v]),
        qkv_bias=None if biases[0] is None else np.concatenate([b for b in biases if b is not None]),
        o=_stack([t.matrix(p + "attn_output.weight", (h, nh * hd))]),
        o_bias=t.maybe_dense(p + "attn_output.bias", (h,)),
        post_norm=t.dense(p + "ffn_norm.weight", (h,)),
        gate_up=_stack([t.matrix(p + "ffn_gate.weight", (inter, h)), t.matrix(p + "ffn_up.weight", (inter, h))]),
        gate_up_bias=None,
        down=_stack([t.matrix(p + "ffn_down.weight", (h, inter))]),
        down_bias=None,
    )


def load_gguf_weights(g: GGUFFile, config: ModelConfig) -> ModelWeights:
    c = config
    t = _GGUFTensors(g)
    arch = g.text("general.architecture")
    interleaved = GGUF_ARCHITECTURES[arch][1]
    embed = t.matrix("token_embd.weight", (c.vocab_size, c.hidden_size))
    head = embed if c.tie_word_embeddings else t.matrix("output.weight", (c.vocab_size, c.hidden_size))
    layers = tuple(_layer(t, c, i, interleaved) for i in range(c.num_hidden_layers))
    return ModelWeights(embed=embed, layers=layers, norm=t.dense("output_norm.weight", (c.hidden_size,)),
                        lm_head=_stack([head]))


def load_gguf_model(path: str | Path) -> tuple[GGUFFile, ModelConfig, ModelWeights]:
    g = GGUFFile(path)
    config = gguf_config(g)
    return g, config, load_gguf_weights(g, config)
