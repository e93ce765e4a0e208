"""An independent dense forward of a Llama/Qwen2 checkpoint, for checking the engine.

Written from the transformers modeling code, in float64, with no paging, no caching and no code shared
with ``pyagent.inference``: full causal attention over the whole sequence, every position's logits.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file


class DenseLlama:
    def __init__(self, model_dir: Path) -> None:
        self.cfg = json.loads((model_dir / "config.json").read_text())
        self.w = {k: v.astype(np.float64) for k, v in load_file(str(model_dir / "model.safetensors")).items()}

    def logits(self, token_ids: list[int]) -> np.ndarray:
        cfg, w = self.cfg, self.w
        nh, nkv = cfg["num_attention_heads"], cfg["num_key_value_heads"]
        hd = cfg.get("head_dim") or cfg["hidden_size"] // nh
        eps = cfg["rms_norm_eps"]
        n = len(token_ids)
        inv_freq = 1.0 / (cfg.get("rope_theta", 10000.0) ** (np.arange(0, hd, 2) / hd))
        ang = np.arange(n)[:, None] * inv_freq[None, :]
        cos = np.cos(np.concatenate([ang, ang], -1))[:, None, :]
        sin = np.sin(np.concatenate([ang, ang], -1))[:, None, :]

        def norm(x: np.ndarray, weight: np.ndarray) -> np.ndarray:
            return weight * x / np.sqrt((x**2).mean(-1, keepdims=True) + eps)

        def rope(x: np.ndarray) -> np.ndarray:  # x: [n, heads, hd]
            x1, x2 = x[..., : hd // 2], x[..., hd // 2:]
            return x * cos + np.concatenate([-x2, x1], -1) * sin

        def linear(x: np.ndarray, name: str) -> np.ndarray:
            y = x @ w[name + ".weight"].T
            return y + w[name + ".bias"] if name + ".bias" in w else y

        x = w["model.embed_tokens.weight"][token_ids]
        mask = np.triu(np.full((n, n), -np.inf), 1)
        for i in range(cfg["num_hidden_layers"]):
            p = f"model.layers.{i}."
            h = norm(x, w[p + "input_layernorm.weight"])
            q = rope(linear(h, p + "self_attn.q_proj").reshape(n, nh, hd))
            k = rope(linear(h, p + "self_attn.k_proj").reshape(n, nkv, hd))
            v = linear(h, p + "self_attn.v_proj").reshape(n, nkv, hd)
            k = np.repeat(k, nh // nkv, axis=1)
            v = np.repeat(v, nh // nkv, axis=1)
            scores = np.einsum("qhd,khd->hqk", q, k) / np.sqrt(hd) + mask
            probs = np.exp(scores - scores.max(-1, keepdims=True))
            probs /= probs.sum(-1, keepdims=True)
            attn = np.einsum("hqk,khd->qhd", probs, v).reshape(n, nh * hd)
            x = x + linear(attn, p + "self_attn.o_proj")
            h = norm(x, w[p + "post_attention_layernorm.weight"])
            gate = linear(h, p + "mlp.gate_proj")
            x = x + linear(gate / (1 + np.exp(-gate)) * linear(h, p + "mlp.up_proj"), p + "mlp.down_proj")
        head = w.get("lm_head.weight", w["model.embed_tokens.weight"])
        return np.asarray(norm(x, w["model.norm.weight"]) @ head.T)
