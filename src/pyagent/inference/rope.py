"""Rotary position embeddings as transformers computes them (float32 inverse frequencies, rotate-half)."""

from __future__ import annotations

import math

import numpy as np

from pyagent.inference.config import ModelConfig, rope_type


def inverse_frequencies(config: ModelConfig) -> np.ndarray:
    dim = config.head_dim
    inv_freq = (1.0 / (np.float32(config.rope_theta) ** (np.arange(0, dim, 2, dtype=np.float32) / np.float32(dim))))
    inv_freq = inv_freq.astype(np.float32)
    scaling = config.rope_scaling or {}
    kind = rope_type(config.rope_scaling)
    if kind == "linear":
        return (inv_freq / np.float32(scaling["factor"])).astype(np.float32)
    if kind == "factors":  # llama.cpp's rope_freqs: each frequency's divisor, precomputed by the converter
        return (inv_freq / np.asarray(scaling["factors"], dtype=np.float32)).astype(np.float32)
    if kind == "llama3":
        factor = float(scaling["factor"])
        low, high = float(scaling.get("low_freq_factor", 1.0)), float(scaling.get("high_freq_factor", 4.0))
        old_len = float(scaling.get("original_max_position_embeddings", 8192))
        low_wavelen, high_wavelen = old_len / low, old_len / high
        wavelen = 2 * math.pi / inv_freq
        scaled = np.where(wavelen > low_wavelen, inv_freq / factor, inv_freq)
        smooth = (old_len / wavelen - low) / (high - low)
        smoothed = (1 - smooth) * scaled / factor + smooth * scaled
        medium = (wavelen >= high_wavelen) & (wavelen <= low_wavelen)
        return np.where(medium, smoothed, scaled).astype(np.float32)
    return inv_freq


class RotaryEmbedding:
    """Cos/sin tables for every position up to ``max_positions``, applied with rotate-half."""

    def __init__(self, config: ModelConfig, max_positions: int) -> None:
        inv_freq = inverse_frequencies(config)
        freqs = np.arange(max_positions, dtype=np.float32)[:, None] * inv_freq[None, :]
        emb = np.concatenate([freqs, freqs], axis=-1)
        self.cos = np.cos(emb).astype(np.float32)
        self.sin = np.sin(emb).astype(np.float32)

    def apply(self, x: np.ndarray, positions: np.ndarray) -> np.ndarray:
        """``x``: [tokens, heads, head_dim]."""
        cos = self.cos[positions][:, None, :]
        sin = self.sin[positions][:, None, :]
        half = x.shape[-1] // 2
        rotated = np.concatenate([-x[..., half:], x[..., :half]], axis=-1)
        return np.asarray(x * cos + rotated * sin, dtype=np.float32)
