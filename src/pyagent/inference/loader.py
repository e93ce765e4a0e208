"""Turn a Hugging Face checkpoint folder into float32 weights laid out for the forward pass."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pyagent.inference.config import ModelConfig, load_config
from pyagent.inference.errors import ModelLoadError
from pyagent.inference.quant import Linear, QuantMatrix
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


class _Tensors:
    """Pops named tensors, checking each one's shape, so errors name the tensor and both shapes."""

    def __init__(self, tensors: dict[str, np.ndarray], model_dir: Path) -> None:
        self.tensors = tensors
        self.model_dir = model_dir

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
    biases = [t.maybe(p + f"self_attn.{n}_proj.bias", (rows,), c.attention_bias)
              for n, rows in (("q", nh * hd), ("k", nkv * hd), ("v", nkv * hd))]
    if any(b is not None for b in biases) and not all(b is not None for b in biases):
        raise ModelLoadError(f"layer {i}: only some of the q/k/v projections have a bias")
    gate = t.take(p + "mlp.gate_proj.weight", (inter, h))
    up = t.take(p + "mlp.up_proj.weight", (inter, h))
    gate_b = t.maybe(p + "mlp.gate_proj.bias", (inter,), c.mlp_bias)
    up_b = t.maybe(p + "mlp.up_proj.bias", (inter,), c.mlp_bias)
    return LayerWeights(
        input_norm=t.take(p + "input_layernorm.weight", (h,)),
        qkv=np.ascontiguousarray(np.concatenate([q, k, v], axis=0).T),
        qkv_bias=None if biases[0] is None else np.concatenate([b for b in biases if b is not None]),
        o=np.ascontiguousarray(t.take(p + "self_attn.o_proj.weight", (h, nh * hd)).T),
        o_bias=t.maybe(p + "self_attn.o_proj.bias", (h,), False),
        post_norm=t.take(p + "post_attention_layernorm.weight", (h,)),
        gate_up=np.ascontiguousarray(np.concatenate([gate, up], axis=0).T),
        gate_up_bias=None if gate_b is None or up_b is None else np.concatenate([gate_b, up_b]),
        down=np.ascontiguousarray(t.take(p + "mlp.down_proj.weight", (h, inter)).T),
        down_bias=t.maybe(p + "mlp.down_proj.bias", (h,), c.mlp_bias),
    )


def load_weights(model_dir: Path, config: ModelConfig) -> ModelWeights:
    t = _Tensors(load_checkpoint(model_dir), model_dir)
    c = config
    embed = t.take("model.embed_tokens.weight", (c.vocab_size, c.hidden_size))
    if "lm_head.weight" in t.tensors and not c.tie_word_embeddings:
        lm_head = np.ascontiguousarray(t.take("lm_head.weight", (c.vocab_size, c.hidden_size)).T)
    elif c.tie_word_embeddings:
        lm_head = embed.T  # shares memory with the embedding table
    else:
        raise ModelLoadError(f"checkpoint in {model_dir} lacks 'lm_head.weight' and does not tie word embeddings")
    layers = tuple(_layer(t, c, i) for i in range(c.num_hidden_layers))
    return ModelWeights(embed=embed, layers=layers, norm=t.take("model.norm.weight", (c.hidden_size,)),
                        lm_head=lm_head)


def load_model(model_dir: str | Path) -> tuple[ModelConfig, ModelWeights]:
    path = Path(model_dir)
    config = load_config(path)
    return config, load_weights(path, config)
