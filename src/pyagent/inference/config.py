"""Model configuration read from a Hugging Face ``config.json`` (Llama, Mistral, Qwen2)."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pyagent.inference.errors import ModelLoadError

# Element types the KV cache can hold: float16 halves the memory per token (twice the tokens in one byte
# budget) at fp16 rounding of each stored K/V value; attention still computes in float32. Here, not in
# `kv_cache`, so that the CLI can offer the choices without importing NumPy at start-up.
KV_CACHE_DTYPES = ("float32", "float16")
# What the products with quantized weights compute with (see ``pyagent.inference.model``); the first is
# the default.
ACTIVATIONS = ("float32", "int8")


def check_activations(name: str) -> None:
    """A ValueError naming the choices unless ``name`` is one of ``ACTIVATIONS``."""
    if name not in ACTIVATIONS:
        raise ValueError(f"unknown activations {name!r}: choose one of {', '.join(ACTIVATIONS)}")

# Architectures this engine runs, all the same decoder: RMSNorm, rotary attention with GQA, SwiGLU MLP.
SUPPORTED_ARCHITECTURES = {
    "LlamaForCausalLM": "llama",
    "MistralForCausalLM": "mistral",
    "Qwen2ForCausalLM": "qwen2",
}


@dataclass(frozen=True)
class ModelConfig:
    """The fields of ``config.json`` the forward pass needs, with transformers' defaults."""

    architecture: str
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    rope_scaling: dict[str, Any] | None = None
    max_position_embeddings: int = 2048
    tie_word_embeddings: bool = False
    attention_bias: bool = False
    mlp_bias: bool = False
    sliding_window: int | None = None
    eos_token_ids: tuple[int, ...] = field(default_factory=tuple)
    bos_token_id: int | None = None

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> ModelConfig:
        archs = raw.get("architectures") or []
        known = [a for a in archs if a in SUPPORTED_ARCHITECTURES]
        if not known:
            shown = ", ".join(archs) or raw.get("model_type", "none given")
            raise ModelLoadError(
                f"unknown architecture {shown!r}; supported: {', '.join(sorted(SUPPORTED_ARCHITECTURES))}"
            )
        family = SUPPORTED_ARCHITECTURES[known[0]]
        try:
            hidden = int(raw["hidden_size"])
            heads = int(raw["num_attention_heads"])
            kv_heads = int(raw.get("num_key_value_heads") or heads)
            head_dim = int(raw.get("head_dim") or hidden // heads)
            eos = raw.get("eos_token_id")
            eos_ids = tuple(int(e) for e in eos) if isinstance(eos, list) else (() if eos is None else (int(eos),))
            # transformers >= 5 writes "rope_parameters" (theta and scaling together); older files use
            # "rope_theta" and "rope_scaling".
            found = raw.get("rope_parameters")
            rope_params: dict[str, Any] = found if isinstance(found, dict) else {}
            theta = raw.get("rope_theta") or rope_params.get("rope_theta") or 10000.0
            scaling = raw.get("rope_scaling") or (rope_params if rope_type(rope_params) != "default" else None)
            window = raw.get("sliding_window")
            use_window = family == "mistral" or (family == "qwen2" and raw.get("use_sliding_window", False))
            config = cls(
                architecture=known[0],
                vocab_size=int(raw["vocab_size"]),
                hidden_size=hidden,
                intermediate_size=int(raw["intermediate_size"]),
                num_hidden_layers=int(raw["num_hidden_layers"]),
                num_attention_heads=heads,
                num_key_value_heads=kv_heads,
                head_dim=head_dim,
                rms_norm_eps=float(raw.get("rms_norm_eps", 1e-6)),
                rope_theta=float(theta),
                rope_scaling=scaling,
                max_position_embeddings=int(raw.get("max_position_embeddings", 2048)),
                tie_word_embeddings=bool(raw.get("tie_word_embeddings", False)),
                # Qwen2 always has q/k/v biases; Llama and Mistral only when the config says so.
                attention_bias=family == "qwen2" or bool(raw.get("attention_bias", False)),
                mlp_bias=bool(raw.get("mlp_bias", False)),
                sliding_window=int(window) if use_window and window else None,
                eos_token_ids=eos_ids,
                bos_token_id=None if raw.get("bos_token_id") is None else int(raw["bos_token_id"]),
            )
        except KeyError as exc:
            raise ModelLoadError(f"config.json lacks the required field {exc.args[0]!r}") from None
        except (TypeError, ValueError) as exc:
            raise ModelLoadError(f"config.json has a malformed field: {exc}") from None
        config.validate()
        return config

    def validate(self) -> None:
        for name in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                     "num_attention_heads", "num_key_value_heads", "head_dim"):
            if getattr(self, name) <= 0:
                raise ModelLoadError(f"config.json: {name} must be positive")
        if self.num_attention_heads % self.num_key_value_heads:
            raise ModelLoadError(
                f"config.json: num_attention_heads ({self.num_attention_heads}) is not a multiple of "
                f"num_key_value_heads ({self.num_key_value_heads})"
            )
        if self.head_dim % 2:
            raise ModelLoadError(f"config.json: head_dim ({self.head_dim}) must be even for rotary embeddings")
        for name in ("rms_norm_eps", "rope_theta"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise ModelLoadError(f"config.json: {name} ({value}) must be a finite number above 0")
        if self.max_position_embeddings <= 0:
            raise ModelLoadError("config.json: max_position_embeddings must be positive")
        if self.sliding_window is not None and self.sliding_window <= 0:
            raise ModelLoadError("config.json: sliding_window must be positive")
        kind = rope_type(self.rope_scaling)
        # "factors": per-frequency divisors, as GGUF files carry Llama 3's scaling (see gguf_loader)
        if kind not in ("default", "linear", "llama3", "factors"):
            raise ModelLoadError(f"config.json: rope_scaling type {kind!r} is not supported (default, linear, llama3)")
        if kind in ("linear", "llama3"):
            assert self.rope_scaling is not None
            factor = self.rope_scaling.get("factor")
            if isinstance(factor, bool) or not isinstance(factor, int | float) or not (math.isfinite(factor) and factor > 0):
                raise ModelLoadError(f"config.json: rope_scaling factor {factor!r} must be a finite number above 0")
        if kind == "factors":
            assert self.rope_scaling is not None
            factors = self.rope_scaling.get("factors")
            if not isinstance(factors, tuple | list) or len(factors) != self.head_dim // 2:
                raise ModelLoadError(f"config.json: rotary factors must be {self.head_dim // 2} numbers, one per frequency")

    @property
    def max_context(self) -> int:
        """Longest sequence the model attends over exactly (a sliding window caps it: we never slide)."""
        if self.sliding_window is not None:
            return min(self.max_position_embeddings, self.sliding_window)
        return self.max_position_embeddings


def rope_type(scaling: dict[str, Any] | None) -> str:
    if not scaling:
        return "default"
    return str(scaling.get("rope_type") or scaling.get("type") or "default")


def load_config(model_dir: str | Path) -> ModelConfig:
    path = Path(model_dir) / "config.json"
    if Path(model_dir).is_file():
        raise ModelLoadError(f"{model_dir} is neither a GGUF file (it lacks the 'GGUF' magic) nor a Hugging Face "
                             "checkpoint folder")
    if not Path(model_dir).is_dir():
        raise ModelLoadError(f"model directory {str(model_dir)!r} does not exist")
    if not path.is_file():
        raise ModelLoadError(f"{path} is missing: a Hugging Face checkpoint folder needs config.json")
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelLoadError(f"{path} is not valid JSON: {exc}") from None
    if not isinstance(raw, dict):
        raise ModelLoadError(f"{path} must hold a JSON object")
    return ModelConfig.from_dict(raw)
