"""A tiny random Llama checkpoint in the Hugging Face layout, so the stack can be tried (and tested) offline.

The tokenizer is a byte-level BPE trained with ``tokenizers`` on a short bundled text, so any input text
encodes; the weights are random, so the model's output is gibberish, but every code path is the real one.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from safetensors.numpy import save_file
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

_CORPUS = """\
PyAgent is a swarm of software agents that improves a Python code base on its own. It measures the code,
plans the work worst-first, lets a fleet of agents make small changes, and keeps a change only when it
parses, the tests still pass and the measured health did not get worse. Every change is applied as one
transaction that survives being killed.
The inference engine runs Llama-family models on a paged key-value cache. Blocks of sixteen tokens are
allocated on demand, shared between requests with the same prefix, and evicted least recently used first.
The scheduler batches running decodes with new prefill chunks under a token budget, and preempts a request
by recomputing it later when the cache runs out of blocks.
def fibonacci(n: int) -> int:
    a, b = 0, 1
    for _ in range(n):
        a, b = b, a + b
    return a

class Greeter:
    def __init__(self, name: str) -> None:
        self.name = name

    def greet(self) -> str:
        return f"Hello, {self.name}!"

The quick brown fox jumps over the lazy dog. Pack my box with five dozen liquor jugs. How vexingly quick
daft zebras jump! Sphinx of black quartz, judge my vow. 0123456789 + - * / = < > ( ) [ ] { } : ; , . ' "
Once upon a time there was a small model that could only dream in random numbers, yet it spoke every word
through the same tokenizer, the same attention and the same cache as its larger cousins.
"""

SPECIAL_TOKENS = ["<unk>", "<s>", "</s>"]


def build_tokenizer(vocab_size: int = 512) -> Tokenizer:
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(_CORPUS.splitlines(keepends=True), trainer=trainer)
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A <s> $B",
                                                       special_tokens=[("<s>", 1)])
    return tok


def init_tiny(directory: str | Path, *, seed: int = 0, hidden_size: int = 64, num_layers: int = 2,
              num_heads: int = 4, num_kv_heads: int = 2, intermediate_size: int = 128,
              max_position_embeddings: int = 4096) -> Path:
    """Write config.json, model.safetensors, tokenizer.json and friends to ``directory``."""
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    tok = build_tokenizer()
    tok.save(str(out / "tokenizer.json"))
    vocab = tok.get_vocab_size(with_added_tokens=True)
    head_dim = hidden_size // num_heads
    config = {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": vocab,
        "hidden_size": hidden_size, "intermediate_size": intermediate_size, "num_hidden_layers": num_layers,
        "num_attention_heads": num_heads, "num_key_value_heads": num_kv_heads, "head_dim": head_dim,
        "hidden_act": "silu", "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "rope_scaling": None,
        "max_position_embeddings": max_position_embeddings, "tie_word_embeddings": False,
        "attention_bias": False, "mlp_bias": False, "bos_token_id": 1, "eos_token_id": 2,
        "torch_dtype": "float32",
    }
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    (out / "generation_config.json").write_text(json.dumps({"bos_token_id": 1, "eos_token_id": 2}) + "\n",
                                                encoding="utf-8")
    (out / "tokenizer_config.json").write_text(json.dumps({
        "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "model_max_length": max_position_embeddings,
        "tokenizer_class": "PreTrainedTokenizerFast"}, indent=2) + "\n", encoding="utf-8")
    rng = np.random.default_rng(seed)

    def normal(*shape: int, std: float = 0.08) -> np.ndarray:
        return (rng.standard_normal(shape) * std).astype(np.float32)

    tensors = {"model.embed_tokens.weight": normal(vocab, hidden_size, std=1.0),
               "model.norm.weight": (1.0 + normal(hidden_size, std=0.1)),
               "lm_head.weight": normal(vocab, hidden_size)}
    for i in range(num_layers):
        p = f"model.layers.{i}."
        tensors |= {
            p + "input_layernorm.weight": 1.0 + normal(hidden_size, std=0.1),
            p + "post_attention_layernorm.weight": 1.0 + normal(hidden_size, std=0.1),
            p + "self_attn.q_proj.weight": normal(num_heads * head_dim, hidden_size, std=0.3),
            p + "self_attn.k_proj.weight": normal(num_kv_heads * head_dim, hidden_size, std=0.3),
            p + "self_attn.v_proj.weight": normal(num_kv_heads * head_dim, hidden_size),
            p + "self_attn.o_proj.weight": normal(hidden_size, num_heads * head_dim),
            p + "mlp.gate_proj.weight": normal(intermediate_size, hidden_size),
            p + "mlp.up_proj.weight": normal(intermediate_size, hidden_size),
            p + "mlp.down_proj.weight": normal(hidden_size, intermediate_size),
        }
    save_file(tensors, str(out / "model.safetensors"), metadata={"format": "pt"})
    return out
