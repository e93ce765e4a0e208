"""The decoder forward pass (Llama, Mistral, Qwen2) over a batch of sequences with a paged KV cache.

All tokens of a step go through the dense layers as one matrix; attention is split: sequences with one
new token use the Rust paged decode kernel in one call, longer chunks (prefill) use causal attention over
their cached prefix plus the chunk. On a model whose matrices are all kept quantized (or 16-bit), a step
runs its layers in one Rust call (``_rust.DecoderStack``) instead: at one token per sequence the
per-operation overhead of NumPy would cost more than the matrix products themselves.

Activations. By default (``activations="float32"``) every product is exact up to float rounding, so the
tokens equal those of fp32 arithmetic on the dequantized weights; prompts take NumPy's BLAS on
dequantized weights and only steps made of one-token chunks take the stack (the two agree to float
rounding). With ``"int8"`` (what llama.cpp does) each quantized product rounds its input to 8 bits per
block of 32 and the integer dot products do the work. Where every projection's
weight type has int8 kernels, every step, prompt chunks included, then runs in the Rust stack, which
computes each token by the same per-token operations whatever else the step holds (the several-token
kernels give each token the one-token result, and attention takes one query at a time). So a
position's numbers never depend on the batch, the chunking of a prompt, a prefix-cache hit, or which
instance (prefill or decode) computed it: with 8-bit rounding a last-bit difference upstream could
move a later rounding by a whole step and change the tokens.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from pyagent import _rust
from pyagent.inference.attention import paged_decode_attention, prefill_attention
from pyagent.inference.config import ACTIVATIONS, ModelConfig, check_activations
from pyagent.inference.kv_cache import KVCacheManager
from pyagent.inference.loader import LayerWeights, ModelWeights
from pyagent.inference.quant import Linear, QuantLinear, embedding_rows, linear
from pyagent.inference.rope import RotaryEmbedding


@dataclass(frozen=True)
class SeqChunk:
    """One sequence's share of a step: tokens ``start..start+len(token_ids)`` of sequence ``seq_id``."""

    seq_id: str
    token_ids: Sequence[int]
    start: int
    needs_logits: bool = True


def rms_norm(x: np.ndarray, weight: np.ndarray, eps: float) -> np.ndarray:
    variance = np.mean(x * x, axis=-1, keepdims=True)
    return np.asarray(weight * (x / np.sqrt(variance + np.float32(eps))), dtype=np.float32)


def swiglu(gate: np.ndarray, up: np.ndarray) -> np.ndarray:
    """``silu(gate) * up`` in one new array, every pass in place (a prompt's gate is [tokens,
    intermediate]: there, allocations cost as much as the arithmetic)."""
    t: np.ndarray = np.negative(gate, dtype=np.float32)
    with np.errstate(over="ignore"):  # exp(-x) -> inf for very negative x gives the right limit, 0
        np.exp(t, out=t)
    t += np.float32(1.0)
    np.divide(gate, t, out=t)
    t *= up
    return t


class DecoderModel:
    """Weights plus the forward pass; the KV cache it reads and writes is passed in."""

    def __init__(self, config: ModelConfig, weights: ModelWeights, max_positions: int, *,
                 partition_size: int = 512, activations: str = ACTIVATIONS[0]) -> None:
        check_activations(activations)
        self.config = config
        self.weights = weights
        self.rope = RotaryEmbedding(config, max_positions)
        self.partition_size = partition_size
        self.scale = 1.0 / float(np.sqrt(config.head_dim))
        # the stack's kernels: int8 activations ("auto": the fastest this CPU runs), or None for float
        self.int8: str | None = "auto" if activations == "int8" else None
        self.stack = _decoder_stack(config, weights, self.int8)
        # int8 products everywhere: prompts too run in the stack (see the module docstring)
        self.stack_prompts = self.stack is not None and self.stack.int8_products
        self.stack_steps = 0  # steps run by the Rust stack (benchmarks and tests check the fast path)

    def _decode_step(self, chunks: Sequence[SeqChunk], kv: KVCacheManager) -> np.ndarray:
        """A step of one-token chunks in the stack, its inputs made with plain ints: at a few milliseconds
        per step, the dozen NumPy calls of the general path's bookkeeping were a few percent of decoding."""
        n, bs = len(chunks), kv.block_size
        token_ids = np.fromiter((ch.token_ids[0] for ch in chunks), dtype=np.int64, count=n)
        positions = np.fromiter((ch.start for ch in chunks), dtype=np.int64, count=n)
        slots = np.fromiter((kv.block_table(ch.seq_id)[ch.start // bs] * bs + ch.start % bs for ch in chunks),
                            dtype=np.int64, count=n)
        last = np.fromiter((i for i, ch in enumerate(chunks) if ch.needs_logits), dtype=np.int64)
        return self._stack_step(chunks, kv, token_ids, positions, slots, last)

    def _stack_step(self, chunks: Sequence[SeqChunk], kv: KVCacheManager, token_ids: np.ndarray,
                    positions: np.ndarray, slots: np.ndarray, last: np.ndarray) -> np.ndarray:
        """Every layer for every token of the step in one Rust call (see the module docstring): each token
        attends, through its sequence's block table, to the positions up to its own."""
        assert self.stack is not None
        self.stack_steps += 1
        c, w = self.config, self.weights
        block_tables = _block_tables(kv, chunks)
        if len(chunks) != len(token_ids):
            block_tables = np.repeat(block_tables, [len(ch.token_ids) for ch in chunks], axis=0)
        context_lens = (positions + 1).astype(np.int32)
        x = np.ascontiguousarray(embedding_rows(w.embed, token_ids), dtype=np.float32)
        if isinstance(w.lm_head, QuantLinear):  # the stack has the head: logits in the same call
            logits = np.empty((len(last), c.vocab_size), dtype=np.float32)
            self.stack.forward(x, positions, slots, block_tables, context_lens, kv.k_cache, kv.v_cache,
                               self.rope.cos, self.rope.sin, self.scale, self.partition_size, logits, last)
            return logits
        self.stack.forward(x, positions, slots, block_tables, context_lens, kv.k_cache, kv.v_cache, self.rope.cos,
                           self.rope.sin, self.scale, self.partition_size)
        if not len(last):
            return np.zeros((0, c.vocab_size), dtype=np.float32)
        return linear(rms_norm(x[last], w.norm, c.rms_norm_eps), w.lm_head)

    def forward(self, chunks: Sequence[SeqChunk], kv: KVCacheManager) -> np.ndarray:
        """Run the chunks, store their K/V, and return logits ``[chunks needing logits, vocab]``."""
        c, w = self.config, self.weights
        nh, nkv, hd = c.num_attention_heads, c.num_key_value_heads, c.head_dim
        lengths = [len(ch.token_ids) for ch in chunks]
        if self.stack is not None and all(n == 1 for n in lengths):
            return self._decode_step(chunks, kv)
        offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        token_ids = np.concatenate([np.asarray(ch.token_ids, dtype=np.int64) for ch in chunks])
        positions = np.concatenate([np.arange(ch.start, ch.start + n) for ch, n in zip(chunks, lengths, strict=True)])
        slots = np.concatenate([kv.slot_mapping(ch.seq_id, ch.start, ch.start + n)
                                for ch, n in zip(chunks, lengths, strict=True)])
        decode_idx = [i for i, n in enumerate(lengths) if n == 1]
        prefill_idx = [i for i, n in enumerate(lengths) if n > 1]
        decode_rows = offsets[decode_idx]
        if self.stack is not None and (self.stack_prompts or not prefill_idx):  # float32 or float16 caches
            last = np.array([offsets[i + 1] - 1 for i, ch in enumerate(chunks) if ch.needs_logits], dtype=np.int64)
            return self._stack_step(chunks, kv, token_ids, positions.astype(np.int64), slots.astype(np.int64), last)
        if decode_idx:
            block_tables = _block_tables(kv, [chunks[i] for i in decode_idx])
            context_lens = np.array([chunks[i].start + 1 for i in decode_idx], dtype=np.int32)

        x = embedding_rows(w.embed, token_ids)
        for layer_idx, lw in enumerate(w.layers):
            h = rms_norm(x, lw.input_norm, c.rms_norm_eps)
            qkv = linear(h, lw.qkv)
            if lw.qkv_bias is not None:
                qkv += lw.qkv_bias
            q = qkv[:, : nh * hd].reshape(-1, nh, hd)
            k = qkv[:, nh * hd:(nh + nkv) * hd].reshape(-1, nkv, hd)
            v = qkv[:, (nh + nkv) * hd:].reshape(-1, nkv, hd)
            q = self.rope.apply(q, positions)
            k = self.rope.apply(k, positions)
            kv.write(layer_idx, slots, k, v)
            attn = np.empty((len(token_ids), nh, hd), dtype=np.float32)
            if decode_idx:
                attn[decode_rows] = paged_decode_attention(
                    q[decode_rows], kv.k_cache[layer_idx], kv.v_cache[layer_idx], block_tables, context_lens,
                    self.scale, self.partition_size)
            for i in prefill_idx:
                ch, a, b = chunks[i], offsets[i], offsets[i + 1]
                kc, vc = kv.gather(layer_idx, ch.seq_id, ch.start + lengths[i])
                attn[a:b] = prefill_attention(q[a:b], kc, vc, ch.start, self.scale)
            o = linear(attn.reshape(-1, nh * hd), lw.o)
            if lw.o_bias is not None:
                o += lw.o_bias
            x = x + o
            h = rms_norm(x, lw.post_norm, c.rms_norm_eps)
            gu = linear(h, lw.gate_up)
            if lw.gate_up_bias is not None:
                gu += lw.gate_up_bias
            inter = c.intermediate_size
            m = linear(swiglu(gu[:, :inter], gu[:, inter:]), lw.down)
            if lw.down_bias is not None:
                m += lw.down_bias
            x = x + m
        last = np.array([offsets[i + 1] - 1 for i, ch in enumerate(chunks) if ch.needs_logits], dtype=np.int64)
        if not len(last):
            return np.zeros((0, c.vocab_size), dtype=np.float32)
        return linear(rms_norm(x[last], w.norm, c.rms_norm_eps), w.lm_head)


def _block_tables(kv: KVCacheManager, chunks: Sequence[SeqChunk]) -> np.ndarray:
    """The chunks' sequences' block tables, one row each, padded with zeros to the longest (int32)."""
    tables = [kv.block_table(ch.seq_id) for ch in chunks]
    out = np.zeros((len(tables), max(len(t) for t in tables)), dtype=np.int32)
    for r, t in enumerate(tables):
        out[r, :len(t)] = t
    return out


def _decoder_stack(config: ModelConfig, weights: ModelWeights, int8: str | None) -> _rust.DecoderStack | None:
    """The Rust decode stack over the same weight buffers, when every projection is kept quantized."""
    def projections(lw: LayerWeights) -> list[tuple[Linear, np.ndarray | None]]:
        return [(lw.qkv, lw.qkv_bias), (lw.o, lw.o_bias), (lw.gate_up, lw.gate_up_bias), (lw.down, lw.down_bias)]

    if not all(isinstance(p, QuantLinear) for lw in weights.layers for p, _ in projections(lw)):
        return None
    c = config
    stack = _rust.DecoderStack(c.hidden_size, c.num_attention_heads, c.num_key_value_heads, c.head_dim,
                               c.intermediate_size, float(c.rms_norm_eps), int8)
    for lw in weights.layers:
        specs = []
        for p, bias in projections(lw):
            assert isinstance(p, QuantLinear)
            specs.append(([m.data for m in p.parts], [m.type_id for m in p.parts], [m.rows for m in p.parts],
                          None if bias is None else np.ascontiguousarray(bias, dtype=np.float32)))
        stack.add_layer(np.ascontiguousarray(lw.input_norm, dtype=np.float32),
                        np.ascontiguousarray(lw.post_norm, dtype=np.float32), *specs)
    if isinstance(weights.lm_head, QuantLinear):
        head = weights.lm_head.parts
        stack.set_head(np.ascontiguousarray(weights.norm, dtype=np.float32),
                       ([m.data for m in head], [m.type_id for m in head], [m.rows for m in head], None), c.vocab_size)
    return stack
